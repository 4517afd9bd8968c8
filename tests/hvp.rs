//! Hessian-vector products and the generic Hutchinson estimate.
//!
//! Finite-difference tolerance (ALGORITHMS.md §6.2): with ε = u^{1/3}·(1 + ‖w‖_∞)/‖v‖_∞ the error is
//! about ε²/6·‖∇³f‖ + u·‖∇f‖/ε ≈ u^{2/3}·(‖∇³f‖/6 + ‖∇f‖) ≈ 1.5e-5 × O(1) for the small logistic problem
//! below (features and weights of order 1); we allow 1e-3·‖Hv‖ + 1e-4.

mod common;

use gpuopt::hvp::{hutchinson_estimate, DenseQuadratic, FiniteDifference, HessianVectorProduct};
use gpuopt::parity::TestRng;
use gpuopt::Tensor;

fn symmetric(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = TestRng::new(seed);
    let mut a = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = rng.uniforms(1, 1.0)[0];
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
    a
}

#[test]
fn generic_estimate_with_the_dense_quadratic_matches_the_batched_one() {
    let ctx = common::ctx();
    let n = 33;
    let a = symmetric(n, 3);
    let mut q = DenseQuadratic::new(&ctx, &a, n).unwrap();
    let generic = hutchinson_estimate(&ctx, &mut q, 20, 77, 0).unwrap();
    let batched =
        gpuopt::kernels::hutchinson::hutchinson_diag(&ctx, &Tensor::from_slice(&ctx, &a, &[n, n]).unwrap(), 20, 77)
            .unwrap();
    let cpu = gpuopt::reference::hutchinson::hutchinson_diag(&a, n, 20, 77);
    for i in 0..n {
        assert!(
            (generic[i] - batched[i]).abs() <= 1e-5 * (1.0 + batched[i].abs()),
            "{i}: {} vs {}",
            generic[i],
            batched[i]
        );
        assert!((generic[i] - cpu[i]).abs() <= 1e-5 * (1.0 + cpu[i].abs()));
    }
    assert!(DenseQuadratic::new(&ctx, &[1.0, 2.0, 0.0, 1.0], 2).is_err(), "non-symmetric refused");
}

/// ∇f(w) = A·w of the quadratic f(w) = ½wᵀAw (n × n row-major `a`), summed in f64.
fn quadratic_grad(a: &[f32], n: usize) -> impl Fn(&[f32], &mut [f32]) -> gpuopt::Result<()> + Copy + '_ {
    move |w, out| {
        for i in 0..n {
            out[i] = (0..n).map(|j| a[i * n + j] as f64 * w[j] as f64).sum::<f64>() as f32;
        }
        Ok(())
    }
}

