// Hutchinson's diagonal estimate (ALGORITHMS.md §6.1, §11.5): diag_i = (1/N) * sum_k z_ik * (A z_k)_i,
// accumulated in f32 in sample order k = 0 .. N-1 and divided by N at the end. Z (samples x n) comes
// from shaders/random.wgsl's rademacher_samples and HZ = A * Z^T (n x samples) from the GEMM kernel.
// CPU twin: src/reference/hutchinson.rs.

struct HutchParams {
    n: u32,
    samples: u32,
    _p0: u32,
    _p1: u32,
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
    var acc = 0.0;
    for (var k = 0u; k < hp.samples; k = k + 1u) {
        acc = acc + z[k * hp.n + i] * hz[i * hp.samples + k];
    }
    diag[i] = acc / f32(hp.samples);
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
