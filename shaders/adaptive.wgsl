// Adaptive baselines (ALGORITHMS.md §8): AdamW (+AMSGrad), AdaBound/AMSBound, AdaMomentum, AdEMAMix,
// MARS (AdamW and Lion instances). CPU twin: src/reference/adaptive.rs.
//
// Hyper slots (computed in src/optim/algorithm.rs):
//   adamw:        lr, decay, beta1/omb1, beta2/omb2, eps, c1 = lr/bc1, c2 = sqrt(bc2)
//   adabound:     decay (weight_decouple only), beta1/omb1, beta2/omb2, eps, c1 = L2 weight decay,
//                 c2 = lr*sqrt(bc2)/bc1, c3 = lower bound, c4 = upper bound
//   adamomentum:  decay, beta1/omb1, beta2/omb2, eps, c1 = the step's factor (lr/bc1 unrectified),
//                 c2 = sqrt(bc2), c3 = the form: 0 m/(sqrt(v)/c2), rectified 1 m/(sqrt(v) + eps),
//                 2 m (SGD), 3 none
//   ademamix:     lr, beta1/omb1, beta2/omb2, eps, c1 = beta3(t), c2 = 1 - beta3(t), c3 = alpha(t),
//                 c4 = bc1, c5 = sqrt(bc2), c6 = weight_decay
//   mars:         lr, beta1/omb1, beta2/omb2, eps, c1 = gamma*beta1/(1-beta1), c2 = bc1, c3 = sqrt(bc2),
//                 c4 = weight_decay; norms[tensor] = ||c||_2 of the tensor (shaders/mars_norm.wgsl)
#import shared/arena

@group(0) @binding(5) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> s1: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> s2: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> norms: array<f32>;

// torch's lerp(a, b, w) for w < 0.5: a + w*(b - a) (ALGORITHMS.md §2.7); AdamW's m.lerp_(g, 1 - beta1).
fn lerp_small(a: vec4<f32>, b: vec4<f32>, w: f32) -> vec4<f32> {
    return a + w * (b - a);
}

// (8.1.2-8.1.6): returns the new p; m, v are written back by the caller.
fn adam_param(h: Hyper, p0: vec4<f32>, m: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    let denom = sqrt(v) / h.c2 + h.eps;
    return h.decay * p0 - h.c1 * (m / denom);
}

fn adamw_elem(h: Hyper, i: u32, tensor: u32) {
    let gi = g[i];
    let m = lerp_small(s0[i], gi, h.omb1);
    let v = h.beta2 * s1[i] + h.omb2 * (gi * gi);
    s0[i] = m;
    s1[i] = v;
    p[i] = adam_param(h, p[i], m, v);
}

#arena_kernel adamw_step adamw_elem

// (8.2.1-8.2.3): s2 = running max of the raw v.
fn adamw_amsgrad_elem(h: Hyper, i: u32, tensor: u32) {
    let gi = g[i];
    let m = lerp_small(s0[i], gi, h.omb1);
    let v = h.beta2 * s1[i] + h.omb2 * (gi * gi);
    let vmax = max(s2[i], v);
    s0[i] = m;
    s1[i] = v;
    s2[i] = vmax;
    p[i] = adam_param(h, p[i], m, vmax);
}

#arena_kernel adamw_amsgrad_step adamw_amsgrad_elem

// (8.3.1-8.3.8): eta = clamp(step / denom, lower, upper); p <- p - eta*m.
fn adabound_param(h: Hyper, p0: vec4<f32>, m: vec4<f32>, vroot: vec4<f32>) -> vec4<f32> {
    let denom = vroot + h.eps;
    let eta = clamp(h.c2 / denom, vec4<f32>(h.c3), vec4<f32>(h.c4));
    return h.decay * p0 - eta * m;
}

fn adabound_elem(h: Hyper, i: u32, tensor: u32) {
    let p0 = p[i];
    let gi = g[i] + h.c1 * p0;
    let m = h.beta1 * s0[i] + h.omb1 * gi;
    let v = h.beta2 * s1[i] + h.omb2 * (gi * gi);
    s0[i] = m;
    s1[i] = v;
    p[i] = adabound_param(h, p0, m, sqrt(v));
}

