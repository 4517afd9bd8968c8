//! CPU twin of `shaders/sign_momentum.wgsl`, line by line (f32 arithmetic in the shader's order).

use super::sgn;
use crate::kernels::arena::Hyper;

/// `sgd_step`: p ← decay·p − lr·(g + wd·p).
pub fn sgd_step(h: &Hyper, p: &mut [f32], g: &[f32]) {
    for i in 0..p.len() {
        let p0 = p[i];
        let d = g[i] + h.c[0] * p0;
        p[i] = h.decay * p0 - h.lr * d;
    }
}

/// `sgd_momentum_step` with momentum buffer `b`.
pub fn sgd_momentum_step(h: &Hyper, p: &mut [f32], g: &[f32], b: &mut [f32]) {
    for i in 0..p.len() {
        let p0 = p[i];
        let d = g[i] + h.c[0] * p0;
        let mut bi = h.beta1 * b[i] + h.c[1] * d;
        if h.c[2] != 0.0 {
            bi = d;
        }
        let u = if h.c[3] != 0.0 { d + h.beta1 * bi } else { bi };
        b[i] = bi;
        p[i] = h.decay * p0 - h.lr * u;
    }
}

/// `signsgd_step`.
pub fn signsgd_step(h: &Hyper, p: &mut [f32], g: &[f32]) {
    for i in 0..p.len() {
        p[i] = h.decay * p[i] - h.lr * sgn(g[i]);
    }
}

/// `signum_step`.
pub fn signum_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32]) {
    for i in 0..p.len() {
        let mi = h.beta1 * m[i] + h.omb1 * g[i];
        m[i] = mi;
        p[i] = h.decay * p[i] - h.lr * sgn(mi);
    }
}

/// `lion_step`: c from the old m, then m updated.
pub fn lion_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32]) {
    for i in 0..p.len() {
        let c = h.beta1 * m[i] + h.omb1 * g[i];
        p[i] = h.decay * p[i] - h.lr * sgn(c);
        m[i] = h.beta2 * m[i] + h.omb2 * g[i];
    }
}

/// `ano_step` (Ano and Anolog).
pub fn ano_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for i in 0..p.len() {
        let gi = g[i];
        let mi = h.beta1 * m[i] + h.omb1 * gi;
        let v0 = v[i];
        let g2 = gi * gi;
        let vi = h.beta2 * v0 + h.omb2 * (sgn(g2 - v0) * g2);
        let vhat = vi / h.c[0];
        let u = gi.abs() * sgn(mi) / (vhat + h.eps).sqrt();
        m[i] = mi;
        v[i] = vi;
        p[i] = h.decay * p[i] - h.lr * u;
    }
}
