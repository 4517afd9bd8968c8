// Non-finite guard (ALGORITHMS.md §2.1): sets flag[0] = 1 when any element is NaN or +-Inf.
// The test is on the bits (exponent all ones), since WGSL lets implementations assume NaN/Inf absent.
// CPU twin: src/reference/mod.rs::has_non_finite.

@group(0) @binding(0) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> flag: array<atomic<u32>>;

@compute @workgroup_size(256)
fn find_non_finite(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= arrayLength(&data)) { return; }
    let e = data[i] & vec4<u32>(0x7f800000u);
    if (any(e == vec4<u32>(0x7f800000u))) {
        atomicStore(&flag[0], 1u);
    }
}
