//! CPU twin of `shaders/dasgo.wgsl` (DASGO, ALGORITHMS.md §5.7): the same operations in the same
//! order, so the GPU is held to it at a few ulp (the norm's summation order differs).

use super::muon::lerp_torch;
use crate::optim::dasgo::DasgoParams;

/// One DASGO step of a rows × cols parameter `p` with gradient `g`, column statistics `d` and momentum
/// `m`; returns ‖U‖_F.
pub fn dasgo_step(h: &DasgoParams, p: &mut [f32], g: &[f32], d: &mut [f32], m: &mut [f32]) -> f32 {
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let (bands, band_rows) = (h.bands as usize, h.band_rows as usize);
    // Each band's column sums in row order, then the bands in order (one band: the rows in order).
    let column_sum =
        |j: usize, rows: std::ops::Range<usize>| rows.fold(0.0f32, |s, i| s + g[i * cols + j] * g[i * cols + j]);
    let mut r = vec![0.0f32; cols];
    for (j, (dj, rj)) in d.iter_mut().zip(&mut r).enumerate() {
        let sum = if bands <= 1 {
            column_sum(j, 0..rows)
        } else {
            (0..bands).fold(0.0f32, |s, b| s + column_sum(j, b * band_rows..((b + 1) * band_rows).min(rows)))
        };
        *dj = lerp_torch(*dj, sum, h.omb);
        *rj = 1.0 / (*dj + h.eps).sqrt();
    }
    for (mk, gk) in m.iter_mut().zip(g) {
        *mk = lerp_torch(*mk, *gk, h.omm);
    }
    let u = |k: usize| m[k] * r[k % cols];
    let norm = (0..rows * cols).map(|k| (u(k) as f64).powi(2)).sum::<f64>().sqrt() as f32;
    let scale = h.step / (norm + 1e-16);
    for (k, pk) in p.iter_mut().enumerate() {
        *pk = h.decay * *pk - scale * u(k);
    }
    norm
}
