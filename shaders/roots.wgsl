// Support kernels of the matrix-root family (ALGORITHMS.md §7): everything that is not a product.
// The products are GEMM dispatches (shaders/gemm.wgsl). CPU twin: src/reference/roots.rs.
//
// affine:          out[z] = alpha * s[z] * x[z] + beta * out[z] + gamma * I
//                  s[z] = 1 (mode 0), scales[z]^power (mode 1), scales[z] / (den[z] + 1e-16) (mode 3);
//                  mode 2 copies alpha * x[z] only where scales[z] != 0 (a per-matrix mask) and
//                  leaves the other matrices untouched; mode 4 likewise where scales[z] < f32::MAX
//                  (max_dev's flag of a matrix without NaN or Inf); mode 5 divides s by
//                  max(1, scales[z] / power) (a norm clipped at `power`).
// graft:           acc = decay * acc + weight * g^2;  out = g / (sqrt(acc) + eps)   (AdaGrad / RMSProp)
// sign_of:         out = sign(x)
// transpose_of:    out[z] = x[z]^T (x rows x cols, out cols x rows)
// copy_region:     out[dst_off + i * dst_ld + j] = x[src_off + i * src_ld + j] for an h x w window
// maxdev_partial + maxdev_final: max_ij |x_ij - I_ij| per matrix (NaN counts as +Inf), two passes.
// gj_pivot + gj_eliminate: one column of a batched Gauss-Jordan elimination with partial pivoting
//                  on [M | R]; after n columns M = I and R = M^-1 R.

struct RootParams {
    rows: u32,
    cols: u32,      // columns of x / out / M (M is rows x rows)
    batch: u32,
    mode: u32,
    alpha: f32,
    beta: f32,      // 0: the old out is not read
    gamma: f32,
    power: f32,
    col: u32,       // gj: the pivot column j
    rhs: u32,       // gj: columns of R
    chunks: u32,    // maxdev: workgroups per matrix
    eps: f32,       // graft
    src_ld: u32,    // copy_region
    src_off: u32,
    dst_ld: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<uniform> rp: RootParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> mat: array<f32>;
@group(0) @binding(5) var<storage, read_write> rhs: array<f32>;
@group(0) @binding(6) var<storage, read_write> factors: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read> den: array<f32>;
@group(0) @binding(9) var<storage, read_write> acc: array<f32>;

#import shared/grid

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;
const INF: f32 = 3.4028234663852886e38;  // f32::MAX stands in for +Inf (WGSL has no Inf literal)
const MIN_NORMAL: f32 = 1.17549435e-38;   // f32::MIN_POSITIVE, the smallest normal f32

// s^power with the common powers exact (1 / s and sqrt are what the CPU twin computes too).
fn scale_pow(s: f32, power: f32) -> f32 {
    if (power == 1.0) { return s; }
    if (power == -1.0) { return 1.0 / s; }
    if (power == 0.5) { return sqrt(s); }
    if (power == -0.5) { return 1.0 / sqrt(s); }
    return pow(s, power);
}

@compute @workgroup_size(256)
fn affine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let len = rp.rows * rp.cols;
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let z = wid.z;
    if (i >= len) { return; }
    var s = rp.alpha;
    if (rp.mode == 1u) { s = s * scale_pow(scales[z], rp.power); }
    if (rp.mode == 3u) { s = s * (scales[z] / (den[z] + 1e-16)); }
    if (rp.mode == 5u) { s = s / max(1.0, scales[z] / rp.power); }
    if (rp.mode == 2u && scales[z] == 0.0) { return; }
    if (rp.mode == 4u && !(scales[z] < INF)) { return; }
    var v = 0.0;
    if (rp.alpha != 0.0) { v = s * x[z * len + i]; }
    if (rp.beta != 0.0) { v = v + rp.beta * out[z * len + i]; }
    if (i / rp.cols == i % rp.cols) { v = v + rp.gamma; }
    out[z * len + i] = v;
}

var<workgroup> red_max: array<f32, 256>;
var<workgroup> red_idx: array<u32, 256>;

