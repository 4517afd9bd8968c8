// GEMM for CPU adapters (lavapipe and other SIMD-on-CPU drivers with 8-lane subgroups): the same
// C = alpha * op(A) * op(B) + beta * D as gemm.wgsl, any m, n, k, batched, but shaped for how such a
// driver runs WGSL. Host side: GemmKernel::Panel in src/kernels/gemm.rs; CPU twin: src/reference/gemm.rs.
//
// Why a separate kernel: a CPU driver runs a subgroup's 8 invocations as the 8 lanes of one SIMD
// register and turns every load whose address differs per invocation into a branchy loop over the
// lanes, while a subgroup broadcast is one register shuffle. Measured on lavapipe (LLVM 15, AVX2),
// per value delivered to a lane: ~4 cycles for a scalar storage load, ~1.7 for a vec4 storage load,
// ~0.2 for a broadcast. So this kernel loads only vec4s, as few as it can, and shares them by
// broadcast. Up to four dispatches:
//   1. pack_a / pack_b copy op(A) and op(B) into zero-padded panels (as BLAS libraries pack), so the
//      multiply has no bounds checks, transposes or alignment cases and reads memory in order; A
//      stored m x k, B stored k x n with whole vec4 rows, and B stored n x k (gemm_panel_bt, which
//      transposes 4 x 4 blocks in registers) are read in place instead when k % 4 == 0, k <= 4096
//      (a B stored k x n only while it is small: pack_b_kn in src/kernels/gemm.rs);
//   2. gemm_panel: one workgroup is one subgroup and computes a 64 x 32 tile (a symmetric product
//      only the tiles on or above the diagonal, on a grid balanced for CPU threads); invocation `lane` owns
//      rows lane, lane + 8, ..., lane + 56 and all 32 columns (256 accumulators: the driver keeps
//      what does not fit in registers on the stack, which costs less than any further load). Per 4
//      steps of k it loads one vec4 of A per row it owns and one vec4 of each of the B panel's 4 rows
//      (8 lanes x 4 = the tile's 32 columns), which broadcasts hand to every lane: 1024 FMAs per 12
//      vec4 loads. The raw tile goes to a padded scratch matrix, or, when C is whole tiles and its
//      addend (if any) is a separate D (direct_out), alpha * tile + beta * D straight into C, where a
//      symmetric product's tiles wholly above the diagonal also store their transposes
//      (gemm_panel_sym, gemm_panel_bt_sym);
//   3. panel_finish applies bounds, alpha, beta, the addend D and the symmetric mirror per element;
//      with direct_out only a symmetric product of two different matrices has a last pass,
//      panel_diag_mirror (see there).
// The accumulators are named struct fields, never an indexed array, so no compiler has to prove
// indices constant to keep them out of memory.

#import shared/gemm_common
@group(0) @binding(6) var<storage, read> ap: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> bp: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> packed: array<vec4<f32>>; // pack_a, pack_b, gemm_panel (raw tile)
@group(0) @binding(9) var<storage, read> raw: array<vec4<f32>>;      // panel_finish

const PM: u32 = 64u; // rows of an A panel = rows of a C tile
const PN: u32 = 32u; // columns of a B panel = columns of a C tile

// The views of A, B, C and D as vec4s (the same buffers as a, b, c, d), for the passes' aligned paths.
@group(0) @binding(10) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read> d4: array<vec4<f32>>;

// A 4 x 4 block as four vec4 rows.
struct Block4 { x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, }

fn transpose4(b: Block4) -> Block4 {
    return Block4(vec4<f32>(b.x0.x, b.x1.x, b.x2.x, b.x3.x), vec4<f32>(b.x0.y, b.x1.y, b.x2.y, b.x3.y),
                  vec4<f32>(b.x0.z, b.x1.z, b.x2.z, b.x3.z), vec4<f32>(b.x0.w, b.x1.w, b.x2.w, b.x3.w));
}

