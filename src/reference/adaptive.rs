//! CPU twin of `shaders/adaptive.wgsl` and `shaders/mars_norm.wgsl`, line by line.

use super::sgn;
use crate::kernels::arena::Hyper;

/// AMSGrad / AMSBound: v_max ← max(v_max, v) and use it; without v_max, use v.
fn running_max(v_max: Option<&mut [f32]>, i: usize, v: f32) -> f32 {
    match v_max {
        Some(vm) => {
            vm[i] = vm[i].max(v);
            vm[i]
        }
        None => v,
    }
}

fn adam_param(h: &Hyper, p0: f32, m: f32, v: f32) -> f32 {
    let denom = v.sqrt() / h.c[1] + h.eps;
    h.decay * p0 - h.c[0] * (m / denom)
}

/// `adamw_step`; with `v_max`, `adamw_amsgrad_step`.
pub fn adamw_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], mut v_max: Option<&mut [f32]>) {
    for i in 0..p.len() {
        let gi = g[i];
        let mi = m[i] + h.omb1 * (gi - m[i]);
        let vi = h.beta2 * v[i] + h.omb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        let vd = running_max(v_max.as_deref_mut(), i, vi);
        p[i] = adam_param(h, p[i], mi, vd);
    }
}

/// `adabound_step`; with `v_max`, `amsbound_step`.
pub fn adabound_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], mut v_max: Option<&mut [f32]>) {
    for i in 0..p.len() {
        let p0 = p[i];
        let gi = g[i] + h.c[0] * p0;
        let mi = h.beta1 * m[i] + h.omb1 * gi;
        let vi = h.beta2 * v[i] + h.omb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        let vd = running_max(v_max.as_deref_mut(), i, vi);
        let denom = vd.sqrt() + h.eps;
        let eta = (h.c[1] / denom).max(h.c[2]).min(h.c[3]);
        p[i] = h.decay * p0 - eta * mi;
    }
}

/// `adamomentum_step`.
pub fn adamomentum_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for i in 0..p.len() {
        let mi = h.beta1 * m[i] + h.omb1 * g[i];
        let vi = (h.beta2 * v[i] + h.omb2 * (mi * mi)) + h.eps;
        m[i] = mi;
        v[i] = vi;
        // The update's form, as the shader: c[2] 0 plain, 1 rectified, 2 SGD, 3 none.
        p[i] = match h.c[2] as u32 {
            0 => h.decay * p[i] - h.c[0] * (mi / (vi.sqrt() / h.c[1])),
            1 => h.decay * p[i] - h.c[0] * (mi / (vi.sqrt() + h.eps)),
            2 => h.decay * p[i] - h.c[0] * mi,
            _ => h.decay * p[i],
        };
    }
}

/// `ademamix_step`.
pub fn ademamix_step(h: &Hyper, p: &mut [f32], g: &[f32], m1: &mut [f32], m2: &mut [f32], v: &mut [f32]) {
    for i in 0..p.len() {
        let gi = g[i];
        let a = h.beta1 * m1[i] + h.omb1 * gi;
        let b = h.c[0] * m2[i] + h.c[1] * gi;
        let vi = h.beta2 * v[i] + h.omb2 * (gi * gi);
        m1[i] = a;
        m2[i] = b;
        v[i] = vi;
        let denom = vi.sqrt() / h.c[4] + h.eps;
        let u = (a / h.c[3] + h.c[2] * b) / denom;
        let p0 = p[i];
        p[i] = p0 - h.lr * (u + h.c[5] * p0);
    }
}

/// MARS's c = (g − g_prev)·k + g of one element (8.6.2).
fn mars_c_raw(h: &Hyper, g: f32, g_prev: f32) -> f32 {
    (g - g_prev) * h.c[0] + g
}

/// `mars_partial` + `mars_norm`: ‖c‖₂ of one tensor, accumulated in f64 (the oracle; the shader's
/// two-pass f32 reduction with its split sums agrees to a few ulp wherever the norm exceeds 1, the
/// only case in which its value is used).
pub fn mars_norm(h: &Hyper, g: &[f32], g_prev: &[f32]) -> f32 {
    let s: f64 = g
        .iter()
        .zip(g_prev)
        .map(|(&gi, &gp)| {
            let c = mars_c_raw(h, gi, gp) as f64;
            c * c
        })
        .sum();
    s.sqrt() as f32
}

fn mars_c(h: &Hyper, g: f32, g_prev: f32, norm: f32) -> f32 {
    let c = mars_c_raw(h, g, g_prev);
    if norm > 1.0 {
        c / norm
    } else {
        c
    }
}

/// `mars_adamw_step`; `norm` from [`mars_norm`].
pub fn mars_adamw_step(
    h: &Hyper,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    g_prev: &mut [f32],
    norm: f32,
) {
    for i in 0..p.len() {
        let c = mars_c(h, g[i], g_prev[i], norm);
        let mi = h.beta1 * m[i] + h.omb1 * c;
        let vi = h.beta2 * v[i] + h.omb2 * (c * c);
        m[i] = mi;
        v[i] = vi;
        g_prev[i] = g[i];
        let denom = ((vi + 1e-15).sqrt() + h.eps) / h.c[2];
        let u = (mi / h.c[1]) / denom;
        let p0 = p[i];
        p[i] = p0 - h.lr * (h.c[3] * p0 + u);
    }
}

/// `mars_lion_step`; `norm` from [`mars_norm`].
pub fn mars_lion_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], g_prev: &mut [f32], norm: f32) {
    for i in 0..p.len() {
        let c = mars_c(h, g[i], g_prev[i], norm);
        let mi = h.beta1 * m[i] + h.omb1 * c;
        m[i] = mi;
        g_prev[i] = g[i];
        let p0 = p[i];
        p[i] = p0 - h.lr * (h.c[3] * p0 + sgn(mi));
    }
}