// max over red_max[0..256] into red_max[0], keeping the lowest index among equal values in
// red_idx[0]; two barriers (16 x 16), as shared/reduce.wgsl explains.
fn workgroup_argmax(lid: u32) {
    workgroupBarrier();
    if (lid < 16u) {
        var bv = red_max[lid * 16u];
        var bi = red_idx[lid * 16u];
        for (var j = 1u; j < 16u; j = j + 1u) {
            let v = red_max[lid * 16u + j];
            let k = red_idx[lid * 16u + j];
            if (v > bv || (v == bv && k < bi)) { bv = v; bi = k; }
        }
        red_max[lid * 16u] = bv;
        red_idx[lid * 16u] = bi;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var bv = red_max[0];
        var bi = red_idx[0];
        for (var j = 1u; j < 16u; j = j + 1u) {
            let v = red_max[j * 16u];
            let k = red_idx[j * 16u];
            if (v > bv || (v == bv && k < bi)) { bv = v; bi = k; }
        }
        red_max[0] = bv;
        red_idx[0] = bi;
    }
    workgroupBarrier();
}

fn dev(v: f32, r: u32, c: u32) -> f32 {
    // NaN and +-Inf by their exponent bits (comparisons with NaN are not dependable in WGSL,
    // ALGORITHMS.md §2.1): the largest deviation, f32::MAX.
    if ((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) { return INF; }
    var d = v;
    if (r == c) { d = v - 1.0; }
    return min(abs(d), INF);
}

// Workgroup (x, z, w): chunk x + w * (grid x) of matrix z, as frob_partial.
@compute @workgroup_size(256)
fn maxdev_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let len = rp.rows * rp.cols;
    let chunk = grid_chunk(wid, nwg);
    if (chunk >= rp.chunks) { return; }
    let z = wid.y;
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, len);
    var m = 0.0;
    for (var i = start + lid; i < end; i = i + WG) {
        m = max(m, dev(x[z * len + i], i / rp.cols, i % rp.cols));
    }
    red_max[lid] = m;
    red_idx[lid] = 0u;
    workgroup_argmax(lid);
    if (lid == 0u) { partials[z * rp.chunks + chunk] = red_max[0]; }
}

@compute @workgroup_size(256)
fn maxdev_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.x;
    var m = 0.0;
    for (var j = lid; j < rp.chunks; j = j + WG) { m = max(m, partials[z * rp.chunks + j]); }
    red_max[lid] = m;
    red_idx[lid] = 0u;
    workgroup_argmax(lid);
    if (lid == 0u) { out[z] = red_max[0]; }
}

// Column j of the elimination, one workgroup per matrix: pick the row p >= j with the largest |M_pj|
// (lowest index on ties), swap rows p and j of M and R, scale row j by 1 / M_pj, and store the
// elimination factors f_i = M_ij (0 for i = j) for gj_eliminate. A zero or non-finite pivot sets
// factors[batch * rows + z] = 1 (singular); the elimination still runs so nothing hangs, and the
// host turns the flag into an error.
@compute @workgroup_size(256)
fn gj_pivot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = rp.rows;
    let j = rp.col;
    let z = wid.x;
    let m0 = z * n * n;
    let r0 = z * n * rp.rhs;
    var bv = -1.0;
    var bi = j;
    for (var i = j + lid; i < n; i = i + WG) {
        let v = abs(mat[m0 + i * n + j]);
        if (v > bv) { bv = v; bi = i; }
    }
    red_max[lid] = bv;
    red_idx[lid] = bi;
    workgroup_argmax(lid);
    let p = red_idx[0];
    let piv = mat[m0 + p * n + j];
    storageBarrier();
    // A subnormal pivot counts as singular: a GPU may flush it to 0 (and 1/piv is Inf either way),
    // so only this rule gives the same verdict on every device and on the CPU twin.
    let good = abs(piv) >= MIN_NORMAL && abs(piv) <= INF;
    if (lid == 0u && !good) { factors[rp.batch * n + z] = 1.0; }
    let inv = 1.0 / piv;
    for (var c = j + lid; c < n; c = c + WG) {
        let a = mat[m0 + j * n + c];
        let b = mat[m0 + p * n + c];
        mat[m0 + p * n + c] = a;
        mat[m0 + j * n + c] = b * inv;
    }
    for (var c = lid; c < rp.rhs; c = c + WG) {
        let a = rhs[r0 + j * rp.rhs + c];
        let b = rhs[r0 + p * rp.rhs + c];
        rhs[r0 + p * rp.rhs + c] = a;
        rhs[r0 + j * rp.rhs + c] = b * inv;
    }
    storageBarrier();
    for (var i = lid; i < n; i = i + WG) {
        factors[z * n + i] = select(mat[m0 + i * n + j], 0.0, i == j);
    }
}

