// C = alpha * op(A) * op(B) + beta * D, f32, op in {N, T}, any m, n, k, batched over z with strides.
// D is C itself (the BLAS form) or a separate matrix of C's shape (a fused epilogue: Newton-Schulz's
// B = b*A + c*A*A and X' = a*X + B*X are one dispatch each).
// CPU twin: src/reference/gemm.rs. Host side: src/kernels/gemm.rs.
//
// Tiling: one workgroup of 8 x 8 invocations computes a 64 x 64 tile of C; each invocation holds an
// 8 x 8 block of accumulators in registers (register blocking: `Block8`, 16 named vec4s). The k dimension is walked in slices of 16: each invocation
// loads 4 vec4s of the A slice (64 x 16) and 4 of the B slice (16 x 64) into workgroup memory (8 KiB
// in all), then does 16 rank-1 updates of its 8 x 8 block, each from 2 vec4s of A and 2 of B
// (64 FMAs per 4 workgroup loads). On lavapipe, which runs invocations as SIMD lanes and switches
// between them at every barrier, fewer, fatter invocations are what pays. Out-of-range elements load as 0, so no
// padding is asked of the caller. When beta == 0, C is not read (BLAS semantics: it may hold NaN).

#import shared/gemm_common

const TILE: u32 = 64u;
const BK: u32 = 16u;

// Slices in workgroup memory as vec4s: a_s[kk * 16 + r4] holds op(A) rows 4*r4 .. 4*r4+3 at column kk
// of the slice; b_s[kk * 16 + c4] holds op(B) columns 4*c4 .. 4*c4+3 at row kk.
var<workgroup> a_s: array<vec4<f32>, 256>;
var<workgroup> b_s: array<vec4<f32>, 256>;

// The k extent of batch matrix z: gp.k, or in split-K mode what is left of k_total for slice z.
// Computed from the uniform and the workgroup id only, so the k loop's trip count (and with it every
// workgroupBarrier inside) stays in uniform control flow; a read of the private copy `k_lim`, which
// the loads use for their bounds, would not count as uniform under WGSL's uniformity analysis.
fn k_extent(z: u32) -> u32 {
    if (gp.k_total == 0u) { return gp.k; }
    return min(gp.k, gp.k_total - min(gp.k_total, z * gp.k));
}

// An invocation's 8 x 8 accumulators, shared by both kernels: aRC holds row R of its 8 (0-3 from x0,
// 4-7 from x1) times column group C (0: y0, 1: y1). Named vec4s rather than an array, so no compiler
// has a reason to spill them.
struct Block8 {
    a00: vec4<f32>, a01: vec4<f32>, a10: vec4<f32>, a11: vec4<f32>,
    a20: vec4<f32>, a21: vec4<f32>, a30: vec4<f32>, a31: vec4<f32>,
    a40: vec4<f32>, a41: vec4<f32>, a50: vec4<f32>, a51: vec4<f32>,
    a60: vec4<f32>, a61: vec4<f32>, a70: vec4<f32>, a71: vec4<f32>,
}

// acc += [x0; x1] (8 rows) outer [y0, y1] (8 columns): 64 FMAs.
fn rank1(acc: ptr<function, Block8>, x0: vec4<f32>, x1: vec4<f32>, y0: vec4<f32>, y1: vec4<f32>) {
    (*acc).a00 = fma(vec4<f32>(x0.x), y0, (*acc).a00);
    (*acc).a01 = fma(vec4<f32>(x0.x), y1, (*acc).a01);
    (*acc).a10 = fma(vec4<f32>(x0.y), y0, (*acc).a10);
    (*acc).a11 = fma(vec4<f32>(x0.y), y1, (*acc).a11);
    (*acc).a20 = fma(vec4<f32>(x0.z), y0, (*acc).a20);
    (*acc).a21 = fma(vec4<f32>(x0.z), y1, (*acc).a21);
    (*acc).a30 = fma(vec4<f32>(x0.w), y0, (*acc).a30);
    (*acc).a31 = fma(vec4<f32>(x0.w), y1, (*acc).a31);
    (*acc).a40 = fma(vec4<f32>(x1.x), y0, (*acc).a40);
    (*acc).a41 = fma(vec4<f32>(x1.x), y1, (*acc).a41);
    (*acc).a50 = fma(vec4<f32>(x1.y), y0, (*acc).a50);
    (*acc).a51 = fma(vec4<f32>(x1.y), y1, (*acc).a51);
    (*acc).a60 = fma(vec4<f32>(x1.z), y0, (*acc).a60);
    (*acc).a61 = fma(vec4<f32>(x1.z), y1, (*acc).a61);
    (*acc).a70 = fma(vec4<f32>(x1.w), y0, (*acc).a70);
    (*acc).a71 = fma(vec4<f32>(x1.w), y1, (*acc).a71);
}