#arena_kernel adabound_step adabound_elem

fn amsbound_elem(h: Hyper, i: u32, tensor: u32) {
    let p0 = p[i];
    let gi = g[i] + h.c1 * p0;
    let m = h.beta1 * s0[i] + h.omb1 * gi;
    let v = h.beta2 * s1[i] + h.omb2 * (gi * gi);
    let vmax = max(s2[i], v);
    s0[i] = m;
    s1[i] = v;
    s2[i] = vmax;
    p[i] = adabound_param(h, p0, m, sqrt(vmax));
}

#arena_kernel amsbound_step amsbound_elem

// (8.4.1-8.4.5): v tracks m^2 and eps is added to the stored v every step.
fn adamomentum_elem(h: Hyper, i: u32, tensor: u32) {
    let m = h.beta1 * s0[i] + h.omb1 * g[i];
    let v = (h.beta2 * s1[i] + h.omb2 * (m * m)) + h.eps;
    s0[i] = m;
    s1[i] = v;
    if (h.c3 == 0.0) {
        let denom = sqrt(v) / h.c2;
        p[i] = h.decay * p[i] - h.c1 * (m / denom);
    } else if (h.c3 == 1.0) {
        p[i] = h.decay * p[i] - h.c1 * (m / (sqrt(v) + h.eps));
    } else if (h.c3 == 2.0) {
        p[i] = h.decay * p[i] - h.c1 * m;
    } else {
        p[i] = h.decay * p[i];
    }
}

#arena_kernel adamomentum_step adamomentum_elem

// (8.5.4-8.5.7): s0 = m1 (fast), s1 = m2 (slow, not bias-corrected), s2 = v.
fn ademamix_elem(h: Hyper, i: u32, tensor: u32) {
    let gi = g[i];
    let m1 = h.beta1 * s0[i] + h.omb1 * gi;
    let m2 = h.c1 * s1[i] + h.c2 * gi;
    let v = h.beta2 * s2[i] + h.omb2 * (gi * gi);
    s0[i] = m1;
    s1[i] = m2;
    s2[i] = v;
    let denom = sqrt(v) / h.c5 + h.eps;
    let u = (m1 / h.c4 + h.c3 * m2) / denom;
    let p0 = p[i];
    p[i] = p0 - h.lr * (u + h.c6 * p0);
}

#arena_kernel ademamix_step ademamix_elem

// (8.6.2-8.6.3): the variance-reduced gradient, clipped to unit norm per tensor.
fn mars_c(h: Hyper, i: u32, tensor: u32) -> vec4<f32> {
    let gi = g[i];
    let c = (gi - s2[i]) * h.c1 + gi;
    let n = norms[tensor];
    if (n > 1.0) {
        return c / n;
    }
    return c;
}

// MARS-AdamW (8.6.4-8.6.6): s0 = m, s1 = v, s2 = previous gradient.
fn mars_adamw_elem(h: Hyper, i: u32, tensor: u32) {
    let c = mars_c(h, i, tensor);
    let m = h.beta1 * s0[i] + h.omb1 * c;
    let v = h.beta2 * s1[i] + h.omb2 * (c * c);
    s0[i] = m;
    s1[i] = v;
    s2[i] = g[i];
    let denom = (sqrt(v + 1e-15) + h.eps) / h.c3;
    let u = (m / h.c2) / denom;
    let p0 = p[i];
    p[i] = p0 - h.lr * (h.c4 * p0 + u);
}

#arena_kernel mars_adamw_step mars_adamw_elem

// MARS-Lion (8.6.7): s0 = m, s2 = previous gradient.
fn mars_lion_elem(h: Hyper, i: u32, tensor: u32) {
    let c = mars_c(h, i, tensor);
    let m = h.beta1 * s0[i] + h.omb1 * c;
    s0[i] = m;
    s2[i] = g[i];
    let p0 = p[i];
    p[i] = p0 - h.lr * (h.c4 * p0 + sign(m));
}

#arena_kernel mars_lion_step mars_lion_elem
