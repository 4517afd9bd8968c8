// Hessian-diagonal optimizers on the arena (ALGORITHMS.md §6.3, §6.4, §11.2); the diagonal estimate
// D for this step arrives in its own arena (binding 7), laid out like the gradients.
// CPU twin: src/reference/hessian.rs.
//
// Hyper slots (computed in src/optim/algorithm.rs):
//   adahessian: lr, beta1/omb1, beta2/omb2, eps, c1 = 1/bc1, c2 = 1/sqrt(bc2), c3 = hessian_power k,
//               c4 = weight_decay
//   sophia:     lr, decay, beta1/omb1, beta2/omb2, eps, c1 = rho, c2 = 1 when the Hessian EMA is
//               updated at this step (t mod k = 0, after the step; "sophiah": (t-1) mod k = 0, before)
#import shared/arena

@group(0) @binding(5) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> s1: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> hd: array<vec4<f32>>;

// x^k for x >= 0 as torch's `**`: x^1 = x exactly (WGSL's pow goes through exp2(log2)), x^0 = 1 (also
// 0^0: amirgholami/adahessian's denominator is then 1 + eps), and 0^k = 0 for k > 0.
fn pow_nonneg(x: vec4<f32>, k: f32) -> vec4<f32> {
    if (k == 1.0) { return x; }
    if (k == 0.0) { return vec4<f32>(1.0); }
    let safe = max(x, vec4<f32>(1e-30));
    return select(pow(safe, vec4<f32>(k)), vec4<f32>(0.0), x == vec4<f32>(0.0));
}

// (6.3.2-6.3.5): s0 = m, s1 = v.
fn adahessian_elem(h: Hyper, i: u32, tensor: u32) {
    let d = hd[i];
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    let v = h.beta2 * s1[i] + h.omb2 * (d * d);
    s0[i] = m;
    s1[i] = v;
    let denom = pow_nonneg(sqrt(v) * h.c2, h.c3) + h.eps;
    let p0 = p[i];
    p[i] = p0 - h.lr * ((m * h.c1) / denom + h.c4 * p0);
}

#arena_kernel adahessian_step adahessian_elem

// The same with k = 1 (the default) and no pow in the code: the host picks this entry point when
// hessian_power is 1, so the default never depends on how a GPU compiles pow or a branch around it.
fn adahessian_k1_elem(h: Hyper, i: u32, tensor: u32) {
    let d = hd[i];
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    let v = h.beta2 * s1[i] + h.omb2 * (d * d);
    s0[i] = m;
    s1[i] = v;
    let denom = sqrt(v) * h.c2 + h.eps;
    let p0 = p[i];
    p[i] = p0 - h.lr * ((m * h.c1) / denom + h.c4 * p0);
}

#arena_kernel adahessian_k1_step adahessian_k1_elem

// Sophia (official code's order): s0 = m, s1 = h; the EMA of h takes this step's D after the update.
fn sophiag_elem(h: Hyper, i: u32, tensor: u32) {
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    s0[i] = m;
    let hh = s1[i];
    let ratio = min(abs(m) / max(h.c1 * hh, vec4<f32>(h.eps)), vec4<f32>(1.0));
    p[i] = h.decay * p[i] - h.lr * (sign(m) * ratio);
    if (h.c2 != 0.0) {
        s1[i] = h.beta2 * hh + h.omb2 * hd[i];
    }
}

#arena_kernel sophiag_step sophiag_elem

// Sophia-H as pytorch-optimizer's SophiaH (rho is the clip bound): the EMA first, then the clipped step.
fn sophiah_elem(h: Hyper, i: u32, tensor: u32) {
    var hh = s1[i];
    if (h.c2 != 0.0) {
        hh = h.beta2 * hh + h.omb2 * hd[i];
        s1[i] = hh;
    }
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    s0[i] = m;
    let u = clamp(m / max(hh, vec4<f32>(h.eps)), vec4<f32>(-h.c1), vec4<f32>(h.c1));
    p[i] = h.decay * p[i] - h.lr * u;
}

#arena_kernel sophiah_step sophiah_elem
