// The row-wise parts of a one-hidden-layer perceptron's forward and backward passes (src/mlp.rs); the
// products are GEMMs (shaders/gemm.wgsl) and the softmax rows come from shaders/softmax.wgsl.
// bias_relu:     out = max(z + b, 0)        (b broadcast over rows)
// bias_add:      out = z + b
// relu_backward: out = z where h > 0, else 0 (z = the upstream gradient, h = the activations)
// column_sum:    out_j = scale * sum_i z_ij

struct MlpParams {
    rows: u32,
    cols: u32,
    scale: f32,
    _p: u32,
}

@group(0) @binding(0) var<uniform> mp: MlpParams;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> h: array<f32>;

#import shared/grid

@compute @workgroup_size(256)
fn bias_relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.rows * mp.cols) { return; }
    out[i] = max(z[i] + b[i % mp.cols], 0.0);
}

@compute @workgroup_size(256)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.rows * mp.cols) { return; }
    out[i] = z[i] + b[i % mp.cols];
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= mp.rows * mp.cols) { return; }
    out[i] = select(0.0, z[i], h[i] > 0.0);
}

@compute @workgroup_size(256)
fn column_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= mp.cols) { return; }
    var s = 0.0;
    for (var i = 0u; i < mp.rows; i = i + 1u) { s = s + z[i * mp.cols + j]; }
    out[j] = mp.scale * s;
}
