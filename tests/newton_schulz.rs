//! Newton–Schulz family: NS5 GPU vs CPU (square, wide, tall, batched), the singular-value band the
//! quintic's coefficients promise, the polar factor's accuracy and its non-convergence report.
//!
//! NS5 tolerance: each GEMM result carries a relative error of about sqrt(k)·ε (tests/gemm.rs); the
//! quintic's slope is at most a = 3.44 (at σ → 0) and below 1.2 near its fixed point, and a step is
//! three products, so after s steps the relative Frobenius difference is bounded by about
//! 3·s·3.44·(sqrt(c) + 2)·ε. We assert that bound.

mod common;

use gpuopt::kernels::newton_schulz::{newton_schulz5, polar, NS5_COEFFICIENTS};
use gpuopt::parity::TestRng;
use gpuopt::{reference, Tensor};

fn rel_frobenius(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = y.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

fn ns5_case(b: usize, m: usize, n: usize, steps: usize) {
    let ctx = common::ctx();
    let g = TestRng::new((b * 1000 + m * 10 + n) as u64).uniforms(b * m * n, 1.0);
    let shape: Vec<usize> = if b == 1 { vec![m, n] } else { vec![b, m, n] };
    let t = Tensor::from_slice(&ctx, &g, &shape).unwrap();
    let got = newton_schulz5(&ctx, &t, steps).unwrap();
    let want = reference::newton_schulz::newton_schulz5(&g, b, m, n, steps, NS5_COEFFICIENTS);
    let c = m.max(n) as f64;
    let bound = 3.0 * steps as f64 * 3.4445 * (c.sqrt() + 2.0) * f32::EPSILON as f64;
    for z in 0..b {
        let r = rel_frobenius(&got[z * m * n..(z + 1) * m * n], &want[z * m * n..(z + 1) * m * n]);
        assert!(r <= bound, "{b}x{m}x{n} matrix {z}: relative error {r:e} > {bound:e}");
    }
}

#[test]
fn ns5_matches_reference_square_wide_tall_batched() {
    ns5_case(1, 1, 1, 5);
    ns5_case(1, 7, 3, 5);
    ns5_case(1, 64, 64, 5);
    ns5_case(1, 40, 100, 5);
    ns5_case(1, 100, 40, 5);
    ns5_case(4, 33, 20, 5);
    ns5_case(3, 20, 65, 3);
    // Large enough (m·n·k·batch ≥ PANEL_MIN_WORK) that a CPU adapter's Gram and update products take
    // the panel kernel; the smaller ones above take the 64×64 kernel.
    ns5_case(1, 130, 520, 5);
    ns5_case(6, 100, 150, 3);
    // Whole 64×32 tiles, large enough for the panel kernel: every product writes C itself (addends
    // and, for the wide input, the first step's norm scaling applied as it stores; symmetric ones
    // storing their transposes too), and Xᵀ is read in place. The tall batch runs on its transposed copy.
    ns5_case(1, 256, 512, 5);
    ns5_case(2, 320, 192, 3);
}

/// Singular values of an m×n matrix (m ≥ n) via the f64 eigenvalues of XᵀX.
fn singular_values(x: &[f32], m: usize, n: usize) -> Vec<f64> {
    let xm = nalgebra::DMatrix::from_row_slice(m, n, &x.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let gram = xm.transpose() * &xm;
    let mut s: Vec<f64> = gram.symmetric_eigen().eigenvalues.iter().map(|&e| e.max(0.0).sqrt()).collect();
    s.sort_by(f64::total_cmp);
    s
}

#[test]
fn ns5_singular_values_land_in_the_promised_band() {
    // ALGORITHMS.md §5.1: after 5 steps, inputs with σ/‖G‖_F in [1e-2, 1] land in ≈ [0.68, 1.13].
    let ctx = common::ctx();
    let (m, n) = (96, 48);
    let g = TestRng::new(3).uniforms(m * n, 1.0);
    let gs = singular_values(&g, m, n);
    let fro = reference::newton_schulz::frobenius(&g) as f64;
    assert!(gs[0] / fro >= 1e-2, "test input must lie in the tabulated range: {}", gs[0] / fro);
    let out = newton_schulz5(&ctx, &Tensor::from_slice(&ctx, &g, &[m, n]).unwrap(), 5).unwrap();
    let s = singular_values(&out, m, n);
    let (lo, hi) = (s[0], s[n - 1]);
    assert!(lo >= 0.68 - 0.01 && hi <= 1.13 + 0.01, "singular values in [{lo}, {hi}]");
}

#[test]
fn ns5_of_zero_is_zero_and_bad_input_is_an_error() {
    let ctx = common::ctx();
    let z = Tensor::zeros(&ctx, &[5, 9]).unwrap();
    assert!(newton_schulz5(&ctx, &z, 5).unwrap().iter().all(|&v| v == 0.0));
    assert!(newton_schulz5(&ctx, &Tensor::zeros(&ctx, &[7]).unwrap(), 5).is_err());
    assert!(newton_schulz5(&ctx, &Tensor::zeros(&ctx, &[0, 3]).unwrap(), 5).is_err());
    assert!(newton_schulz5(&ctx, &z, 100).is_err());
}

#[test]
fn polar_factor_is_orthogonal_and_reconstructs() {
    let ctx = common::ctx();
    for (m, n) in [(40, 24), (24, 40), (30, 30)] {
        let a = TestRng::new((m * n) as u64).uniforms(m * n, 1.0);
        let p = polar(&ctx, &Tensor::from_slice(&ctx, &a, &[m, n]).unwrap(), 100).unwrap();
        let q = nalgebra::DMatrix::from_row_slice(m, n, &p.q.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let am = nalgebra::DMatrix::from_row_slice(m, n, &a.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let r = m.min(n);
        // Orthonormal on the short side: QᵀQ = I (tall) or QQᵀ = I (wide). f32 limits this to ~1e-6·sqrt(r).
        let gram = if m >= n { q.transpose() * &q } else { &q * q.transpose() };
        let orth = (gram - nalgebra::DMatrix::<f64>::identity(r, r)).norm();
        assert!(orth <= 1e-4 * (r as f64).sqrt(), "{m}x{n}: ||QtQ - I|| = {orth:e} after {} iterations", p.iters);
        // A = Q·H with H = QᵀA symmetric positive: Q·(QᵀA) ≈ A.
        let back = if m >= n { &q * (q.transpose() * &am) } else { (&am * q.transpose()) * &q };
        let rel = (back - &am).norm() / am.norm();
        assert!(rel <= 1e-4, "{m}x{n}: Q(QtA) vs A relative {rel:e}");
        // The CPU reference takes the same number of iterations, give or take the f32 floor.
        let (_, cpu_iters) = reference::newton_schulz::polar(&a, m, n, 100).unwrap();
        assert!((p.iters as i64 - cpu_iters as i64).abs() <= 2, "gpu {} vs cpu {cpu_iters} iterations", p.iters);
    }
}

#[test]
fn polar_reports_non_convergence() {
    let ctx = common::ctx();
    let a = TestRng::new(5).uniforms(30 * 20, 1.0);
    let err = polar(&ctx, &Tensor::from_slice(&ctx, &a, &[30, 20]).unwrap(), 2).unwrap_err();
    assert!(err.to_string().contains("did not converge"), "{err}");
    assert!(polar(&ctx, &Tensor::zeros(&ctx, &[3, 3]).unwrap(), 10).is_err());
}

#[test]
fn ns5_dispatches_and_its_normalised_copy() {
    use gpuopt::kernels::newton_schulz::Ns5Plan;
    let ctx = common::ctx();
    // Two norm passes, the pass writing X₀ = G/(‖G‖ + ε) (transposed when G is tall), three products
    // per step, and for a tall G the transpose back.
    // Products this small run on a one-dispatch kernel everywhere (a CPU adapter's panel kernel, with
    // its packing and epilogue passes, starts at PANEL_MIN_WORK), so a dispatch is a product.
    use gpuopt::kernels::gemm::{GemmDesc, GemmKernel};
    assert_ne!(GemmKernel::Auto.resolve(&ctx, &GemmDesc::new(20, 20, 20)), GemmKernel::Panel);
    for (shape, steps, extra) in [(vec![3, 8, 20], 5, 1), (vec![20, 8], 5, 2), (vec![16, 16], 1, 1)] {
        let n: usize = shape.iter().product();
        let g = Tensor::from_slice(&ctx, &TestRng::new(4).uniforms(n, 1.0), &shape).unwrap();
        let plan = Ns5Plan::new(&ctx, &g, steps, NS5_COEFFICIENTS).unwrap();
        let mut enc = ctx.encoder("t");
        assert_eq!(plan.record(&mut gpuopt::gpu::compute_pass(&mut enc, "t")), 2 + 3 * steps + extra, "{shape:?}");
    }
    // Zero steps return X₀ = G / (‖G‖_F + 1e-7) itself, through the one remaining copy pass.
    for shape in [vec![2, 3], vec![3, 2]] {
        let g = TestRng::new(5).uniforms(6, 1.0);
        let t = Tensor::from_slice(&ctx, &g, &shape).unwrap();
        let got = newton_schulz5(&ctx, &t, 0).unwrap();
        let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        for (x, v) in got.iter().zip(&g) {
            let want = *v as f64 / (norm + 1e-7);
            assert!((*x as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(1e-3), "{x} vs {want}");
        }
    }
}

/// Finite inputs far from 1 in scale: NS5 normalises before any product, so entries of 1e30 (whose
/// squares overflow f32) and of 1e-30 (whose squares underflow) give the CPU twin's result, on every
/// orientation. (The normalisation once rode on the first product's epilogue, after G·Gᵀ had
/// overflowed: NaN.)
#[test]
fn ns5_of_huge_and_tiny_matrices_matches_reference() {
    let ctx = common::ctx();
    for (m, n) in [(8, 8), (6, 10), (10, 6)] {
        let g0 = TestRng::new(11).uniforms(m * n, 1.0);
        for scale in [1e30f32, 1e20, 1e-20, 1e-30] {
            let g: Vec<f32> = g0.iter().map(|v| v * scale).collect();
            let t = Tensor::from_slice(&ctx, &g, &[m, n]).unwrap();
            let got = newton_schulz5(&ctx, &t, 5).unwrap();
            let want = reference::newton_schulz::newton_schulz5(&g, 1, m, n, 5, NS5_COEFFICIENTS);
            assert!(got.iter().all(|x| x.is_finite()), "{m}x{n} at {scale:e}: non-finite output");
            let r = rel_frobenius(&got, &want);
            assert!(r <= 1e-5, "{m}x{n} at {scale:e}: relative error {r:e}");
        }
    }
}

/// The Frobenius norm passes sum squares in three ranges: matrices of 1e±30s (whose squares overflow or
/// underflow f32) get the f64 norm, and polar (whose (5.4.1) divides by ‖A‖_F alone, no ε) returns
/// the same factor at every scale, on the GPU and the twin. (The GPU norm of 1e-25s was 0: "polar of
/// a zero matrix"; both backends' + 1e-7 then swamped the norm, leaving ~3e-18·A as "converged".)
#[test]
fn norms_and_polar_at_extreme_scales() {
    use gpuopt::kernels::newton_schulz::FrobeniusPlan;
    let ctx = common::ctx();
    let (m, n) = (9, 6);
    let a0 = TestRng::new(41).uniforms(m * n, 1.0);
    let base = polar(&ctx, &Tensor::from_slice(&ctx, &a0, &[m, n]).unwrap(), 100).unwrap().q;
    for scale in [1e-30f32, 1e-25, 1e-12, 1e20, 1e30] {
        let a: Vec<f32> = a0.iter().map(|v| v * scale).collect();
        let t = Tensor::from_slice(&ctx, &a, &[m, n]).unwrap();
        let norms = Tensor::zeros(&ctx, &[1]).unwrap();
        let mut enc = ctx.encoder("t");
        FrobeniusPlan::new(&ctx, &t, None, 1, &norms).unwrap().record(&mut gpuopt::gpu::compute_pass(&mut enc, "t"));
        ctx.submit(enc);
        let want = a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let got = norms.to_vec(&ctx).unwrap()[0] as f64;
        assert!((got - want).abs() <= 1e-6 * want, "{scale:e}: norm {got:e} vs {want:e}");
        let q = polar(&ctx, &t, 100).unwrap().q;
        let (cpu, _) = reference::newton_schulz::polar(&a, m, n, 100).unwrap();
        assert!(rel_frobenius(&q, &base) <= 1e-5, "{scale:e}: gpu polar moved {:e}", rel_frobenius(&q, &base));
        assert!(rel_frobenius(&cpu, &base) <= 1e-5, "{scale:e}: cpu polar moved {:e}", rel_frobenius(&cpu, &base));
    }
}
