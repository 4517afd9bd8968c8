// Support kernels of the Newton-Schulz family (ALGORITHMS.md §5.1, §5.4); the products themselves are
// GEMM dispatches (shaders/gemm.wgsl). CPU twin: src/reference/newton_schulz.rs.
//
// frob_partial + frob_final: the Frobenius norm of each matrix of a batch (or of X - Y), in two
// passes with no float atomics, overflow-safe (shaders/shared/reduce.wgsl).
// scale_copy: out[z] = x[z] * s[z], transposed or not, where s is 1 / (norm + eps) or 1.

struct NsParams {
    len: u32,        // elements per matrix
    batch: u32,
    chunks: u32,     // frob_partial workgroups per matrix
    use_y: u32,      // frob_partial: reduce x - y instead of x
    rows: u32,       // scale_copy: input rows, cols
    cols: u32,
    transpose: u32,
    use_norm: u32,   // scale_copy: multiply by 1 / (norms[z] + eps), else copy
    eps: f32,
    gamma: f32,      // cosh_partial: the scale inside cosh
    _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> np: NsParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> norms_out: array<f32>;
@group(0) @binding(5) var<storage, read> norms: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

#import shared/reduce

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;                 // elements per frob_partial workgroup (16 per invocation)


// Workgroup (x, z, w): chunk x + w * (grid x) of matrix z (chunks fold past a dimension's limit).
@compute @workgroup_size(256)
fn frob_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x + wid.z * nwg.x;
    if (chunk >= np.chunks) { return; }
    let z = wid.y;
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, np.len);
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = start + lid; i < end; i = i + WG) {
        var v = x[z * np.len + i];
        if (np.use_y != 0u) { v = v - y[z * np.len + i]; }
        acc = acc + split_square(v);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[z * np.chunks + chunk] = total; }
}

// AuON's (5.5.8): partial sums of cosh(gamma * v / (norm + eps))^2, with norm = norms[z] = ||v||_F.
// |gamma * v / norm| <= gamma, so cosh^2 stays small and the plain sum (first component) suffices;
// frob_final then gives sqrt(sum).
@compute @workgroup_size(256)
fn cosh_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x + wid.z * nwg.x;
    if (chunk >= np.chunks) { return; }
    let z = wid.y;
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, np.len);
    let s = np.gamma / (norms[z] + np.eps);
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = start + lid; i < end; i = i + WG) {
        let ch = cosh(s * x[z * np.len + i]);
        acc.x = acc.x + ch * ch;
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[z * np.chunks + chunk] = total; }
}

@compute @workgroup_size(256)
fn frob_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.x;
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < np.chunks; j = j + WG) { acc = acc + partials[z * np.chunks + j]; }
    red[lid] = acc;
    let q = workgroup_sum(lid);
    if (lid == 0u) { norms_out[z] = split_norm(q); }
}

@compute @workgroup_size(256)
fn scale_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let z = wid.z;
    if (i >= np.len) { return; }
    var v = x[z * np.len + i];
    if (np.use_norm != 0u) { v = v / (norms[z] + np.eps); }
    var o = i;
    if (np.transpose != 0u) {
        let r = i / np.cols;
        let c = i % np.cols;
        o = c * np.rows + r;
    }
    out[z * np.len + o] = v;
}