// Row i <- row i - f_i * row j for every i != j, over the columns j.. of M and all of R.
@compute @workgroup_size(16, 16)
fn gj_eliminate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = rp.rows;
    let j = rp.col;
    let c = gid.x + j;
    let i = gid.y;
    let z = gid.z;
    if (i >= n || c >= n + rp.rhs) { return; }
    let f = factors[z * n + i];
    if (f == 0.0) { return; }
    if (c < n) {
        let m0 = z * n * n;
        mat[m0 + i * n + c] = mat[m0 + i * n + c] - f * mat[m0 + j * n + c];
    } else {
        let r0 = z * n * rp.rhs;
        let cc = c - n;
        rhs[r0 + i * rp.rhs + cc] = rhs[r0 + i * rp.rhs + cc] - f * rhs[r0 + j * rp.rhs + cc];
    }
}

@compute @workgroup_size(256)
fn graft(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= rp.rows * rp.cols * rp.batch) { return; }
    let g = x[i];
    let a = rp.beta * acc[i] + rp.alpha * g * g;
    acc[i] = a;
    out[i] = g / (sqrt(a) + rp.eps);
}

// out = sign(x) elementwise (0 for +-0), Shampoo's SQRT_N graft.
@compute @workgroup_size(256)
fn sign_of(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= rp.rows * rp.cols * rp.batch) { return; }
    out[i] = sign(x[i]);
}

// out[z] = x[z]^T for a batch (grid z) of rows x cols matrices; one invocation per element.
@compute @workgroup_size(256)
fn transpose_of(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let len = rp.rows * rp.cols;
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= len) { return; }
    let base = wid.z * len;
    let r = i / rp.cols;
    out[base + (i - r * rp.cols) * rp.rows + r] = x[base + i];
}

// For every matrix z of the batch; `col` and `rhs` carry the source's and the destination's matrix
// sizes (the source's is 0 when one matrix is broadcast).
@compute @workgroup_size(16, 16)
fn copy_region(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let z = gid.z;
    if (i >= rp.rows || j >= rp.cols) { return; }
    out[z * rp.rhs + rp.dst_off + i * rp.dst_ld + j] = x[z * rp.col + rp.src_off + i * rp.src_ld + j];
}

// The inverse of each h x h block (h = rows <= 32) of a batch, one workgroup per matrix, by
// Gauss-Jordan without pivoting in workgroup memory: the blocks are diagonal blocks of symmetric
// positive definite matrices (or of their Schur complements), whose pivots are positive. A pivot
// that is not positive and finite sets partials[z] = 1.
var<workgroup> blk: array<f32, 2048>;   // [h][2h] = [D | I], row stride 64
var<workgroup> fac: array<f32, 32>;

@compute @workgroup_size(256)
fn spd_block_inverse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = rp.rows;
    let z = wid.x;
    for (var e = lid; e < 2048u; e = e + WG) {
        let i = e / 64u;
        let c = e % 64u;
        var v = 0.0;
        if (i < h && c < h) { v = x[z * h * h + i * h + c]; }
        if (i < h && c == h + i) { v = 1.0; }
        blk[e] = v;
    }
    var bad = false;
    for (var j = 0u; j < h; j = j + 1u) {
        workgroupBarrier();
        let piv = blk[j * 64u + j];
        bad = bad || !(piv >= MIN_NORMAL && piv <= INF);   // subnormal: singular, as gj_pivot
        if (lid < 32u) { fac[lid] = select(blk[lid * 64u + j], 0.0, lid == j || lid >= h); }
        workgroupBarrier();
        if (lid < 2u * h) { blk[j * 64u + lid] = blk[j * 64u + lid] / piv; }
        workgroupBarrier();
        for (var e = lid; e < h * 2u * h; e = e + WG) {
            let i = e / (2u * h);
            let c = e % (2u * h);
            let f = fac[i];
            if (f != 0.0) { blk[i * 64u + c] = blk[i * 64u + c] - f * blk[j * 64u + c]; }
        }
    }
    workgroupBarrier();
    for (var e = lid; e < h * h; e = e + WG) {
        out[z * h * h + e] = blk[(e / h) * 64u + h + e % h];
    }
    if (lid == 0u) { partials[z] = select(0.0, 1.0, bad); }
}
