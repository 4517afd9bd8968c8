//! CPU twin of `shaders/hessian.wgsl`, line by line.

use super::sgn;
use crate::kernels::arena::Hyper;

/// x^k for x >= 0 as torch's `**`: x^1 = x, x^0 = 1 (also 0^0), 0^k = 0 for k > 0.
fn pow_nonneg(x: f32, k: f32) -> f32 {
    if k == 1.0 {
        x
    } else if k == 0.0 {
        1.0
    } else if x == 0.0 {
        0.0
    } else {
        x.max(1e-30).powf(k)
    }
}

/// `adahessian_step` with this step's diagonal `d`.
pub fn adahessian_step(h: &Hyper, p: &mut [f32], g: &[f32], d: &[f32], m: &mut [f32], v: &mut [f32]) {
    for i in 0..p.len() {
        let mi = h.beta1 * m[i] + h.omb1 * g[i];
        let vi = h.beta2 * v[i] + h.omb2 * (d[i] * d[i]);
        m[i] = mi;
        v[i] = vi;
        let denom = pow_nonneg(vi.sqrt() * h.c[1], h.c[2]) + h.eps;
        let p0 = p[i];
        p[i] = p0 - h.lr * ((mi * h.c[0]) / denom + h.c[3] * p0);
    }
}

/// `sophiag_step`.
pub fn sophiag_step(h: &Hyper, p: &mut [f32], g: &[f32], d: &[f32], m: &mut [f32], hh: &mut [f32]) {
    for i in 0..p.len() {
        let mi = h.beta1 * m[i] + h.omb1 * g[i];
        m[i] = mi;
        let ratio = (mi.abs() / (h.c[0] * hh[i]).max(h.eps)).min(1.0);
        p[i] = h.decay * p[i] - h.lr * (sgn(mi) * ratio);
        if h.c[1] != 0.0 {
            hh[i] = h.beta2 * hh[i] + h.omb2 * d[i];
        }
    }
}

/// `sophiah_step`.
pub fn sophiah_step(h: &Hyper, p: &mut [f32], g: &[f32], d: &[f32], m: &mut [f32], hh: &mut [f32]) {
    for i in 0..p.len() {
        if h.c[1] != 0.0 {
            hh[i] = h.beta2 * hh[i] + h.omb2 * d[i];
        }
        let mi = h.beta1 * m[i] + h.omb1 * g[i];
        m[i] = mi;
        let u = (mi / hh[i].max(h.eps)).max(-h.c[0]).min(h.c[0]);
        p[i] = h.decay * p[i] - h.lr * u;
    }
}
