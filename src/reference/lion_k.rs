//! CPU twin of `shaders/lion_k.wgsl` (Lion-K, ALGORITHMS.md §4.5): the maps in the shader's f32
//! order; the per-tensor norm in f64 (the oracle for the shader's two-pass merge of (max, scaled sum)
//! pairs, which agrees with it to a few ulp).

use super::sgn;
use crate::kernels::arena::Hyper;
use crate::optim::KMap;

/// c = β1·m + (1 − β1)·g (4.5.1).
fn mix(h: &Hyper, m: f32, g: f32) -> f32 {
    h.beta1 * m + h.omb1 * g
}

/// The elementwise maps (`h.c[0]` the [`KMap`] number: Huber, tanh, else relativistic; `h.c[1]` is a
/// or s).
pub fn k_map(h: &Hyper, c: f32) -> f32 {
    let a = h.c[1];
    match h.c[0] as u32 {
        m if m == KMap::Huber as u32 => (c / a).clamp(-1.0, 1.0),
        m if m == KMap::Tanh as u32 => (a * c).clamp(-15.0, 15.0).tanh(),
        _ => {
            let big = c.abs().max(a);
            let (x, y) = (c / big, a / big);
            x / (x * x + y * y).sqrt()
        }
    }
}

/// `lion_k_step` (elementwise maps).
pub fn lion_k_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32]) {
    for i in 0..p.len() {
        let c = mix(h, m[i], g[i]);
        p[i] = h.decay * p[i] - h.lr * k_map(h, c);
        m[i] = h.beta2 * m[i] + h.omb2 * g[i];
    }
}

/// `lion_k_partial` + `lion_k_norm`: (M, S^(1/p)) with M = max |c| and S = Σ (|c| / M)^p, in f64;
/// (0, 0) when c = 0 and NaN in the second component when c holds a NaN.
pub fn lion_k_norm(h: &Hyper, g: &[f32], m: &[f32]) -> (f32, f32) {
    let p = h.c[1] as f64;
    let c: Vec<f64> = g.iter().zip(m).map(|(&gi, &mi)| mix(h, mi, gi).abs() as f64).collect();
    if c.iter().any(|x| x.is_nan()) {
        return (f32::NAN, f32::NAN);
    }
    let big = c.iter().fold(0.0f64, |a, &x| a.max(x));
    if big == 0.0 {
        return (0.0, 0.0);
    }
    let s: f64 = c.iter().map(|&x| (x / big).powf(p)).sum();
    (big as f32, s.powf(1.0 / p) as f32)
}

/// `lion_k_norm_step` (ℓ2 and ℓp maps) with `norm` from [`lion_k_norm`].
pub fn lion_k_norm_step(h: &Hyper, p: &mut [f32], g: &[f32], m: &mut [f32], norm: (f32, f32)) {
    for i in 0..p.len() {
        let c = mix(h, m[i], g[i]);
        let d = if norm.0 != 0.0 {
            let r = (c.abs() / norm.0) / norm.1;
            if h.c[2] == 1.0 {
                sgn(c) * r
            } else {
                sgn(c) * r.powf(h.c[2])
            }
        } else {
            0.0
        };
        p[i] = h.decay * p[i] - h.lr * d;
        m[i] = h.beta2 * m[i] + h.omb2 * g[i];
    }
}
