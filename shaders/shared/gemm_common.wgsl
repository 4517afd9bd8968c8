// What every GEMM kernel shares (gemm.wgsl, gemm_panel.wgsl): the uniform, the bounds-checked
// element loads of op(A) and op(B), and the epilogue C = alpha * acc + beta * D with its symmetric
// (mirrored) store, and the bindings they use (a module adds its own from binding 6 on).

struct GemmParams {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, trans_a: u32,
    stride_a: u32, stride_b: u32, stride_c: u32, trans_b: u32,
    alpha: f32, beta: f32,
    d_mode: u32,    // 0: D = C; 1: D is the separate `d` binding
    stride_d: u32,
    // 1: C is known to be symmetric (X*X^T, A*A with A symmetric, or a product of two commuting
    // symmetric matrices, plus a symmetric addend): only tiles reaching on or above the diagonal are
    // computed, their upper elements stored mirrored.
    symmetric: u32,
    // Split-K partial products (0: off): matrix z of the batch is the z-th slice of k, of gp.k
    // columns (the last one shorter), k_total in all; the host sums the slices (gemm_splitk_reduce).
    k_total: u32,
    // Per-matrix scaling by s = 1 / (norms[z] + eps) (NS5's normalisation fused into its first
    // products): bits 0-3 the power of s on alpha (0, 1, 2), bits 4-7 on beta (0, 1).
    scale_pows: u32,
    eps: f32,
    // gemm_panel's operand addressing, in vec4s (set by the host; see GemmPlan::build_panel): A's row
    // stride, k-group step, 64-row panel stride and matrix stride; B's stored-row stride (rows of k,
    // or columns for gemm_panel_bt), 32-column panel stride and matrix stride (b_lane and b_step
    // below: a lane's offset and the step per k group). Packed operands and operands read in place differ only here.
    // direct_out = 1: C is m x n with m % 64 == n % 32 == 0 and beta = 0 or D separate from C, so
    // gemm_panel writes alpha * product + beta * D straight into it (a symmetric product's tiles
    // wholly above the diagonal also store their transposes).
    a_row: u32, a_step: u32, a_panel: u32, a_mat: u32,
    b_row: u32, b_panel: u32, b_mat: u32, direct_out: u32,
    // gemm_panel's walk through B: a lane's first vec4 (b_lane per lane), the step per 4 steps of k.
    b_lane: u32, b_step: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;
@group(0) @binding(5) var<storage, read> norms: array<f32>;

var<private> k_lim: u32;

// op(A)[row, kk] of the matrix at `base`, or 0 outside.
fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= gp.m || kk >= k_lim) { return 0.0; }
    if (gp.trans_a != 0u) { return a[base + kk * gp.lda + row]; }
    return a[base + row * gp.lda + kk];
}

// op(B)[kk, col] of the matrix at `base`, or 0 outside.
fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk >= k_lim || col >= gp.n) { return 0.0; }
    if (gp.trans_b != 0u) { return b[base + col * gp.ldb + kk]; }
    return b[base + kk * gp.ldb + col];
}

// Matrix z's (alpha, beta): times powers of s = 1 / (norms[z] + eps) when gp.scale_pows asks. Computed
// once per invocation into `coef`, outside the per-element epilogue: calling it from the epilogue made
// lavapipe's GEMM 1.6x slower (gram_half at n = 256: 7.3 against 4.6 ms).
fn coefficients(z: u32) -> vec2<f32> {
    var al = gp.alpha;
    var be = gp.beta;
    if (gp.scale_pows != 0u) {
        let s = 1.0 / (norms[z] + gp.eps);
        let pa = gp.scale_pows & 15u;
        if (pa >= 1u) { al = al * s; }
        if (pa >= 2u) { al = al * s; }
        if ((gp.scale_pows >> 4u) >= 1u) { be = be * s; }
    }
    return vec2<f32>(al, be);
}

var<private> coef: vec2<f32>;

// coef.x * acc + coef.y * D at (row, col) (coef set by the kernel from `coefficients`), D not read
// when beta == 0.
fn epilogue(z: u32, row: u32, col: u32, acc: f32) -> f32 {
    let be = coef.y;
    var r = coef.x * acc;
    if (gp.beta != 0.0) {
        if (gp.d_mode == 0u) {
            r = r + be * c[z * gp.stride_c + row * gp.ldc + col];
        } else {
            r = r + be * d[z * gp.stride_d + row * gp.ldc + col];
        }
    }
    return r;
}

// C[row, col0 .. col0+3] <- epilogue, within bounds. In symmetric mode (where only tiles reaching
// on or above the diagonal run) an element is stored only if it is on or above the diagonal, and
// then also mirrored: every element of C is written exactly once, whatever the kernel's tile shape.
fn store4(z: u32, row: u32, col0: u32, v: vec4<f32>) {
    if (row >= gp.m) { return; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let col = col0 + j;
        if (col < gp.n && (gp.symmetric == 0u || row <= col)) {
            c[z * gp.stride_c + row * gp.ldc + col] = epilogue(z, row, col, v[j]);
            if (gp.symmetric != 0u && row < col) {
                c[z * gp.stride_c + col * gp.ldc + row] = epilogue(z, col, row, v[j]);
            }
        }
    }
}