// Stores the block: rows r0..r0+3 (x0) and r1..r1+3 (x1), columns c0..c0+3 (y0) and c1..c1+3 (y1).
fn store_block(z: u32, acc: Block8, r0: u32, r1: u32, c0: u32, c1: u32) {
    store4(z, r0 + 0u, c0, acc.a00);
    store4(z, r0 + 0u, c1, acc.a01);
    store4(z, r0 + 1u, c0, acc.a10);
    store4(z, r0 + 1u, c1, acc.a11);
    store4(z, r0 + 2u, c0, acc.a20);
    store4(z, r0 + 2u, c1, acc.a21);
    store4(z, r0 + 3u, c0, acc.a30);
    store4(z, r0 + 3u, c1, acc.a31);
    store4(z, r1 + 0u, c0, acc.a40);
    store4(z, r1 + 0u, c1, acc.a41);
    store4(z, r1 + 1u, c0, acc.a50);
    store4(z, r1 + 1u, c1, acc.a51);
    store4(z, r1 + 2u, c0, acc.a60);
    store4(z, r1 + 2u, c1, acc.a61);
    store4(z, r1 + 3u, c0, acc.a70);
    store4(z, r1 + 3u, c1, acc.a71);
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
    var acc: Block8;

    let kext = k_extent(z);
    k_lim = kext;
    let ktiles = (kext + BK - 1u) / BK;
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
            rank1(&acc, x0, x1, y0, y1);
        }
        workgroupBarrier();
    }

    let r0 = row0 + lid3.y * 8u;
    let c0 = col0 + lid3.x * 8u;
    coef = coefficients(z);
    store_block(z, acc, r0, r0 + 4u, c0, c0 + 4u);
}

// ---------------------------------------------------------------------------------------------------
// The large-tile kernel for GPUs (the host picks it on non-CPU adapters for problems that fill the
// device; see `GemmKernel` in src/kernels/gemm.rs). One workgroup of 16 x 16 invocations computes a
// 128 x 128 tile of C; each invocation still owns 8 x 8 outputs, but as two 4-row groups 64 rows
// apart and two 4-column groups 64 columns apart, so that a warp's reads of the B slice are 16
// consecutive vec4s (no bank conflicts) and its reads of the A slice are broadcasts. The k dimension
// is walked in slices of 16; each invocation loads two vec4 slots of each slice, mapped so that
// consecutive invocations read consecutive addresses of the stored matrix (k-fastest for a row-major
// A or a transposed B, row/column-fastest otherwise): global loads coalesce whatever the op. Within a
// slice row the vec4 index is XOR-swizzled with kk (`swz`), so the k-fastest mapping, whose 16
// consecutive invocations store to 16 different slice rows, hits 16 different banks; padding would do
// the same but push the two slices past WebGPU's 16 KiB default workgroup-memory limit. (Measured on
// an H200 with a 33-vec4 pitch instead of the swizzle: 24.3 TFLOP/s at n = 4096, 0.48 of torch.matmul
// in f32; gemm_f32_128_prefetch loads the next slice into registers during the multiply, not yet
// timed on a GPU.)

const TILE_L: u32 = 128u;
const BK_L: u32 = 16u;

var<workgroup> al_s: array<vec4<f32>, 512>; // al_s[kk * 32 + swz(kk, r4)] = rows 4*r4..+3 at kk
var<workgroup> bl_s: array<vec4<f32>, 512>; // bl_s[kk * 32 + swz(kk, c4)] = columns 4*c4..+3 at row kk

// Slice-row position of vec4 q (0..31) in slice row kk (0..15): a permutation within each half.
fn swz(kk: u32, q: u32) -> u32 {
    return kk * 32u + (q ^ kk);
}

// (kk, q) of vec4 slot `slot` of a 16 x 128 slice: k-fastest when `k_fast`, else q-fastest.
fn slot_of(slot: u32, k_fast: bool) -> vec2<u32> {
    if (k_fast) { return vec2<u32>(slot % BK_L, slot / BK_L); }
    return vec2<u32>(slot / 32u, slot % 32u);
}

// Slot s = (kk, q) of the A slice at k0: op(A) rows row0 + 4q .. +3 at column k0 + kk.
fn load_a4(base: u32, row0: u32, k0: u32, s: vec2<u32>) -> vec4<f32> {
    let r = row0 + 4u * s.y;
    let k = k0 + s.x;
    return vec4<f32>(load_a(base, r, k), load_a(base, r + 1u, k), load_a(base, r + 2u, k), load_a(base, r + 3u, k));
}

