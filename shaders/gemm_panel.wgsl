// GEMM for CPU adapters (lavapipe and other SIMD-on-CPU drivers with 8-lane subgroups): the same
// C = alpha * op(A) * op(B) + beta * D as gemm.wgsl, any m, n, k, batched, but shaped for how such a
// driver runs WGSL. Host side: GemmKernel::Panel in src/kernels/gemm.rs; CPU twin: src/reference/gemm.rs.
//
// Why a separate kernel: a CPU driver runs a subgroup's 8 invocations as the 8 lanes of one SIMD
// register and turns every load whose address differs per invocation into a branchy loop over the
// lanes, while a subgroup broadcast is one register shuffle. Measured on lavapipe (LLVM 15, AVX2),
// per value delivered to a lane: ~4 cycles for a scalar storage load, ~1.7 for a vec4 storage load,
// ~0.2 for a broadcast. So this kernel loads only vec4s, as few as it can, and shares them by
// broadcast. Four dispatches:
//   1. pack_a / pack_b copy op(A) and op(B) into zero-padded panels (as BLAS libraries pack), so the
//      multiply has no bounds checks, transposes or alignment cases and reads memory in order;
//   2. gemm_panel: one workgroup is one subgroup and computes a 64 x 32 tile; invocation `lane` owns
//      rows lane, lane + 8, ..., lane + 56 and all 32 columns (256 accumulators: the driver keeps
//      what does not fit in registers on the stack, which costs less than any further load). Per 4
//      steps of k it loads one vec4 of A per row it owns and one vec4 of each of the B panel's 4 rows
//      (8 lanes x 4 = the tile's 32 columns), which broadcasts hand to every lane: 1024 FMAs per 12
//      vec4 loads. The raw tile goes to a padded scratch matrix;
//   3. panel_finish applies bounds, alpha, beta, the addend D and the symmetric mirror per element.
// The accumulators are named struct fields, never an indexed array, so no compiler has to prove
// indices constant to keep them out of memory.

#import shared/gemm_common
@group(0) @binding(6) var<storage, read> ap: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> bp: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> packed: array<vec4<f32>>; // pack_a, pack_b, gemm_panel (raw tile)
@group(0) @binding(9) var<storage, read> raw: array<f32>;            // panel_finish

const PM: u32 = 64u; // rows of an A panel = rows of a C tile
const PN: u32 = 32u; // columns of a B panel = columns of a C tile

// Packed A, per matrix: panels of 64 rows; panel p, k group g (4 steps of k), row r is the vec4
// ap[(p * k4n + g) * 64 + r] = op(A)[64p + r, 4g .. 4g + 3], zero outside op(A).
@compute @workgroup_size(256)
fn pack_a(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    k_lim = gp.k;
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let k4n = (gp.k + 3u) / 4u;
    let per = (gp.m + PM - 1u) / PM * k4n * PM;
    if (i >= per) { return; }
    let row = i / (PM * k4n) * PM + i % PM;
    let k = 4u * ((i / PM) % k4n);
    let base = wid.z * gp.stride_a;
    packed[wid.z * per + i] =
        vec4<f32>(load_a(base, row, k), load_a(base, row, k + 1u), load_a(base, row, k + 2u), load_a(base, row, k + 3u));
}

// Packed B, per matrix: panels of 32 columns; panel p, row k (padded to 4 * k4n), column group q is
// the vec4 bp[(p * 4 * k4n + k) * 8 + q] = op(B)[k, 32p + 4q .. 32p + 4q + 3], zero outside op(B).
@compute @workgroup_size(256)
fn pack_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    k_lim = gp.k;
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let k4n = (gp.k + 3u) / 4u;
    let per = (gp.n + PN - 1u) / PN * k4n * 32u;
    if (i >= per) { return; }
    let k = (i / 8u) % (4u * k4n);
    let col = i / (32u * k4n) * PN + 4u * (i % 8u);
    let base = wid.z * gp.stride_b;
    packed[wid.z * per + i] =
        vec4<f32>(load_b(base, k, col), load_b(base, k, col + 1u), load_b(base, k, col + 2u), load_b(base, k, col + 3u));
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