// Four vec4s of a4 (stored rows `at`, `at + s`, ...), each kept where its flag is set and 0 elsewhere.
// The loads are unconditional (a read past the end is safe in WGSL and discarded here): a CPU driver
// turns a per-invocation branch into mask bookkeeping around every load inside it.
fn rows4_a(at: u32, s: u32, keep: vec4<bool>) -> Block4 {
    let z = vec4<f32>(0.0);
    return Block4(select(z, a4[at], keep.x), select(z, a4[at + s], keep.y), select(z, a4[at + 2u * s], keep.z),
                  select(z, a4[at + 3u * s], keep.w));
}

fn rows4_b(at: u32, s: u32, keep: vec4<bool>) -> Block4 {
    let z = vec4<f32>(0.0);
    return Block4(select(z, b4[at], keep.x), select(z, b4[at + s], keep.y), select(z, b4[at + 2u * s], keep.z),
                  select(z, b4[at + 3u * s], keep.w));
}

// Packed A, per matrix: panels of 64 rows; panel p, k group g (4 steps of k), row r is the vec4
// ap[(p * k4n + g) * 64 + r] = op(A)[64p + r, 4g .. 4g + 3], zero outside op(A). One invocation
// packs a 4 x 4 block (4 consecutive vec4s), with 4 vec4 loads where the stored rows allow it
// (k % 4 == 0 for A, m % 4 == 0 for a transposed A) and 16 checked scalar loads otherwise.
// Grid: x covers the 4-row blocks (64 per workgroup), y the k groups (looping past the grid's
// height), z the batch; every index comes from the grid, since a CPU driver runs an integer
// division by a run-time value one lane at a time.
@compute @workgroup_size(64)
fn pack_a(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    k_lim = gp.k;
    let rb = wid.x * 64u + lid;
    let rows = (gp.m + PM - 1u) / PM * PM;
    if (4u * rb >= rows) { return; }
    let row = 4u * rb;
    let k4n = (gp.k + 3u) / 4u;
    let base = wid.z * gp.stride_a;
    let r4 = vec4<u32>(row, row + 1u, row + 2u, row + 3u);
    for (var g = wid.y; g < k4n; g = g + nwg.y) {
        let k4 = vec4<u32>(4u * g, 4u * g + 1u, 4u * g + 2u, 4u * g + 3u);
        var x: Block4;
        if (gp.trans_a == 0u && gp.k % 4u == 0u) {
            x = rows4_a((base + row * gp.lda) / 4u + g, gp.lda / 4u, r4 < vec4<u32>(gp.m));
        } else if (gp.trans_a != 0u && gp.m % 4u == 0u) {
            let keep = k4 < vec4<u32>(gp.k) & vec4<bool>(row < gp.m);
            x = transpose4(rows4_a((base + 4u * g * gp.lda + row) / 4u, gp.lda / 4u, keep));
        } else {
            x = Block4(load_a4(base, row, k4), load_a4(base, row + 1u, k4), load_a4(base, row + 2u, k4),
                       load_a4(base, row + 3u, k4));
        }
        let out = (wid.z * rows / PM + row / PM) * k4n * PM + g * PM + row % PM;
        packed[out] = x.x0;
        packed[out + 1u] = x.x1;
        packed[out + 2u] = x.x2;
        packed[out + 3u] = x.x3;
    }
}

// op(A)[row, k.x .. k.w] by checked scalar loads.
fn load_a4(base: u32, row: u32, k: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(load_a(base, row, k.x), load_a(base, row, k.y), load_a(base, row, k.z), load_a(base, row, k.w));
}