#[test]
fn finite_differences_are_exact_on_a_quadratic() {
    // ∇f(w) = A·w; the central difference of a quadratic has no truncation error, so with ε = 1
    // only rounding remains.
    let n = 9;
    let a = symmetric(n, 5);
    let mut fd = FiniteDifference::new(TestRng::new(1).uniforms(n, 1.0), quadratic_grad(&a, n), Some(1.0));
    let v = TestRng::new(2).uniforms(n, 1.0);
    let hv = fd.hvp_host(&v).unwrap();
    for i in 0..n {
        let want: f64 = (0..n).map(|j| a[i * n + j] as f64 * v[j] as f64).sum();
        assert!((hv[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{i}: {} vs {want}", hv[i]);
    }
}

/// Edge directions and steps (found by an audit): v = 0 gives H·0 = 0 (it divided 0 by 0), a tiny v
/// no longer overflows ε to Inf (ε·v stays finite), and an ε override of 0 or NaN is an error.
#[test]
fn finite_differences_at_the_edges_are_finite_or_refused() {
    let n = 3;
    let a = symmetric(n, 7);
    let grad = quadratic_grad(&a, n);
    let w = vec![5000.0, -3.0, 1.0];
    let mut fd = FiniteDifference::new(w.clone(), grad, None);
    assert_eq!(fd.hvp_host(&[0.0; 3]).unwrap(), vec![0.0; 3]);
    let eps = gpuopt::hvp::central_difference_eps(&w, &[1e-38, 0.0, 0.0]);
    assert!(eps.is_finite() && eps > 0.0, "{eps}");
    // H·v for a tiny v is H's first column times 1e-38 (it came out as 0 when ε overflowed).
    for tiny in [1e-38f32, 1e-37] {
        let hv = fd.hvp_host(&[tiny, 0.0, 0.0]).unwrap();
        for i in 0..n {
            let want = a[i * n] as f64 * tiny as f64;
            assert!((hv[i] as f64 - want).abs() <= 1e-3 * want.abs() + 1e-45, "{tiny}: {i}: {} vs {want}", hv[i]);
        }
    }
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let mut fd = FiniteDifference::new(w.clone(), grad, Some(bad));
        let e = fd.hvp_host(&[1.0, 0.0, 0.0]).unwrap_err();
        assert!(e.to_string().contains("eps"), "{bad}: {e}");
    }
}

#[test]
fn finite_differences_match_the_exact_logistic_hessian() {
    // Binary logistic regression (§6.2 (b)): H·v = (1/n)·Xᵀ(s ⊙ (X·v)) + λ·v, s = σ(z)·σ(−z).
    let (n, d, lambda) = (50usize, 6usize, 0.01f64);
    let mut rng = TestRng::new(9);
    let x = rng.uniforms(n * d, 1.0);
    let y: Vec<f64> = rng.uniforms(n, 1.0).iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
    let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
    let grad = |w: &[f32], out: &mut [f32]| {
        let mut g = vec![0.0f64; d];
        for i in 0..n {
            let z: f64 = (0..d).map(|j| x[i * d + j] as f64 * w[j] as f64).sum();
            let r = sigma(z) - y[i];
            for j in 0..d {
                g[j] += r * x[i * d + j] as f64 / n as f64;
            }
        }
        for j in 0..d {
            out[j] = (g[j] + lambda * w[j] as f64) as f32;
        }
        Ok(())
    };
    let w = rng.uniforms(d, 1.0);
    let v: Vec<f32> = gpuopt::reference::random::rademacher(3, 0, 0, 0, d);
    let mut fd = FiniteDifference::new(w.clone(), grad, None);
    let ctx = common::ctx();
    // Through the GPU-facing trait, as an estimator would call it.
    let (vt, out) = (Tensor::from_slice(&ctx, &v, &[d]).unwrap(), Tensor::zeros(&ctx, &[d]).unwrap());
    fd.hvp(&ctx, &vt, &out).unwrap();
    let hv = out.to_vec(&ctx).unwrap();
    let mut exact = vec![0.0f64; d];
    for i in 0..n {
        let z: f64 = (0..d).map(|j| x[i * d + j] as f64 * w[j] as f64).sum();
        let s = sigma(z) * sigma(-z);
        let xv: f64 = (0..d).map(|j| x[i * d + j] as f64 * v[j] as f64).sum();
        for j in 0..d {
            exact[j] += s * xv * x[i * d + j] as f64 / n as f64;
        }
    }
    let norm = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
    for j in 0..d {
        let want = exact[j] + lambda * v[j] as f64;
        assert!((hv[j] as f64 - want).abs() <= 1e-3 * norm + 1e-4, "{j}: {} vs {want}", hv[j]);
    }
}

#[test]
fn softmax_regression_hvp_is_exact_and_finite_differences_agree() {
    use gpuopt::hvp::softmax::{softmax_hvp_f64, SoftmaxRegression};
    let ctx = common::ctx();
    let (n, d, k, lambda) = (120usize, 7usize, 4usize, 0.01f32);
    let mut rng = TestRng::new(12);
    let x = rng.uniforms(n * d, 1.0);
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % k) as u32).collect();
    let w = rng.uniforms(d * k, 0.5);
    let mut model = SoftmaxRegression::new(&ctx, &x, &labels, n, d, k, lambda).unwrap();
    model.set_weights(&w).unwrap();
    let v = gpuopt::reference::random::rademacher(5, 0, 0, 0, d * k);
    let (vt, out) = (Tensor::from_slice(&ctx, &v, &[d * k]).unwrap(), Tensor::zeros(&ctx, &[d * k]).unwrap());
    model.hvp(&ctx, &vt, &out).unwrap();
    let hv = out.to_vec(&ctx).unwrap();
    let exact = softmax_hvp_f64(&x, &w, &v, (n, d, k), lambda as f64);
    let norm = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
    // Three f32 products over at most n terms: relative error ~ sqrt(n)·ε.
    for j in 0..d * k {
        assert!((hv[j] as f64 - exact[j]).abs() <= 16.0 * (n as f64).sqrt() * f32::EPSILON as f64 * norm, "{j}");
    }
    // Central differences of the GPU gradient (ε from §6.2) agree with the exact product.
    let grad = |wv: &[f32], g: &mut [f32]| -> gpuopt::Result<()> {
        model.set_weights(wv)?;
        g.copy_from_slice(&model.loss_and_grad()?.1);
        Ok(())
    };
    let mut fd = FiniteDifference::new(w.clone(), grad, None);
    let fdv = fd.hvp_host(&v).unwrap();
    for j in 0..d * k {
        assert!((fdv[j] as f64 - exact[j]).abs() <= 1e-3 * norm + 1e-4, "{j}: fd {} vs exact {}", fdv[j], exact[j]);
    }
}

#[test]
fn softmax_regression_gradient_matches_finite_differences_of_the_loss() {
    use gpuopt::hvp::softmax::SoftmaxRegression;
    let ctx = common::ctx();
    let (n, d, k) = (60usize, 5usize, 3usize);
    let mut rng = TestRng::new(21);
    let x = rng.uniforms(n * d, 1.0);
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let w = rng.uniforms(d * k, 0.5);
    let mut model = SoftmaxRegression::new(&ctx, &x, &labels, n, d, k, 0.05).unwrap();
    model.set_weights(&w).unwrap();
    let (_, g) = model.loss_and_grad().unwrap();
    for j in [0, 4, d * k - 1] {
        let h = 1e-2f32;
        let mut wp = w.clone();
        wp[j] += h;
        model.set_weights(&wp).unwrap();
        let lp = model.loss_and_grad().unwrap().0;
        wp[j] -= 2.0 * h;
        model.set_weights(&wp).unwrap();
        let lm = model.loss_and_grad().unwrap().0;
        let fd = (lp - lm) / (2.0 * h);
        assert!((fd - g[j]).abs() <= 2e-3, "{j}: fd {fd} vs grad {}", g[j]);
    }
    assert!(SoftmaxRegression::new(&ctx, &x, &vec![9; n], n, d, k, 0.0).is_err(), "labels out of range");
    // No examples: said so (it failed later, on an infinite 1/n in a GEMM's alpha).
    let e = SoftmaxRegression::new(&ctx, &[], &[], 0, d, k, 0.0).err().expect("n = 0 is refused");
    assert!(e.to_string().contains("n >= 1"), "{e}");
}
