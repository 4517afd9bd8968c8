// Sign-momentum family and its SGD baseline (ALGORITHMS.md §4.1-4.4, §4.7).
// CPU twin: src/reference/sign_momentum.rs. Host side: src/kernels/sign_momentum.rs.
// WGSL's sign() returns 0 for 0, as torch.sign does (ALGORITHMS.md §1).
//
// Hyper slots (computed in src/optim/algorithm.rs):
//   sgd:          lr, decay (SGDW only), beta1 = momentum, c1 = L2 weight decay, c2 = 1 - dampening,
//                 c3 = 1 on the first step, c4 = 1 for Nesterov
//   signsgd:      lr, decay
//   signum:       lr, decay, beta1/omb1 = momentum
//   lion:         lr, decay, beta1/omb1, beta2/omb2
//   ano, anolog:  lr, decay, beta1/omb1 (anolog: beta1(t)), beta2/omb2, eps, c1 = 1 - beta2^t
#import shared/arena

@group(0) @binding(5) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> s1: array<vec4<f32>>;

// (4.1.1-4.1.4) without momentum: p <- decay*p - lr*(g + wd*p)
fn sgd_elem(h: Hyper, i: u32, tensor: u32) {
    let p0 = p[i];
    let d = g[i] + h.c1 * p0;
    p[i] = h.decay * p0 - h.lr * d;
}

#arena_kernel sgd_step sgd_elem

// (4.1.1-4.1.4) with momentum buffer s0 = b
fn sgd_momentum_elem(h: Hyper, i: u32, tensor: u32) {
    let p0 = p[i];
    let d = g[i] + h.c1 * p0;
    var b = h.beta1 * s0[i] + h.c2 * d;
    if (h.c3 != 0.0) { b = d; }
    var u = b;
    if (h.c4 != 0.0) { u = d + h.beta1 * b; }
    s0[i] = b;
    p[i] = h.decay * p0 - h.lr * u;
}

#arena_kernel sgd_momentum_step sgd_momentum_elem

// (4.2.1) p <- decay*p - lr*sign(g)
fn signsgd_elem(h: Hyper, i: u32, tensor: u32) {
    p[i] = h.decay * p[i] - h.lr * sign(g[i]);
}

#arena_kernel signsgd_step signsgd_elem

// (4.3.2-4.3.3) m <- mu*m + (1-mu)*g; p <- decay*p - lr*sign(m)
fn signum_elem(h: Hyper, i: u32, tensor: u32) {
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    s0[i] = m;
    p[i] = h.decay * p[i] - h.lr * sign(m);
}

#arena_kernel signum_step signum_elem

// (4.4.1-4.4.3) c from the OLD m; then m is updated.
fn lion_elem(h: Hyper, i: u32, tensor: u32) {
    let gi = g[i];
    let m = s0[i];
    let c = h.beta1 * m + h.omb1 * gi;
    p[i] = h.decay * p[i] - h.lr * sign(c);
    s0[i] = h.beta2 * m + h.omb2 * gi;
}

#arena_kernel lion_step lion_elem

// (4.7.2-4.7.7) s0 = m, s1 = v; the sign of g^2 - v uses v before this step's update.
fn ano_elem(h: Hyper, i: u32, tensor: u32) {
    let gi = g[i];
    let m = h.beta1 * s0[i] + h.omb1 * gi;
    let v0 = s1[i];
    let g2 = gi * gi;
    let v = h.beta2 * v0 + h.omb2 * (sign(g2 - v0) * g2);
    let vhat = v / h.c1;
    let u = abs(gi) * sign(m) / sqrt(vhat + h.eps);
    s0[i] = m;
    s1[i] = v;
    p[i] = h.decay * p[i] - h.lr * u;
}

#arena_kernel ano_step ano_elem