// Packed B, per matrix: panels of 32 columns; panel p, row k (padded to 4 * k4n), column group q is
// the vec4 bp[(p * 4 * k4n + k) * 8 + q] = op(B)[k, 32p + 4q .. 32p + 4q + 3], zero outside op(B).
// One invocation packs a 4 x 4 block (rows 4g .. 4g + 3 of a column group), vectorised as pack_a;
// grid x covers the column groups, y the k groups, z the batch.
@compute @workgroup_size(64)
fn pack_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    k_lim = gp.k;
    let cg = wid.x * 64u + lid;
    let cols = (gp.n + PN - 1u) / PN * PN;
    if (4u * cg >= cols) { return; }
    let col = 4u * cg;
    let k4n = (gp.k + 3u) / 4u;
    let base = wid.z * gp.stride_b;
    let c4i = vec4<u32>(col, col + 1u, col + 2u, col + 3u);
    for (var g = wid.y; g < k4n; g = g + nwg.y) {
        let k4 = vec4<u32>(4u * g, 4u * g + 1u, 4u * g + 2u, 4u * g + 3u);
        var x: Block4;
        if (gp.trans_b == 0u && gp.n % 4u == 0u) {
            let keep = k4 < vec4<u32>(gp.k) & vec4<bool>(col < gp.n);
            x = rows4_b((base + 4u * g * gp.ldb + col) / 4u, gp.ldb / 4u, keep);
        } else if (gp.trans_b != 0u && gp.k % 4u == 0u) {
            x = transpose4(rows4_b((base + col * gp.ldb) / 4u + g, gp.ldb / 4u, c4i < vec4<u32>(gp.n)));
        } else {
            x = Block4(load_b4(base, k4.x, col), load_b4(base, k4.y, col), load_b4(base, k4.z, col),
                       load_b4(base, k4.w, col));
        }
        let out = ((wid.z * cols / PN + col / PN) * 4u * k4n + 4u * g) * 8u + (col % PN) / 4u;
        packed[out] = x.x0;
        packed[out + 8u] = x.x1;
        packed[out + 16u] = x.x2;
        packed[out + 24u] = x.x3;
    }
}

// op(B)[k, col .. col + 3] by checked scalar loads.
fn load_b4(base: u32, k: u32, col: u32) -> vec4<f32> {
    return vec4<f32>(load_b(base, k, col), load_b(base, k, col + 1u), load_b(base, k, col + 2u), load_b(base, k, col + 3u));
}

// The accumulators of one invocation for one 4-column group of the tile: its 8 rows.
struct Col8 {
    r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>, r4: vec4<f32>, r5: vec4<f32>, r6: vec4<f32>, r7: vec4<f32>,
}

// All of an invocation's accumulators: column groups 0..7 (columns 4q .. 4q + 3 of the tile).
struct Acc {
    q0: Col8, q1: Col8, q2: Col8, q3: Col8, q4: Col8, q5: Col8, q6: Col8, q7: Col8,
}

// The invocation's A values at one step of k, one per row it owns.
struct A8 {
    r0: f32, r1: f32, r2: f32, r3: f32, r4: f32, r5: f32, r6: f32, r7: f32,
}

// Component u of each of the invocation's 8 row vec4s (rows' values at step u of a 4-step group).
fn a_step(a: array<vec4<f32>, 8>, u: u32) -> A8 {
    return A8(a[0][u], a[1][u], a[2][u], a[3][u], a[4][u], a[5][u], a[6][u], a[7][u]);
}

// acc + x (column) times y (4 columns): 32 FMAs.
fn col_fma(acc: Col8, x: A8, y: vec4<f32>) -> Col8 {
    return Col8(fma(vec4<f32>(x.r0), y, acc.r0), fma(vec4<f32>(x.r1), y, acc.r1), fma(vec4<f32>(x.r2), y, acc.r2), fma(vec4<f32>(x.r3), y, acc.r3),
                fma(vec4<f32>(x.r4), y, acc.r4), fma(vec4<f32>(x.r5), y, acc.r5), fma(vec4<f32>(x.r6), y, acc.r6), fma(vec4<f32>(x.r7), y, acc.r7));
}

