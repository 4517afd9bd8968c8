// The bandwidth baseline: dst <- src, one vec4 per invocation on a 2-D grid. Benchmarks report every
// memory-bound kernel as a fraction of this copy moving the same number of bytes in the same run.

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= arrayLength(&dst)) { return; }
    dst[i] = src[i];
}