// Slot s = (kk, q) of the B slice at k0: op(B) columns col0 + 4q .. +3 at row k0 + kk.
fn load_b4(base: u32, col0: u32, k0: u32, s: vec2<u32>) -> vec4<f32> {
    let c = col0 + 4u * s.y;
    let k = k0 + s.x;
    return vec4<f32>(load_b(base, k, c), load_b(base, k, c + 1u), load_b(base, k, c + 2u), load_b(base, k, c + 3u));
}

@compute @workgroup_size(16, 16)
fn gemm_f32_128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    tile128(wid, lid3, lid, false);
}

// gemm_f32_128 with the next slice's global loads issued before the current slice's multiply (into
// registers, stored to workgroup memory after it), so their latency hides behind 16 rank-1 updates
// instead of stalling the workgroup between barriers: 16 more registers per invocation.
@compute @workgroup_size(16, 16)
fn gemm_f32_128_prefetch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    tile128(wid, lid3, lid, true);
}

// The body of both entry points; `prefetch` is a literal there, so a driver that inlines (NVIDIA's and
// other GPU compilers do) drops the other path.
fn tile128(wid: vec3<u32>, lid3: vec3<u32>, lid: u32, prefetch: bool) {
    let z = wid.z;
    if (gp.symmetric != 0u && wid.y > wid.x) { return; }
    let row0 = wid.y * TILE_L;
    let col0 = wid.x * TILE_L;
    let base_a = z * gp.stride_a;
    let base_b = z * gp.stride_b;
    var acc: Block8;
    let kext = k_extent(z);
    k_lim = kext;
    // A stored row-major (not transposed) has k contiguous; B has k contiguous when stored transposed.
    let a_kfast = gp.trans_a == 0u;
    let b_kfast = gp.trans_b != 0u;
    // This invocation's two slots of each slice (fixed over k).
    let sa0 = slot_of(lid, a_kfast);
    let sa1 = slot_of(lid + 256u, a_kfast);
    let sb0 = slot_of(lid, b_kfast);
    let sb1 = slot_of(lid + 256u, b_kfast);
    let ktiles = (kext + BK_L - 1u) / BK_L;
    // The slots of the slice at k = 0 (prefetch), then of each next one (zeros past k_lim).
    var pa0 = vec4<f32>();
    var pa1 = vec4<f32>();
    var pb0 = vec4<f32>();
    var pb1 = vec4<f32>();
    if (prefetch) {
        pa0 = load_a4(base_a, row0, 0u, sa0);
        pa1 = load_a4(base_a, row0, 0u, sa1);
        pb0 = load_b4(base_b, col0, 0u, sb0);
        pb1 = load_b4(base_b, col0, 0u, sb1);
    }
    for (var kt = 0u; kt < ktiles; kt = kt + 1u) {
        let k0 = kt * BK_L;
        if (!prefetch) {
            pa0 = load_a4(base_a, row0, k0, sa0);
            pa1 = load_a4(base_a, row0, k0, sa1);
            pb0 = load_b4(base_b, col0, k0, sb0);
            pb1 = load_b4(base_b, col0, k0, sb1);
        }
        al_s[swz(sa0.x, sa0.y)] = pa0;
        al_s[swz(sa1.x, sa1.y)] = pa1;
        bl_s[swz(sb0.x, sb0.y)] = pb0;
        bl_s[swz(sb1.x, sb1.y)] = pb1;
        workgroupBarrier();
        if (prefetch) {
            let k1 = k0 + BK_L;
            pa0 = load_a4(base_a, row0, k1, sa0);
            pa1 = load_a4(base_a, row0, k1, sa1);
            pb0 = load_b4(base_b, col0, k1, sb0);
            pb1 = load_b4(base_b, col0, k1, sb1);
        }
        for (var kk = 0u; kk < BK_L; kk = kk + 1u) {
            rank1(&acc, al_s[swz(kk, lid3.y)], al_s[swz(kk, 16u + lid3.y)], bl_s[swz(kk, lid3.x)],
                  bl_s[swz(kk, 16u + lid3.x)]);
        }
        workgroupBarrier();
    }
    coef = coefficients(z);
    store_block(z, acc, row0 + 4u * lid3.y, row0 + 64u + 4u * lid3.y, col0 + 4u * lid3.x,
                col0 + 64u + 4u * lid3.x);
}

// Split-K: C = alpha * (sum over the gp.batch partial products in `a`, each m x n) + beta * D, one
// invocation per element of C (symmetric partials were already mirrored by the GEMM kernel).
@compute @workgroup_size(256)
fn gemm_splitk_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let total = gp.m * gp.n;
    if (i >= total) { return; }
    var s = 0.0;
    for (var z = 0u; z < gp.batch; z = z + 1u) {
        s = s + a[z * total + i];
    }
    let row = i / gp.n;
    let col = i % gp.n;
    coef = coefficients(0u);
    c[row * gp.ldc + col] = epilogue(0u, row, col, s);
}