// One step of k: acc += x outer (row k of the B panel), whose vec4 q lane q loaded as `v`.
// Column group by column group, so each broadcast is used at once (8 values live, not 32).
fn rank1(acc: ptr<function, Acc>, x: A8, v: vec4<f32>) {
    (*acc).q0 = col_fma((*acc).q0, x, subgroupBroadcast(v, 0u));
    (*acc).q1 = col_fma((*acc).q1, x, subgroupBroadcast(v, 1u));
    (*acc).q2 = col_fma((*acc).q2, x, subgroupBroadcast(v, 2u));
    (*acc).q3 = col_fma((*acc).q3, x, subgroupBroadcast(v, 3u));
    (*acc).q4 = col_fma((*acc).q4, x, subgroupBroadcast(v, 4u));
    (*acc).q5 = col_fma((*acc).q5, x, subgroupBroadcast(v, 5u));
    (*acc).q6 = col_fma((*acc).q6, x, subgroupBroadcast(v, 6u));
    (*acc).q7 = col_fma((*acc).q7, x, subgroupBroadcast(v, 7u));
}

var<private> use_d: bool;
var<private> d_shift: u32;
var<private> out_at: u32; // vec4 index of the invocation's first vec4 of the tile (row lane, columns 0-3)
var<private> ld4: u32;    // vec4s per row of the output
var<private> mirror_at: u32; // float index of the tile's transposed element (lane, 0) in C
var<private> mirror: bool;   // a direct symmetric product's tile wholly above the diagonal

// The vec4 of the tile's columns 4q .. 4q + 3 in its row lane + r: packed[..] = coef.x * v (+ coef.y
// * D at the same place of C when use_d). The addend is loaded unconditionally (a read past a dummy
// binding's end is safe in WGSL) and selected: a CPU driver turns a per-invocation branch around a
// load into mask bookkeeping. A mirrored tile also stores the 4 values at their transposed places,
// down a column of C (the 8 lanes together write 8 consecutive floats of a row per component).
// Those are f32 stores through `c` (C bound again as f32s): a store to one component of a vec4 in
// `packed` may, by the WGSL spec, access the whole vec4, which the neighbouring lanes also write.
fn put(r: u32, q: u32, v: vec4<f32>) {
    let i = out_at + r * ld4 + q;
    let dv = d4[i + d_shift];
    let x = select(coef.x * v, coef.x * v + coef.y * dv, use_d); // panel_finish's rounding
    packed[i] = x;
    if (mirror) {
        let ld = 4u * ld4;
        let t = mirror_at + 4u * q * ld + r;
        c[t] = x.x;
        c[t + ld] = x.y;
        c[t + 2u * ld] = x.z;
        c[t + 3u * ld] = x.w;
    }
}

@compute @workgroup_size(8)
fn gemm_panel(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    panel(wid, lane, false, false);
}

// gemm_panel for a symmetric product written straight into C (direct_out): the tiles wholly above
// the diagonal also store their transposes. A separate entry point so that other products carry no
// trace of those stores (behind a runtime flag in every product, they made lavapipe's n = 2048 NN
// product 4-6% slower in one interleaved timing of three runs each; later ones were within noise).
@compute @workgroup_size(8)
fn gemm_panel_sym(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    panel(wid, lane, false, true);
}

// gemm_panel for a B stored transposed (n x k, row-major) read in place: per 4 steps of k, lane q
// loads one vec4 from each of the 4 stored rows 4q .. 4q + 3 of its panel (b_lane = 4 rows, b_row =
// 1 row, b_step = 1 vec4) and transposes the 4 x 4 block in registers into the 4 B rows' vec4s,
// instead of a pass that packs op(B) (measured on lavapipe: packing a 768 x 768 B cost as much as a
// third of the Gram product it feeds).
@compute @workgroup_size(8)
fn gemm_panel_bt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    panel(wid, lane, true, false);
}

// gemm_panel_bt and gemm_panel_sym together (the Gram product X * X^T written into C).
@compute @workgroup_size(8)
fn gemm_panel_bt_sym(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    panel(wid, lane, true, true);
}

