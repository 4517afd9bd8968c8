// Row kernels of multinomial (softmax) regression (ALGORITHMS.md §6.2 (c)); the products are GEMMs.
// softmax_rows:     P = row-softmax(Z) (max subtracted first) and D = P - Y (Y one-hot from labels)
// softmax_hvp_rows: R_ik = P_ik * (U_ik - sum_j P_ij U_ij), the logits' Hessian diag(p) - p p^T applied
//                   to U = X V row by row.
// CPU twin: src/hvp/softmax.rs (its f64 reference functions).

struct SoftmaxParams {
    n: u32,   // rows (samples)
    k: u32,   // classes
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> sp: SoftmaxParams;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> p: array<f32>;
@group(0) @binding(4) var<storage, read_write> p_minus_y: array<f32>;
@group(0) @binding(5) var<storage, read> p_in: array<f32>;
@group(0) @binding(6) var<storage, read> u: array<f32>;
@group(0) @binding(7) var<storage, read_write> r: array<f32>;

fn row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = row(wid, nwg, lid);
    if (i >= sp.n) { return; }
    let base = i * sp.k;
    var m = z[base];
    for (var j = 1u; j < sp.k; j = j + 1u) { m = max(m, z[base + j]); }
    var total = 0.0;
    for (var j = 0u; j < sp.k; j = j + 1u) { total = total + exp(z[base + j] - m); }
    let y = labels[i];
    for (var j = 0u; j < sp.k; j = j + 1u) {
        let pj = exp(z[base + j] - m) / total;
        p[base + j] = pj;
        p_minus_y[base + j] = pj - select(0.0, 1.0, j == y);
    }
}

@compute @workgroup_size(256)
fn softmax_hvp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = row(wid, nwg, lid);
    if (i >= sp.n) { return; }
    let base = i * sp.k;
    var s = 0.0;
    for (var j = 0u; j < sp.k; j = j + 1u) { s = s + p_in[base + j] * u[base + j]; }
    for (var j = 0u; j < sp.k; j = j + 1u) { r[base + j] = p_in[base + j] * (u[base + j] - s); }
}
