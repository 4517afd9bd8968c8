// Hutchinson's diagonal estimate (ALGORITHMS.md §6.1, §11.5): diag_i = (1/N) * sum_k z_ik * (A z_k)_i,
// accumulated in f32 in sample order k = 0 .. N-1 and divided by N at the end. Z (samples x n) comes
// from shaders/random.wgsl's rademacher_samples and HZ = A * Z^T (n x samples) from the GEMM kernel.
// CPU twin: src/reference/hutchinson.rs.

struct HutchParams {
    n: u32,
    samples: u32,
    // hutchinson_diag: the samples [k0, k1) of this dispatch. An adapter that stops long loops
    // (llvmpipe: 65,535 iterations per invocation) gets the samples in several dispatches, each
    // carrying the running sum on in diag, so the order of the additions is the same.
    k0: u32,
    k1: u32,
}

@group(0) @binding(0) var<uniform> hp: HutchParams;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> hz: array<f32>;
@group(0) @binding(3) var<storage, read_write> diag: array<f32>;

@compute @workgroup_size(256)
fn hutchinson_diag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= hp.n) { return; }
    var acc = select(diag[i], 0.0, hp.k0 == 0u);
    for (var k = hp.k0; k < hp.k1; k = k + 1u) {
        acc = acc + z[k * hp.n + i] * hz[i * hp.samples + k];
    }
    diag[i] = select(acc, acc / f32(hp.samples), hp.k1 == hp.samples);
}

// The sample-at-a-time form for any Hessian-vector product: acc += z * hz for one sample (k order is
// the caller's loop order), then diag = acc / N. len = n, samples = N.
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(256)
fn hutchinson_accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= hp.n) { return; }
    acc[i] = acc[i] + z[i] * hz[i];
}

@compute @workgroup_size(256)
fn hutchinson_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= hp.n) { return; }
    acc[i] = acc[i] / f32(hp.samples);
}

// AdaHessian's spatial averaging (ALGORITHMS.md §6.1): diag_i = mean of |acc_j| over the block of
// consecutive elements holding i (blocks of `samples` elements here, the last one possibly shorter):
// the kh*kw taps of a conv kernel [o, i, kh, kw], the rows of a matrix, or fairseq's block_length.
@compute @workgroup_size(256)
fn block_average(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= hp.n) { return; }
    let start = (i / hp.samples) * hp.samples;
    let end = min(start + hp.samples, hp.n);
    var s = 0.0;
    for (var j = start; j < end; j = j + 1u) { s = s + abs(acc[j]); }
    diag[i] = s / f32(end - start);
}