// The body of the entry points; `bt` and `sym` are literals there, so a driver that inlines (every
// one that compiles through NIR or LLVM) drops the branch from the loop and, without `sym`, the
// transposed stores.
fn panel(wid: vec3<u32>, lane: u32, bt: bool, sym: bool) {
    let z = wid.z;
    // The tile: (wid.y, wid.x), or in symmetric mode one of those on or above the diagonal only.
    // Row panel i there has C - 2i such tiles (C column tiles; PM = 2 * PN), so the grid pairs row
    // panels i = wid.y and R - 1 - i (R row panels) into one grid row of 2C - 2R + 2 tiles: every grid
    // row then holds the same work. (A CPU driver hands each thread a contiguous range of
    // workgroups; launched as a square grid whose lower tiles exit at once, the thread with the top
    // rows got 3/4 of a symmetric product's work on lavapipe's 2 threads.)
    var ty = wid.y;
    var tx = wid.x;
    if (gp.symmetric != 0u) {
        let first = (gp.n + PN - 1u) / PN - 2u * wid.y;
        if (wid.x >= first) {
            ty = (gp.m + PM - 1u) / PM - 1u - wid.y;
            tx = 2u * ty + wid.x - first;
            if (ty == wid.y) { return; } // the middle row panel of an odd count is paired with itself
        } else {
            tx = 2u * wid.y + wid.x;
        }
    }
    let row0 = ty * PM;
    let col0 = tx * PN;
    let k4n = (gp.k + 3u) / 4u;
    // A broadcast operand (stride 0) is one matrix. Addressing in vec4s from the uniform: packed
    // panels, or an operand read in place (its rows past m or columns past n, read or not, only
    // reach accumulators stored into the scratch's padding, which is never read back: direct_out
    // has none).
    let za = select(z, 0u, gp.stride_a == 0u);
    let zb = select(z, 0u, gp.stride_b == 0u);
    var ai = za * gp.a_mat + ty * gp.a_panel + lane * gp.a_row;
    var bi = zb * gp.b_mat + tx * gp.b_panel + lane * gp.b_lane;
    let ar = 8u * gp.a_row;
    let br = gp.b_row;
    var acc: Acc;
    for (var g = 0u; g < k4n; g = g + 1u) {
        // Every load of the step group first, then only arithmetic: a CPU driver's per-lane load
        // loops are branches, and accumulators live across a branch get spilled and reloaded
        // around it (loading B row by row between the updates measured 1.7x slower on lavapipe).
        let a = array<vec4<f32>, 8>(ap[ai], ap[ai + ar], ap[ai + 2u * ar], ap[ai + 3u * ar], ap[ai + 4u * ar],
                                    ap[ai + 5u * ar], ap[ai + 6u * ar], ap[ai + 7u * ar]);
        var v = Block4(bp[bi], bp[bi + br], bp[bi + 2u * br], bp[bi + 3u * br]);
        if (bt) { v = transpose4(v); }
        ai = ai + gp.a_step;
        bi = bi + gp.b_step;
        rank1(&acc, a_step(a, 0u), v.x0);
        rank1(&acc, a_step(a, 1u), v.x1);
        rank1(&acc, a_step(a, 2u), v.x2);
        rank1(&acc, a_step(a, 3u), v.x3);
    }
    // The raw tile goes to a padded scratch matrix with plain vec4 stores, and panel_finish applies
    // the epilogue (bounds, alpha, beta, D, the mirror) in a second pass over C. In-kernel, that
    // epilogue unrolled over 256 accumulators took lavapipe 25 s to compile, and as a loop over a
    // private copy it made the kernel 1.3-2x slower. Where C has the scratch's shape and asks for no
    // bounds (direct_out), `packed` is C itself and each store applies alpha and, when asked, beta
    // times the separate addend D (same layout as C): one vec4 load and select per store.
    ld4 = (gp.n + PN - 1u) / PN * (PN / 4u);
    let top = z * ((gp.m + PM - 1u) / PM) * PM;
    out_at = (top + row0 + lane) * ld4 + col0 / 4u;
    // Direct output of a symmetric product (m = n, whole tiles): a tile wholly above the diagonal
    // also writes its transpose, the tile below that no workgroup computes.
    mirror = sym && gp.symmetric != 0u && gp.direct_out != 0u && col0 >= row0 + PM;
    mirror_at = (top + col0) * 4u * ld4 + row0 + lane;
    coef = select(vec2<f32>(1.0, 0.0), coefficients(z), gp.direct_out != 0u);
    use_d = gp.direct_out != 0u && gp.beta != 0.0;
    // D's index is C's, moved from matrix z of C to matrix z of D (stride_d = 0 broadcasts one D).
    d_shift = z * (gp.stride_d / 4u) - z * (gp.stride_c / 4u);
    put(0u, 0u, acc.q0.r0);
    put(0u, 1u, acc.q1.r0);
    put(0u, 2u, acc.q2.r0);
    put(0u, 3u, acc.q3.r0);
    put(0u, 4u, acc.q4.r0);
    put(0u, 5u, acc.q5.r0);
    put(0u, 6u, acc.q6.r0);
    put(0u, 7u, acc.q7.r0);
    put(8u, 0u, acc.q0.r1);
    put(8u, 1u, acc.q1.r1);
    put(8u, 2u, acc.q2.r1);
    put(8u, 3u, acc.q3.r1);
    put(8u, 4u, acc.q4.r1);
    put(8u, 5u, acc.q5.r1);
    put(8u, 6u, acc.q6.r1);
    put(8u, 7u, acc.q7.r1);
    put(16u, 0u, acc.q0.r2);
    put(16u, 1u, acc.q1.r2);
    put(16u, 2u, acc.q2.r2);
    put(16u, 3u, acc.q3.r2);
    put(16u, 4u, acc.q4.r2);
    put(16u, 5u, acc.q5.r2);
    put(16u, 6u, acc.q6.r2);
    put(16u, 7u, acc.q7.r2);
    put(24u, 0u, acc.q0.r3);
    put(24u, 1u, acc.q1.r3);
    put(24u, 2u, acc.q2.r3);
    put(24u, 3u, acc.q3.r3);
    put(24u, 4u, acc.q4.r3);
    put(24u, 5u, acc.q5.r3);
    put(24u, 6u, acc.q6.r3);
    put(24u, 7u, acc.q7.r3);
    put(32u, 0u, acc.q0.r4);
    put(32u, 1u, acc.q1.r4);
    put(32u, 2u, acc.q2.r4);
    put(32u, 3u, acc.q3.r4);
    put(32u, 4u, acc.q4.r4);
    put(32u, 5u, acc.q5.r4);
    put(32u, 6u, acc.q6.r4);
    put(32u, 7u, acc.q7.r4);
    put(40u, 0u, acc.q0.r5);
    put(40u, 1u, acc.q1.r5);
    put(40u, 2u, acc.q2.r5);
    put(40u, 3u, acc.q3.r5);
    put(40u, 4u, acc.q4.r5);
    put(40u, 5u, acc.q5.r5);
    put(40u, 6u, acc.q6.r5);
    put(40u, 7u, acc.q7.r5);
    put(48u, 0u, acc.q0.r6);
    put(48u, 1u, acc.q1.r6);
    put(48u, 2u, acc.q2.r6);
    put(48u, 3u, acc.q3.r6);
    put(48u, 4u, acc.q4.r6);
    put(48u, 5u, acc.q5.r6);
    put(48u, 6u, acc.q6.r6);
    put(48u, 7u, acc.q7.r6);
    put(56u, 0u, acc.q0.r7);
    put(56u, 1u, acc.q1.r7);
    put(56u, 2u, acc.q2.r7);
    put(56u, 3u, acc.q3.r7);
    put(56u, 4u, acc.q4.r7);
    put(56u, 5u, acc.q5.r7);
    put(56u, 6u, acc.q6.r7);
    put(56u, 7u, acc.q7.r7);
}

