//! Hutchinson's diagonal estimate: ALGORITHMS.md §6.1's worked examples on both backends, exactness
//! for diagonal matrices, errors within a few standard errors sqrt(Σ_{j≠i} A_ij² / S), and the mean
//! error shrinking like 1/sqrt(S) from S = 16 to S = 1024.

mod common;

use gpuopt::kernels::hutchinson::hutchinson_diag;
use gpuopt::parity::TestRng;
use gpuopt::{reference, Tensor};

fn both(a: &[f32], n: usize, samples: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let ctx = common::ctx();
    let gpu = hutchinson_diag(&ctx, &Tensor::from_slice(&ctx, a, &[n, n]).unwrap(), samples, seed).unwrap();
    (gpu, reference::hutchinson::hutchinson_diag(a, n, samples, seed))
}

#[test]
fn hutchinson_matches_the_worked_examples() {
    let a2 = [2.0, 1.0, 1.0, 3.0];
    for (samples, seed, want) in [(4, 0u64, vec![2.0, 3.0]), (3, 7, vec![5.0 / 3.0, 8.0 / 3.0])] {
        let (g, c) = both(&a2, 2, samples, seed);
        for (x, w) in g.iter().chain(&c).zip(want.iter().chain(&want)) {
            assert!((x - w).abs() <= 2.0 * f32::EPSILON * w.abs(), "N={samples} S={seed}: {g:?} / {c:?} vs {want:?}");
        }
    }
    let a3 = [4.0, 1.0, -2.0, 1.0, 3.0, 0.5, -2.0, 0.5, 5.0];
    let (g, c) = both(&a3, 3, 2, 123);
    assert_eq!(g, vec![3.0, 2.0, 5.0]);
    assert_eq!(c, vec![3.0, 2.0, 5.0]);
}

#[test]
fn hutchinson_is_exact_for_a_diagonal_matrix() {
    let n = 37;
    let mut a = vec![0.0f32; n * n];
    for i in 0..n {
        a[i * n + i] = i as f32 - 10.5;
    }
    let (g, c) = both(&a, n, 5, 99);
    for i in 0..n {
        assert_eq!(g[i], a[i * n + i]);
        assert_eq!(c[i], a[i * n + i]);
    }
}

#[test]
fn hutchinson_errors_follow_the_standard_error() {
    let n = 40;
    let mut rng = TestRng::new(8);
    let mut a = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = rng.uniforms(1, 1.0)[0];
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
    let off = |i: usize| (0..n).filter(|&j| j != i).map(|j| (a[i * n + j] as f64).powi(2)).sum::<f64>();
    let mut mean_err = Vec::new();
    for samples in [16usize, 1024] {
        let (g, c) = both(&a, n, samples, 2024);
        let mut total = 0.0;
        for i in 0..n {
            let se = (off(i) / samples as f64).sqrt();
            let err = (g[i] as f64 - a[i * n + i] as f64).abs();
            assert!(err <= 5.0 * se, "S={samples} i={i}: error {err} > 5 standard errors ({se})");
            assert!((g[i] - c[i]).abs() <= 1e-4 * (1.0 + c[i].abs()), "gpu {} vs cpu {}", g[i], c[i]);
            total += err;
        }
        mean_err.push(total / n as f64);
    }
    // 64x the samples: the mean error should drop ~8x; allow 4x to 16x for sampling noise.
    let ratio = mean_err[0] / mean_err[1];
    assert!((4.0..16.0).contains(&ratio), "mean error {:?}, ratio {ratio}", mean_err);
}

#[test]
fn hutchinson_rejects_bad_input() {
    let ctx = common::ctx();
    assert!(hutchinson_diag(&ctx, &Tensor::zeros(&ctx, &[2, 3]).unwrap(), 4, 0).is_err());
    assert!(hutchinson_diag(&ctx, &Tensor::zeros(&ctx, &[2, 2]).unwrap(), 0, 0).is_err());
    assert!(gpuopt::kernels::hutchinson::check_symmetric(&[1.0, 2.0, 3.0, 4.0], 2).is_err());
    assert!(gpuopt::kernels::hutchinson::check_symmetric(&[1.0, f32::NAN, f32::NAN, 4.0], 2).is_err());
}