@compute @workgroup_size(8)
fn gemm_panel(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let z = wid.z;
    let row0 = wid.y * PM;
    let col0 = wid.x * PN;
    // Symmetric mode: a tile wholly below the diagonal is written by its mirror (uniform exit).
    if (gp.symmetric != 0u && row0 >= col0 + PN) { return; }
    let k4n = (gp.k + 3u) / 4u;
    // A broadcast operand (stride 0) was packed once.
    let za = select(z, 0u, gp.stride_a == 0u);
    let zb = select(z, 0u, gp.stride_b == 0u);
    var ai = (za * ((gp.m + PM - 1u) / PM) + wid.y) * k4n * PM + lane;
    var bi = (zb * ((gp.n + PN - 1u) / PN) + wid.x) * k4n * 32u + lane;
    var acc: Acc;
    for (var g = 0u; g < k4n; g = g + 1u) {
        // Every load of the step group first, then only arithmetic: a CPU driver's per-lane load
        // loops are branches, and accumulators live across a branch get spilled and reloaded
        // around it (loading B row by row between the updates measured 1.7x slower on lavapipe).
        let a = array<vec4<f32>, 8>(ap[ai + 0u], ap[ai + 8u], ap[ai + 16u], ap[ai + 24u], ap[ai + 32u], ap[ai + 40u], ap[ai + 48u], ap[ai + 56u]);
        let v0 = bp[bi];
        let v1 = bp[bi + 8u];
        let v2 = bp[bi + 16u];
        let v3 = bp[bi + 24u];
        ai = ai + PM;
        bi = bi + 32u;
        rank1(&acc, a_step(a, 0u), v0);
        rank1(&acc, a_step(a, 1u), v1);
        rank1(&acc, a_step(a, 2u), v2);
        rank1(&acc, a_step(a, 3u), v3);
    }
    // The raw tile goes to a padded scratch matrix with plain vec4 stores, and panel_finish applies
    // the epilogue (bounds, alpha, beta, D, the mirror) in a second pass over C. In-kernel, that
    // epilogue unrolled over 256 accumulators took lavapipe 25 s to compile, and as a loop over a
    // private copy it made the kernel 1.3-2x slower; the extra pass costs a few percent.
    let ld4 = (gp.n + PN - 1u) / PN * (PN / 4u);
    let base = (z * ((gp.m + PM - 1u) / PM) * PM + row0 + lane) * ld4 + col0 / 4u;
    packed[base + 0u * ld4 + 0u] = acc.q0.r0;
    packed[base + 0u * ld4 + 1u] = acc.q1.r0;
    packed[base + 0u * ld4 + 2u] = acc.q2.r0;
    packed[base + 0u * ld4 + 3u] = acc.q3.r0;
    packed[base + 0u * ld4 + 4u] = acc.q4.r0;
    packed[base + 0u * ld4 + 5u] = acc.q5.r0;
    packed[base + 0u * ld4 + 6u] = acc.q6.r0;
    packed[base + 0u * ld4 + 7u] = acc.q7.r0;
    packed[base + 8u * ld4 + 0u] = acc.q0.r1;
    packed[base + 8u * ld4 + 1u] = acc.q1.r1;
    packed[base + 8u * ld4 + 2u] = acc.q2.r1;
    packed[base + 8u * ld4 + 3u] = acc.q3.r1;
    packed[base + 8u * ld4 + 4u] = acc.q4.r1;
    packed[base + 8u * ld4 + 5u] = acc.q5.r1;
    packed[base + 8u * ld4 + 6u] = acc.q6.r1;
    packed[base + 8u * ld4 + 7u] = acc.q7.r1;
    packed[base + 16u * ld4 + 0u] = acc.q0.r2;
    packed[base + 16u * ld4 + 1u] = acc.q1.r2;
    packed[base + 16u * ld4 + 2u] = acc.q2.r2;
    packed[base + 16u * ld4 + 3u] = acc.q3.r2;
    packed[base + 16u * ld4 + 4u] = acc.q4.r2;
    packed[base + 16u * ld4 + 5u] = acc.q5.r2;
    packed[base + 16u * ld4 + 6u] = acc.q6.r2;
    packed[base + 16u * ld4 + 7u] = acc.q7.r2;
    packed[base + 24u * ld4 + 0u] = acc.q0.r3;
    packed[base + 24u * ld4 + 1u] = acc.q1.r3;
    packed[base + 24u * ld4 + 2u] = acc.q2.r3;
    packed[base + 24u * ld4 + 3u] = acc.q3.r3;
    packed[base + 24u * ld4 + 4u] = acc.q4.r3;
    packed[base + 24u * ld4 + 5u] = acc.q5.r3;
    packed[base + 24u * ld4 + 6u] = acc.q6.r3;
    packed[base + 24u * ld4 + 7u] = acc.q7.r3;
    packed[base + 32u * ld4 + 0u] = acc.q0.r4;
    packed[base + 32u * ld4 + 1u] = acc.q1.r4;
    packed[base + 32u * ld4 + 2u] = acc.q2.r4;
    packed[base + 32u * ld4 + 3u] = acc.q3.r4;
    packed[base + 32u * ld4 + 4u] = acc.q4.r4;
    packed[base + 32u * ld4 + 5u] = acc.q5.r4;
    packed[base + 32u * ld4 + 6u] = acc.q6.r4;
    packed[base + 32u * ld4 + 7u] = acc.q7.r4;
    packed[base + 40u * ld4 + 0u] = acc.q0.r5;
    packed[base + 40u * ld4 + 1u] = acc.q1.r5;
    packed[base + 40u * ld4 + 2u] = acc.q2.r5;
    packed[base + 40u * ld4 + 3u] = acc.q3.r5;
    packed[base + 40u * ld4 + 4u] = acc.q4.r5;
    packed[base + 40u * ld4 + 5u] = acc.q5.r5;
    packed[base + 40u * ld4 + 6u] = acc.q6.r5;
    packed[base + 40u * ld4 + 7u] = acc.q7.r5;
    packed[base + 48u * ld4 + 0u] = acc.q0.r6;
    packed[base + 48u * ld4 + 1u] = acc.q1.r6;
    packed[base + 48u * ld4 + 2u] = acc.q2.r6;
    packed[base + 48u * ld4 + 3u] = acc.q3.r6;
    packed[base + 48u * ld4 + 4u] = acc.q4.r6;
    packed[base + 48u * ld4 + 5u] = acc.q5.r6;
    packed[base + 48u * ld4 + 6u] = acc.q6.r6;
    packed[base + 48u * ld4 + 7u] = acc.q7.r6;
    packed[base + 56u * ld4 + 0u] = acc.q0.r7;
    packed[base + 56u * ld4 + 1u] = acc.q1.r7;
    packed[base + 56u * ld4 + 2u] = acc.q2.r7;
    packed[base + 56u * ld4 + 3u] = acc.q3.r7;
    packed[base + 56u * ld4 + 4u] = acc.q4.r7;
    packed[base + 56u * ld4 + 5u] = acc.q5.r7;
    packed[base + 56u * ld4 + 6u] = acc.q6.r7;
    packed[base + 56u * ld4 + 7u] = acc.q7.r7;
}

// C = epilogue of the raw product, one invocation per element of C (grid z: the batch). In symmetric
// mode the lower triangle reads its mirror, the only one that was computed.
@compute @workgroup_size(256)
fn panel_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= gp.m * gp.n) { return; }
    let z = wid.z;
    let row = i / gp.n;
    let col = i % gp.n;
    let lower = gp.symmetric != 0u && row > col;
    let r = select(row, col, lower);
    let cc = select(col, row, lower);
    let ld = (gp.n + PN - 1u) / PN * PN;
    coef = coefficients(z);
    c[z * gp.stride_c + row * gp.ldc + col] = epilogue(z, row, col, raw[(z * ((gp.m + PM - 1u) / PM) * PM + r) * ld + cc]);
}