// C = epilogue of the raw product, one invocation per 4 consecutive elements of a row of C: vec4
// loads and stores where C's rows are (n % 4 == 0), per element otherwise. Grid: x covers a row's
// vec4s (64 per workgroup), y the rows (looping past the grid's height), z the batch. In symmetric
// mode the lower triangle reads its mirror, the only one that was computed.
@compute @workgroup_size(64)
fn panel_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let col = 4u * (wid.x * 64u + lid);
    if (col >= gp.n) { return; }
    let z = wid.z;
    let ld = (gp.n + PN - 1u) / PN * PN;
    let top = z * ((gp.m + PM - 1u) / PM) * PM;
    coef = coefficients(z);
    for (var row = wid.y; row < gp.m; row = row + nwg.y) {
        var v = raw[((top + row) * ld + col) / 4u];
        if (gp.symmetric != 0u && row > col) {
            // Columns col .. col + 3 left of the diagonal read their mirrors (in the padded scratch,
            // so the reads are in bounds even past n).
            let e = (top + col) * ld + row;
            let mirror = vec4<f32>(raw[e / 4u][e % 4u], raw[(e + ld) / 4u][(e + ld) % 4u],
                                   raw[(e + 2u * ld) / 4u][(e + 2u * ld) % 4u], raw[(e + 3u * ld) / 4u][(e + 3u * ld) % 4u]);
            v = select(v, mirror, vec4<u32>(row) > vec4<u32>(col, col + 1u, col + 2u, col + 3u));
        }
        let at = z * gp.stride_c + row * gp.ldc + col;
        if (gp.n % 4u == 0u) {
            var r = coef.x * v;
            if (gp.beta != 0.0) {
                if (gp.d_mode == 0u) {
                    r = r + coef.y * c4[at / 4u];
                } else {
                    r = r + coef.y * d4[(z * gp.stride_d + row * gp.ldc + col) / 4u];
                }
            }
            c4[at / 4u] = r;
        } else {
            for (var j = 0u; j < 4u; j = j + 1u) {
                if (col + j < gp.n) { c[at + j] = epilogue(z, row, col + j, v[j]); }
            }
        }
    }
}

