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

/// Under an adapter's loop budget (llvmpipe stops a shader's loops after 65,535 iterations in all,
/// silently: 70,000 samples of diag(2, 3) came out as 65,535/70,000 of the answer), the samples are
/// summed in several dispatches carrying the sum on: the same bits as one dispatch. Here a budget of
/// 100 (ContextOptions) splits 350 samples into 7; then the real budget with 70,000 samples, exact
/// for a diagonal matrix. Block averaging, one loop over the block per element, is refused past it.
#[test]
fn samples_past_the_adapters_loop_budget_all_count() {
    let small = common::ctx_with(gpuopt::ContextOptions { loop_limit: Some(100), ..Default::default() });
    let ctx = common::ctx();
    let n = 23;
    let mut rng = TestRng::new(5);
    let m = rng.uniforms(n * n, 1.0);
    let a: Vec<f32> = (0..n * n).map(|i| m[i] + m[(i % n) * n + i / n]).collect();
    let run = |c: &gpuopt::Context, samples| {
        hutchinson_diag(c, &Tensor::from_slice(c, &a, &[n, n]).unwrap(), samples, 11).unwrap()
    };
    assert_eq!(run(&small, 350), run(&ctx, 350));
    let d = [2.0f32, 0.0, 0.0, 3.0];
    let got = hutchinson_diag(&ctx, &Tensor::from_slice(&ctx, &d, &[2, 2]).unwrap(), 70_000, 0).unwrap();
    assert_eq!(got, vec![2.0, 3.0]);
    let x = Tensor::from_slice(&small, &[1.0; 300], &[300]).unwrap();
    let out = Tensor::zeros(&small, &[300]).unwrap();
    let e = gpuopt::kernels::hutchinson::block_average(&small, &x, 150, &out).unwrap_err();
    assert!(e.to_string().contains("loop iterations"), "{e}");
    gpuopt::kernels::hutchinson::block_average(&small, &x, 50, &out).unwrap();
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

#[test]
fn block_averaging_matches_cpu_twin_and_the_reference_layouts() {
    use gpuopt::kernels::hutchinson::{block_average, BlockLayout};
    let ctx = common::ctx();
    for &(n, block) in &[(1, 1), (7, 3), (36, 9), (4099, 32), (4099, 4099), (70_001, 9)] {
        let d = gpuopt::parity::TestRng::new(n as u64).normals(n, 1.0);
        let t = gpuopt::Tensor::from_slice(&ctx, &d, &[n]).unwrap();
        let out = gpuopt::Tensor::zeros(&ctx, &[n]).unwrap();
        block_average(&ctx, &t, block, &out).unwrap();
        let got = out.to_vec(&ctx).unwrap();
        let want = gpuopt::reference::hutchinson::block_average(&d, block);
        // Same summation order on both sides; only the final division differs: WGSL allows 2.5 ulp
        // for f32 x / y (lavapipe rounds it correctly, NVIDIA's Vulkan driver does not: 1 ulp seen).
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 2.5 * f32::EPSILON * w.abs(), "n={n} block={block} [{i}]: {g} vs {w}");
        }
    }
    // Known answer: blocks of 3 over [1, -2, 3, -4, 5] → [2, 2, 2, 4.5, 4.5].
    assert_eq!(
        gpuopt::reference::hutchinson::block_average(&[1.0, -2.0, 3.0, -4.0, 5.0], 3),
        vec![2.0, 2.0, 2.0, 4.5, 4.5]
    );
    // The layouts: conv kernels over (kh, kw), rows, fixed lengths, none.
    assert_eq!(BlockLayout::Spatial.block_len(&[8, 3, 3, 3]), Some(9));
    assert_eq!(BlockLayout::Spatial.block_len(&[8, 3]), Some(1));
    assert_eq!(BlockLayout::Rows.block_len(&[8, 5]), Some(5));
    assert_eq!(BlockLayout::Length(32).block_len(&[100]), Some(32));
    assert_eq!(BlockLayout::None.block_len(&[100]), None);
    assert!(block_average(
        &ctx,
        &gpuopt::Tensor::zeros(&ctx, &[4]).unwrap(),
        0,
        &gpuopt::Tensor::zeros(&ctx, &[4]).unwrap()
    )
    .is_err());
}

#[test]
fn averaged_estimate_is_the_block_average_of_the_plain_one() {
    use gpuopt::hvp::{hutchinson_estimate, hutchinson_estimate_averaged, DenseQuadratic};
    let ctx = common::ctx();
    let n = 45;
    let mut rng = gpuopt::parity::TestRng::new(5);
    let x = rng.normals(n * n, 1.0);
    let a: Vec<f32> = (0..n * n).map(|i| 0.5 * (x[i] + x[(i % n) * n + i / n])).collect();
    let mut q = DenseQuadratic::new(&ctx, &a, n).unwrap();
    let plain = hutchinson_estimate(&ctx, &mut q, 4, 11, 0).unwrap();
    let averaged = hutchinson_estimate_averaged(&ctx, &mut q, 4, 11, 0, Some(9)).unwrap();
    assert_eq!(averaged, gpuopt::reference::hutchinson::block_average(&plain, 9));
}
