// C = alpha * op(A) * op(B) + beta * D, f32, op in {N, T}, any m, n, k, batched over z with strides.
// D is C itself (the BLAS form) or a separate matrix of C's shape (a fused epilogue: Newton-Schulz's
// B = b*A + c*A*A and X' = a*X + B*X are one dispatch each).
// CPU twin: src/reference/gemm.rs. Host side: src/kernels/gemm.rs.
//
// Tiling: one workgroup of 8 x 8 invocations computes a 64 x 64 tile of C; each invocation holds an
// 8 x 8 block of accumulators in registers (register blocking: 16 named vec4s, not an array, so no
// compiler has a reason to spill them). The k dimension is walked in slices of 16: each invocation
// loads 4 vec4s of the A slice (64 x 16) and 4 of the B slice (16 x 64) into workgroup memory (8 KiB
// in all), then does 16 rank-1 updates of its 8 x 8 block, each from 2 vec4s of A and 2 of B
// (64 FMAs per 4 workgroup loads). On lavapipe, which runs invocations as SIMD lanes and switches
// between them at every barrier, fewer, fatter invocations are what pays. Out-of-range elements load as 0, so no
// padding is asked of the caller. When beta == 0, C is not read (BLAS semantics: it may hold NaN).

struct GemmParams {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, trans_a: u32,
    stride_a: u32, stride_b: u32, stride_c: u32, trans_b: u32,
    alpha: f32, beta: f32,
    d_mode: u32,    // 0: D = C; 1: D is the separate `d` binding
    stride_d: u32,
    // 1: C is known to be symmetric (X*X^T, or A*A with A symmetric, plus a symmetric addend): only
    // tiles on or above the diagonal are computed and each is also stored mirrored: half the FLOPs.
    symmetric: u32,
    _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;

const TILE: u32 = 64u;
const BK: u32 = 16u;

// Slices in workgroup memory as vec4s: a_s[kk * 16 + r4] holds op(A) rows 4*r4 .. 4*r4+3 at column kk
// of the slice; b_s[kk * 16 + c4] holds op(B) columns 4*c4 .. 4*c4+3 at row kk.
var<workgroup> a_s: array<vec4<f32>, 256>;
var<workgroup> b_s: array<vec4<f32>, 256>;

// op(A)[row, kk] of the matrix at `base`, or 0 outside.
fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= gp.m || kk >= gp.k) { return 0.0; }
    if (gp.trans_a != 0u) { return a[base + kk * gp.lda + row]; }
    return a[base + row * gp.lda + kk];
}

// op(B)[kk, col] of the matrix at `base`, or 0 outside.
fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk >= gp.k || col >= gp.n) { return 0.0; }
    if (gp.trans_b != 0u) { return b[base + col * gp.ldb + kk]; }
    return b[base + kk * gp.ldb + col];
}

// alpha * acc + beta * D at (row, col), D not read when beta == 0.
fn epilogue(z: u32, row: u32, col: u32, acc: f32) -> f32 {
    let off = row * gp.ldc + col;
    var r = gp.alpha * acc;
    if (gp.beta != 0.0) {
        if (gp.d_mode == 0u) {
            r = r + gp.beta * c[z * gp.stride_c + off];
        } else {
            r = r + gp.beta * d[z * gp.stride_d + off];
        }
    }
    return r;
}

// C[row, col0 .. col0+3] <- epilogue, within bounds; in symmetric mode also C[col, row] for the
// elements strictly above the diagonal (a tile on the diagonal writes both halves itself).
fn store4(z: u32, row: u32, col0: u32, v: vec4<f32>) {
    if (row >= gp.m) { return; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let col = col0 + j;
        if (col < gp.n) {
            c[z * gp.stride_c + row * gp.ldc + col] = epilogue(z, row, col, v[j]);
            if (gp.symmetric != 0u && col / TILE != row / TILE) {
                c[z * gp.stride_c + col * gp.ldc + row] = epilogue(z, col, row, v[j]);
            }
        }
    }
}

