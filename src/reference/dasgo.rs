//! CPU twin of `shaders/dasgo.wgsl` (DASGO, ALGORITHMS.md §5.7): the same operations in the same
//! order, so the GPU is held to it at a few ulp (the norm's summation order differs).

use super::muon::lerp_torch;
use crate::optim::dasgo::DasgoParams;

/// Σ_i g_ij² of each column of a rows × cols `g`, in the order of the shaders' banded column sums
/// (DASGO's and REG's, `(bands, rows per band)` from [`crate::optim::dasgo::column_bands`]): one
/// band sums its rows in order; more sum each band's rows in order, then the bands in order.
pub fn column_sums(g: &[f32], rows: usize, cols: usize, (bands, band_rows): (usize, usize)) -> Vec<f32> {
    let sum = |j: usize, rows: std::ops::Range<usize>| rows.fold(0.0f32, |s, i| s + g[i * cols + j] * g[i * cols + j]);
    (0..cols)
        .map(|j| match bands {
            0 | 1 => sum(j, 0..rows),
            _ => (0..bands).fold(0.0f32, |s, b| s + sum(j, b * band_rows..((b + 1) * band_rows).min(rows))),
        })
        .collect()
}

/// One DASGO step of a rows × cols parameter `p` with gradient `g`, column statistics `d` and momentum
/// `m`; returns ‖U‖_F.
pub fn dasgo_step(h: &DasgoParams, p: &mut [f32], g: &[f32], d: &mut [f32], m: &mut [f32]) -> f32 {
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let sums = column_sums(g, rows, cols, (h.bands as usize, h.band_rows as usize));
    let mut r = vec![0.0f32; cols];
    for ((dj, rj), sum) in d.iter_mut().zip(&mut r).zip(sums) {
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
