// OASIS (ALGORITHMS.md §6.5) and SANIA / PSPS (§6.6) over one flat vector holding every parameter:
// both need global sums before the update, so each step is three dispatches: a fused pass that
// updates the diagonal state and writes per-chunk partial sums, one workgroup that turns them into
// the step's scalar (kept on the device: nothing is read back), and the fused update.
// CPU twin: src/optim/oasis.rs (CpuFlat).
//
// scal (per optimizer): [eta_prev, theta_prev (< 0 means +Inf), eta or lambda of this step, unused]

struct FlatParams {
    len: u32,
    chunks: u32,
    first: u32,        // OASIS: the warm-start step (D = h, eta = lr)
    adaptive: u32,     // OASIS: adaptive eta (else eta = lr)
    beta2: f32,
    omb2: f32,         // 1 - beta2 (OASIS, Adam-SQR); AdaGrad-SQR: beta2 = omb2 = 1
    floor: f32,        // OASIS: hess_floor alpha
    decay: f32,        // 1 - lr * weight_decay
    lr: f32,
    loss: f32,         // SANIA: f at this step
    eps: f32,          // SANIA
    bc2: f32,          // SANIA Adam-SQR: 1 - beta2^t (1 for AdaGrad-SQR)
    sqrt_precond: u32, // SANIA: precondition with sqrt(B)
    psps: u32,         // SANIA: first-order model (6.6.1) instead of (6.6.2)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> fp: FlatParams;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> wp: array<f32>;
@group(0) @binding(4) var<storage, read_write> gp: array<f32>;
@group(0) @binding(5) var<storage, read_write> d: array<f32>;
@group(0) @binding(6) var<storage, read> hd: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> scal: array<f32>;

#import shared/reduce

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;

// (6.5.3) D^ = max(|D|, alpha), with a NaN D kept NaN on every GPU and on the CPU twin alike: a NaN
// Hessian sample is not silently floored. WGSL leaves NaN handling to the implementation, and a
// compare-and-select is what drivers turn into a max instruction (NVIDIA's returned alpha for NaN, seen
// on an H200), so the NaN test is on the bits.
fn truncate(d: f32) -> f32 {
    let a = abs(d);
    let is_nan = (bitcast<u32>(d) & 0x7fffffffu) > 0x7f800000u;
    return select(select(a, fp.floor, a < fp.floor), d, is_nan);
}

// (6.5.2)-(6.5.3) and the two sums of (6.5.4): sum D^(w - w_prev)^2 and sum (g - g_prev)^2 / D^.
@compute @workgroup_size(256)
fn oasis_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let start = wid.x * CHUNK;
    let end = min(start + CHUNK, fp.len);
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = start + lid; i < end; i = i + WG) {
        var di = hd[i];
        if (fp.first == 0u) { di = fp.beta2 * d[i] + fp.omb2 * hd[i]; }
        d[i] = di;
        let dh = truncate(di);
        let dw = p[i] - wp[i];
        let dg = g[i] - gp[i];
        acc = acc + vec2<f32>(dh * dw * dw, dg * dg / dh);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[wid.x] = total; }
}

// (6.5.4) and (6.5.6). A zero gradient change makes the Lipschitz term +Inf (the first term wins);
// if both terms are infinite (the first step after the warm start with an unchanged gradient) the
// step keeps eta_prev.
@compute @workgroup_size(256)
fn oasis_eta(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < fp.chunks; j = j + WG) { acc = acc + partials[j]; }
    red[lid] = acc;
    let s = workgroup_sum(lid);
    if (lid != 0u) { return; }
    let eta_prev = scal[0];
    let theta = scal[1];
    var eta = fp.lr;
    if (fp.first == 0u && fp.adaptive != 0u) {
        var have = false;
        if (theta >= 0.0) { eta = sqrt(1.0 + theta) * eta_prev; have = true; }
        if (s.y > 0.0) {
            let lip = sqrt(s.x) / (2.0 * sqrt(s.y));
            if (!have || lip < eta) { eta = lip; }
            have = true;
        }
        if (!have) { eta = eta_prev; }
    }
    if (fp.first != 0u) {
        scal[1] = -1.0;
    } else {
        scal[1] = eta / eta_prev;
    }
    scal[0] = eta;
    scal[2] = eta;
}

// (6.5.5): w_prev <- w, g_prev <- g, w <- decay * w - eta * g / D^.
@compute @workgroup_size(256)
fn oasis_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= fp.len) { return; }
    let dh = truncate(d[i]);
    let w = p[i];
    let gi = g[i];
    wp[i] = w;
    gp[i] = gi;
    p[i] = fp.decay * w - scal[2] * gi / dh;
}

// SANIA's preconditioner from the statistic: B = d / bc2, optionally its square root, plus eps.
fn sania_precond(di: f32) -> f32 {
    var b = di / fp.bc2;
    if (fp.sqrt_precond != 0u) { b = sqrt(b); }
    return b + fp.eps;
}

// The statistic (Adam-SQR EMA or AdaGrad-SQR sum of g^2) and the partial sums of G = sum g^2 / B.
@compute @workgroup_size(256)
fn sania_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let start = wid.x * CHUNK;
    let end = min(start + CHUNK, fp.len);
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = start + lid; i < end; i = i + WG) {
        let gi = g[i];
        let di = fp.beta2 * d[i] + fp.omb2 * gi * gi;
        d[i] = di;
        acc.x = acc.x + gi * gi / sania_precond(di);
    }
    red[lid] = acc;
    let total = workgroup_sum(lid);
    if (lid == 0u) { partials[wid.x] = total; }
}

// (6.6.2) (or (6.6.1) with psps): lambda from f and G; G = 0 (or not finite) takes no step.
@compute @workgroup_size(256)
fn sania_lambda(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < fp.chunks; j = j + WG) { acc = acc + partials[j]; }
    red[lid] = acc;
    let s = workgroup_sum(lid);
    if (lid != 0u) { return; }
    let big_g = s.x;
    let f = fp.loss;
    var lambda = 0.0;
    if (big_g > 0.0 && big_g <= 3.4028234663852886e38) {
        if (fp.psps != 0u) {
            lambda = f / big_g;
        } else if (2.0 * f <= big_g) {
            lambda = 1.0 - sqrt(max(1.0 - 2.0 * f / big_g, 0.0));
        } else {
            lambda = 1.0;
        }
    }
    scal[2] = lambda;
}

// (6.6.3): w <- decay * w - lr * lambda * g / B.
@compute @workgroup_size(256)
fn sania_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= fp.len) { return; }
    p[i] = fp.decay * p[i] - fp.lr * scal[2] * g[i] / sania_precond(d[i]);
}