@compute @workgroup_size(8, 8)
fn gemm_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let z = wid.z;
    // Symmetric mode: tiles below the diagonal are written by their mirror (uniform early exit).
    if (gp.symmetric != 0u && wid.y > wid.x) { return; }
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let base_a = z * gp.stride_a;
    let base_b = z * gp.stride_b;
    var a00 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0);
    var a21 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0);
    var a31 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0);
    var a41 = vec4<f32>(0.0);
    var a50 = vec4<f32>(0.0);
    var a51 = vec4<f32>(0.0);
    var a60 = vec4<f32>(0.0);
    var a61 = vec4<f32>(0.0);
    var a70 = vec4<f32>(0.0);
    var a71 = vec4<f32>(0.0);

    let ktiles = (gp.k + BK - 1u) / BK;
    for (var kt = 0u; kt < ktiles; kt = kt + 1u) {
        let k0 = kt * BK;
        // 256 vec4 slots per slice, four per invocation.
        for (var j = 0u; j < 4u; j = j + 1u) {
            let slot = lid + 64u * j;
            let kk = k0 + slot / 16u;
            let q = (slot % 16u) * 4u;
            let r = row0 + q;
            a_s[slot] = vec4<f32>(load_a(base_a, r, kk), load_a(base_a, r + 1u, kk),
                                  load_a(base_a, r + 2u, kk), load_a(base_a, r + 3u, kk));
            let cc = col0 + q;
            b_s[slot] = vec4<f32>(load_b(base_b, kk, cc), load_b(base_b, kk, cc + 1u),
                                  load_b(base_b, kk, cc + 2u), load_b(base_b, kk, cc + 3u));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let x0 = a_s[kk * 16u + 2u * lid3.y];
            let x1 = a_s[kk * 16u + 2u * lid3.y + 1u];
            let y0 = b_s[kk * 16u + 2u * lid3.x];
            let y1 = b_s[kk * 16u + 2u * lid3.x + 1u];
            a00 = fma(vec4<f32>(x0.x), y0, a00);
            a01 = fma(vec4<f32>(x0.x), y1, a01);
            a10 = fma(vec4<f32>(x0.y), y0, a10);
            a11 = fma(vec4<f32>(x0.y), y1, a11);
            a20 = fma(vec4<f32>(x0.z), y0, a20);
            a21 = fma(vec4<f32>(x0.z), y1, a21);
            a30 = fma(vec4<f32>(x0.w), y0, a30);
            a31 = fma(vec4<f32>(x0.w), y1, a31);
            a40 = fma(vec4<f32>(x1.x), y0, a40);
            a41 = fma(vec4<f32>(x1.x), y1, a41);
            a50 = fma(vec4<f32>(x1.y), y0, a50);
            a51 = fma(vec4<f32>(x1.y), y1, a51);
            a60 = fma(vec4<f32>(x1.z), y0, a60);
            a61 = fma(vec4<f32>(x1.z), y1, a61);
            a70 = fma(vec4<f32>(x1.w), y0, a70);
            a71 = fma(vec4<f32>(x1.w), y1, a71);
        }
        workgroupBarrier();
    }

    let r0 = row0 + lid3.y * 8u;
    let c0 = col0 + lid3.x * 8u;
    store4(z, r0 + 0u, c0 + 0u, a00);
    store4(z, r0 + 0u, c0 + 4u, a01);
    store4(z, r0 + 1u, c0 + 0u, a10);
    store4(z, r0 + 1u, c0 + 4u, a11);
    store4(z, r0 + 2u, c0 + 0u, a20);
    store4(z, r0 + 2u, c0 + 4u, a21);
    store4(z, r0 + 3u, c0 + 0u, a30);
    store4(z, r0 + 3u, c0 + 4u, a31);
    store4(z, r0 + 4u, c0 + 0u, a40);
    store4(z, r0 + 4u, c0 + 4u, a41);
    store4(z, r0 + 5u, c0 + 0u, a50);
    store4(z, r0 + 5u, c0 + 4u, a51);
    store4(z, r0 + 6u, c0 + 0u, a60);
    store4(z, r0 + 6u, c0 + 4u, a61);
    store4(z, r0 + 7u, c0 + 0u, a70);
    store4(z, r0 + 7u, c0 + 4u, a71);
}