// Direct output of a symmetric product of two different matrices (commuting ones: the matrix roots'
// iterations): the tiles crossing the diagonal computed their lower elements themselves, and those
// sums of other products need not equal their mirrors bit for bit, so each 64 x 64 diagonal block's
// upper triangle is copied over its lower one. (For one matrix times itself they are already equal:
// the same products summed in the same order.) Workgroup x: one diagonal block, z: the matrix; each
// invocation copies 4 of the block's 16 x 16 4 x 4-blocks, a block below the diagonal from the
// transpose of its mirror, one on it keeping its own upper elements. Only blocks on or above the
// diagonal are read and only ones on or below it written, each by one invocation.
@compute @workgroup_size(64)
fn panel_diag_mirror(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ld4 = gp.ldc / 4u;
    let top = wid.z * (gp.stride_c / 4u);
    let d0 = wid.x * PM;
    let i = vec4<u32>(0u, 1u, 2u, 3u);
    for (var j = 0u; j < 4u; j = j + 1u) {
        let blk = 4u * lid + j;
        let br = blk / 16u;
        let bc = blk % 16u;
        if (br < bc) { continue; }
        let row = d0 + 4u * br;
        let col = d0 + 4u * bc;
        let src = top + col * ld4 + row / 4u;
        let mine = Block4(c4[src], c4[src + ld4], c4[src + 2u * ld4], c4[src + 3u * ld4]);
        let x = transpose4(mine);
        let dst = top + row * ld4 + col / 4u;
        if (br > bc) {
            c4[dst] = x.x0;
            c4[dst + ld4] = x.x1;
            c4[dst + 2u * ld4] = x.x2;
            c4[dst + 3u * ld4] = x.x3;
        } else {
            // On the diagonal (src = dst, `mine` is this block): row r takes the mirror left of the
            // diagonal (columns < r); row 0 has none.
            c4[dst + ld4] = select(mine.x1, x.x1, i < vec4<u32>(1u));
            c4[dst + 2u * ld4] = select(mine.x2, x.x2, i < vec4<u32>(2u));
            c4[dst + 3u * ld4] = select(mine.x3, x.x3, i < vec4<u32>(3u));
        }
    }
}
