// The arithmetic baseline for GEMM figures: each invocation runs 8 independent vec4 FMA chains
// (enough to hide FMA latency) for `iters` steps (a multiple of 4) and stores their sum, so nothing
// can be folded away. FLOPs = invocations * iters * 8 chains * 4 lanes * 2. The loop body holds four
// steps: a CPU driver pays ~25 cycles of loop bookkeeping per iteration, which with one step per
// iteration capped this kernel at about half of what WGSL reaches on lavapipe (45 against 80-83
// GFLOP/s measured on the CI machine); on GPUs the unrolling changes nothing measurable.

struct FmaParams { iters: u32, _p0: u32, _p1: u32, _p2: u32, }

@group(0) @binding(0) var<uniform> fp: FmaParams;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let s = f32(i & 7u) * 1e-3;
    let m = vec4<f32>(0.9999, 0.9998, 0.9997, 0.9996);
    let d = vec4<f32>(1e-4 + s);
    var x0 = vec4<f32>(s); var x1 = x0 + 0.1; var x2 = x0 + 0.2; var x3 = x0 + 0.3;
    var x4 = x0 + 0.4; var x5 = x0 + 0.5; var x6 = x0 + 0.6; var x7 = x0 + 0.7;
    for (var t = 0u; t < fp.iters; t = t + 4u) {
        x0 = fma(x0, m, d); x1 = fma(x1, m, d); x2 = fma(x2, m, d); x3 = fma(x3, m, d);
        x4 = fma(x4, m, d); x5 = fma(x5, m, d); x6 = fma(x6, m, d); x7 = fma(x7, m, d);
        x0 = fma(x0, m, d); x1 = fma(x1, m, d); x2 = fma(x2, m, d); x3 = fma(x3, m, d);
        x4 = fma(x4, m, d); x5 = fma(x5, m, d); x6 = fma(x6, m, d); x7 = fma(x7, m, d);
        x0 = fma(x0, m, d); x1 = fma(x1, m, d); x2 = fma(x2, m, d); x3 = fma(x3, m, d);
        x4 = fma(x4, m, d); x5 = fma(x5, m, d); x6 = fma(x6, m, d); x7 = fma(x7, m, d);
        x0 = fma(x0, m, d); x1 = fma(x1, m, d); x2 = fma(x2, m, d); x3 = fma(x3, m, d);
        x4 = fma(x4, m, d); x5 = fma(x5, m, d); x6 = fma(x6, m, d); x7 = fma(x7, m, d);
    }
    if (i < arrayLength(&out)) {
        out[i] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
    }
}
