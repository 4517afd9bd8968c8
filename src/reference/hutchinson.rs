//! CPU twin of `src/kernels/hutchinson.rs`: the same probes (bit-identical Philox), A·z in f64
//! rounded to f32 per element, the f32 sum in sample order, divided by N at the end.

use super::random::rademacher;

/// diag ≈ (1/N)·Σ_k z_k ⊙ (A·z_k) for the n×n matrix `a` (row-major).
pub fn hutchinson_diag(a: &[f32], n: usize, samples: usize, seed: u64) -> Vec<f32> {
    let zs: Vec<Vec<f32>> = (0..samples).map(|k| rademacher(seed, k as u32, 0, 0, n)).collect();
    (0..n)
        .map(|i| {
            let mut acc = 0.0f32;
            for z in &zs {
                let hz: f64 = (0..n).map(|j| a[i * n + j] as f64 * z[j] as f64).sum();
                acc += z[i] * hz as f32;
            }
            acc / samples as f32
        })
        .collect()
}

/// CPU twin of `block_average`: out_i = mean |d_j| over the block of `block` consecutive elements
/// holding i (the last block possibly shorter), summed in f32 in index order.
pub fn block_average(d: &[f32], block: usize) -> Vec<f32> {
    let n = d.len();
    (0..n)
        .map(|i| {
            let start = i / block * block;
            let end = (start + block).min(n);
            let s = d[start..end].iter().fold(0.0f32, |s, v| s + v.abs());
            s / (end - start) as f32
        })
        .collect()
}
