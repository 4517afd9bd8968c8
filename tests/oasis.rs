//! OASIS and SANIA / PSPS: GPU vs the CPU twin over awkward sizes (one flat vector across several
//! parameters, chunks and dispatch boundaries), against independent f64 implementations of the
//! paper's equations, convergence on problems where the theory applies, checkpoints, bad input.

mod common;

use gpuopt::optim::{
    FlatAlgorithm, FlatOptimizer, OasisConfig, ParamId, SaniaConfig, SaniaPreconditioner, SaniaVariant, Stepper,
};
use gpuopt::parity::TestRng;

const SIZES: &[usize] = &[1, 7, 4099, 70_001];

fn params() -> Vec<(String, Vec<f32>, Vec<usize>)> {
    SIZES.iter().map(|&n| (format!("p{n}"), TestRng::new(n as u64).normals(n, 1.0), vec![n])).collect()
}

fn drive(opt: &mut dyn Stepper, steps: usize, oasis: bool) -> Vec<Vec<f32>> {
    for t in 0..steps {
        for (i, &n) in SIZES.iter().enumerate() {
            let mut rng = TestRng::new((t * 100 + i) as u64 + 7);
            opt.write_grad(ParamId(i), &rng.normals(n, 1.0)).unwrap();
            if oasis {
                // Hessian estimates of either sign (Hutchinson's can be negative): the truncation matters.
                opt.write_hess_diag(ParamId(i), &rng.normals(n, 2.0)).unwrap();
            }
        }
        if !oasis {
            opt.write_loss(0.5 + 0.1 * t as f32).unwrap();
        }
        opt.step().unwrap();
    }
    (0..SIZES.len()).map(|i| opt.read_param(ParamId(i)).unwrap()).collect()
}

fn max_rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f32::max)
}

#[test]
fn gpu_matches_cpu_twin() {
    let ctx = common::ctx();
    let algorithms = [
        FlatAlgorithm::Oasis(OasisConfig::new(0.1, 0.95, 0.05)),
        FlatAlgorithm::Oasis(OasisConfig { weight_decay: 0.1, adaptive: false, ..OasisConfig::new(0.1, 0.9, 0.5) }),
        FlatAlgorithm::Sania(SaniaConfig::default()),
        FlatAlgorithm::Sania(SaniaConfig {
            preconditioner: SaniaPreconditioner::AdagradSqr,
            sqrt_precond: true,
            weight_decay: 0.01,
            lr: 0.5,
            ..Default::default()
        }),
        FlatAlgorithm::Sania(SaniaConfig { variant: SaniaVariant::Psps, ..Default::default() }),
    ];
    for alg in algorithms {
        let oasis = matches!(alg, FlatAlgorithm::Oasis(_));
        let mut gpu = FlatOptimizer::new(&ctx, alg.clone(), &params()).unwrap();
        let mut cpu = FlatOptimizer::cpu(alg.clone(), &params()).unwrap();
        let g = drive(&mut gpu, 12, oasis);
        let c = drive(&mut cpu, 12, oasis);
        // The global sums differ only in summation order (f32 partials on the GPU, f64 on the CPU):
        // a relative change of ~sqrt(n)·ε in η or λ, compounded over 12 steps.
        let r = max_rel(&g, &c);
        assert!(r <= 2e-4, "{alg:?}: GPU vs CPU relative {r:e}");
        let sg = gpu.read_state(ParamId(0), "scalars").unwrap();
        let sc = cpu.read_state(ParamId(0), "scalars").unwrap();
        assert!((sg[2] - sc[2]).abs() <= 1e-4 * sc[2].abs().max(1e-6), "{alg:?}: step scalar {sg:?} vs {sc:?}");
    }
}

/// OASIS in f64 from (6.5.0)–(6.5.6), independent of the library.
fn oasis_f64(a: &[f64], x0: &[f64], lr: f64, beta2: f64, alpha: f64, steps: usize) -> Vec<Vec<f64>> {
    let n = x0.len();
    let (mut w, mut wp, mut gp, mut d) = (x0.to_vec(), vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut eta_prev, mut theta) = (lr, f64::INFINITY);
    let mut out = Vec::new();
    for k in 0..steps {
        let g: Vec<f64> = (0..n).map(|i| a[i] * w[i]).collect();
        for i in 0..n {
            d[i] = if k == 0 { a[i] } else { beta2 * d[i] + (1.0 - beta2) * a[i] };
        }
        let dh: Vec<f64> = d.iter().map(|v| v.abs().max(alpha)).collect();
        let eta = if k == 0 {
            lr
        } else {
            let num = (0..n).map(|i| dh[i] * (w[i] - wp[i]).powi(2)).sum::<f64>().sqrt();
            let den = (0..n).map(|i| (g[i] - gp[i]).powi(2) / dh[i]).sum::<f64>().sqrt();
            let lip = if den > 0.0 { num / (2.0 * den) } else { f64::INFINITY };
            ((1.0 + theta).sqrt() * eta_prev).min(lip)
        };
        theta = if k == 0 { f64::INFINITY } else { eta / eta_prev };
        eta_prev = eta;
        wp = w.clone();
        gp = g.clone();
        for i in 0..n {
            w[i] -= eta * g[i] / dh[i];
        }
        out.push(w.clone());
    }
    out
}

#[test]
fn oasis_matches_the_papers_equations_and_converges_on_a_quadratic() {
    let ctx = common::ctx();
    // f(x) = ½ Σ a_i x_i², exact Hessian diagonal a; the gradient is fed at the current iterate.
    let n = 50;
    let a: Vec<f64> = (0..n).map(|i| 10f64.powf(2.0 * i as f64 / (n - 1) as f64)).collect(); // κ = 100
    let x0: Vec<f64> = TestRng::new(1).normals(n, 1.0).iter().map(|&v| v as f64).collect();
    let (lr, beta2, alpha) = (0.5, 0.9, 1e-3);
    let want = oasis_f64(&a, &x0, lr, beta2, alpha, 30);
    let params = [("x".to_string(), x0.iter().map(|&v| v as f32).collect(), vec![n])];
    let mut opt = FlatOptimizer::new(&ctx, FlatAlgorithm::Oasis(OasisConfig::new(lr, beta2, alpha)), &params).unwrap();
    let hd: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    for (k, w) in want.iter().enumerate() {
        let x = opt.read_param(ParamId(0)).unwrap();
        let g: Vec<f32> = x.iter().zip(&a).map(|(x, a)| x * *a as f32).collect();
        opt.write_grad(ParamId(0), &g).unwrap();
        opt.write_hess_diag(ParamId(0), &hd).unwrap();
        opt.step().unwrap();
        let got = opt.read_param(ParamId(0)).unwrap();
        let err = got.iter().zip(w).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        let scale = w.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-6);
        assert!(err <= 1e-4 * scale + 1e-6, "step {}: max error {err:e} (scale {scale:e})", k + 1);
    }
    // With the exact diagonal of a diagonal quadratic, D̂⁻¹∇f = x: the iterates contract.
    let last = opt.read_param(ParamId(0)).unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm(&last) < 1e-3 * norm(&params[0].1), "OASIS did not converge: {}", norm(&last));
}

#[test]
fn sania_solves_an_interpolating_least_squares_problem() {
    let ctx = common::ctx();
    // f(w) = (1/2m)·‖Xw − y‖² with y = X·w*: f* = 0, the setting of the Polyak step.
    let (m, n) = (40, 10);
    let mut rng = TestRng::new(3);
    let x: Vec<f32> = rng.normals(m * n, 1.0);
    let w_star: Vec<f32> = rng.normals(n, 1.0);
    let y: Vec<f32> = (0..m).map(|i| (0..n).map(|j| x[i * n + j] * w_star[j]).sum()).collect();
    let loss_grad = |w: &[f32]| -> (f32, Vec<f32>) {
        let r: Vec<f32> = (0..m).map(|i| (0..n).map(|j| x[i * n + j] * w[j]).sum::<f32>() - y[i]).collect();
        let f = r.iter().map(|v| v * v).sum::<f32>() / (2 * m) as f32;
        let g = (0..n).map(|j| (0..m).map(|i| x[i * n + j] * r[i]).sum::<f32>() / m as f32).collect();
        (f, g)
    };
    // SANIA's λ = 1 branch (2f > G) takes the whole step g/B; with a square-free (SQR) preconditioner
    // and eps = 1e-8 that step is ~1/|g_i| on small coordinates and this problem diverges (measured:
    // loss 7 → 1e3). The authors' PyTorch SANIA_AdamSQR uses eps = 0.1, which converges; so do the
    // square-root forms and every PSPS form. The test asserts those.
    for (variant, pre, sq, eps) in [
        (SaniaVariant::Sania, SaniaPreconditioner::AdagradSqr, true, 1e-8),
        (SaniaVariant::Sania, SaniaPreconditioner::AdamSqr, false, 0.1),
        (SaniaVariant::Sania, SaniaPreconditioner::AdamSqr, true, 1e-8),
        (SaniaVariant::Psps, SaniaPreconditioner::AdagradSqr, false, 1e-8),
        (SaniaVariant::Psps, SaniaPreconditioner::AdagradSqr, true, 1e-8),
        (SaniaVariant::Psps, SaniaPreconditioner::AdamSqr, false, 1e-8),
    ] {
        let cfg = SaniaConfig { preconditioner: pre, variant, sqrt_precond: sq, eps, ..Default::default() };
        let params = [("w".to_string(), vec![0.0; n], vec![n])];
        let mut opt = FlatOptimizer::new(&ctx, FlatAlgorithm::Sania(cfg), &params).unwrap();
        let f0 = loss_grad(&[0.0; 10]).0;
        let mut f = f0;
        for _ in 0..200 {
            let w = opt.read_param(ParamId(0)).unwrap();
            let (fw, g) = loss_grad(&w);
            f = fw;
            opt.write_grad(ParamId(0), &g).unwrap();
            opt.write_loss(fw).unwrap();
            opt.step().unwrap();
        }
        assert!(f < 1e-6 * f0, "{variant:?} {pre:?} sqrt {sq} eps {eps}: loss {f:e} from {f0:e}");
    }
}

#[test]
fn sania_step_is_the_roots_of_the_quadratic_model() {
    // One step by hand: AdaGrad-SQR on the first step has B = g², so P = g² + eps, s = g/P,
    // G = Σ g²/P ≈ n; with f = G/4: λ = 1 − sqrt(1 − 1/2).
    let ctx = common::ctx();
    let g = vec![0.5f32, -2.0, 4.0];
    let cfg = SaniaConfig { preconditioner: SaniaPreconditioner::AdagradSqr, eps: 1e-8, ..Default::default() };
    let mut opt = FlatOptimizer::new(&ctx, FlatAlgorithm::Sania(cfg), &[("w".into(), vec![1.0; 3], vec![3])]).unwrap();
    let big_g: f64 = g.iter().map(|&v| (v as f64).powi(2) / ((v as f64).powi(2) + 1e-8)).sum();
    opt.write_grad(ParamId(0), &g).unwrap();
    opt.write_loss((big_g / 4.0) as f32).unwrap();
    opt.step().unwrap();
    let lambda = 1.0 - 0.5f64.sqrt();
    let got = opt.read_param(ParamId(0)).unwrap();
    for (gi, wi) in g.iter().zip(&got) {
        let want = 1.0 - lambda * (*gi as f64) / ((*gi as f64).powi(2) + 1e-8);
        assert!((*wi as f64 - want).abs() <= 1e-6, "{wi} vs {want}");
    }
    // A zero gradient takes no step; a negative loss is refused (a NaN one skips the step: below).
    opt.write_grad(ParamId(0), &[0.0; 3]).unwrap();
    opt.write_loss(1.0).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.read_param(ParamId(0)).unwrap(), got);
    assert!(opt.write_loss(-1.0).is_err());
    opt.write_grad(ParamId(0), &g).unwrap();
    assert!(opt.step().is_err(), "a step without its loss is an error");
}

#[test]
fn checkpoint_resumes_bit_identically() {
    let ctx = common::ctx();
    let alg = FlatAlgorithm::Oasis(OasisConfig::new(0.1, 0.95, 0.05));
    let mut a = FlatOptimizer::new(&ctx, alg.clone(), &params()).unwrap();
    drive(&mut a, 4, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oasis.safetensors");
    a.save(&path).unwrap();
    let mut b = FlatOptimizer::new(&ctx, alg.clone(), &params()).unwrap();
    b.load(&path).unwrap();
    assert_eq!(b.step_count().unwrap(), 4);
    let ra = drive(&mut a, 3, true);
    let rb = drive(&mut b, 3, true);
    assert_eq!(ra, rb);
    // The CPU twin takes the GPU's checkpoint.
    let mut c = FlatOptimizer::cpu(alg, &params()).unwrap();
    c.load(&path).unwrap();
    // A SANIA optimizer refuses an OASIS checkpoint and stays as it was.
    let mut s = FlatOptimizer::new(&ctx, FlatAlgorithm::Sania(SaniaConfig::default()), &params()).unwrap();
    assert!(s.load(&path).is_err());
    assert_eq!(s.step_count().unwrap(), 0);
}

#[test]
fn bad_configurations_are_errors() {
    let p = params();
    for alg in [
        FlatAlgorithm::Oasis(OasisConfig::new(0.1, 1.0, 0.05)),
        FlatAlgorithm::Oasis(OasisConfig::new(0.1, 0.9, 0.0)),
        FlatAlgorithm::Oasis(OasisConfig::new(f64::NAN, 0.9, 0.1)),
        FlatAlgorithm::Sania(SaniaConfig { eps: 0.0, ..Default::default() }),
        FlatAlgorithm::Sania(SaniaConfig { beta2: -0.1, ..Default::default() }),
    ] {
        assert!(FlatOptimizer::cpu(alg, &p).is_err());
    }
    let mut o = FlatOptimizer::cpu(FlatAlgorithm::Oasis(OasisConfig::new(0.1, 0.9, 0.1)), &p).unwrap();
    assert!(o.write_grad(ParamId(0), &[1.0, 2.0]).is_err());
    assert!(o.write_loss(1.0).is_err());
    assert!(o.set_lr(gpuopt::optim::GroupId(0), -1.0).is_err());
}

#[test]
fn a_non_finite_sania_loss_skips_the_step() {
    // A diverged forward pass gives a NaN (or infinite) loss with its gradients: the step is
    // skipped and nothing changes; the next finite loss steps. A negative loss stays an error.
    let ctx = common::ctx();
    let alg = FlatAlgorithm::Sania(SaniaConfig::default());
    for mut opt in
        [FlatOptimizer::new(&ctx, alg.clone(), &params()).unwrap(), FlatOptimizer::cpu(alg.clone(), &params()).unwrap()]
    {
        let write_grads = |opt: &mut FlatOptimizer, t: u64| {
            for (i, &n) in SIZES.iter().enumerate() {
                opt.write_grad(ParamId(i), &TestRng::new(t * 10 + i as u64).normals(n, 1.0)).unwrap();
            }
        };
        write_grads(&mut opt, 1);
        opt.write_loss(0.7).unwrap();
        opt.step().unwrap();
        let before: Vec<Vec<f32>> = (0..SIZES.len()).map(|i| opt.read_param(ParamId(i)).unwrap()).collect();
        let b_before = opt.read_state(ParamId(3), "b").unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            write_grads(&mut opt, 2);
            opt.write_loss(bad).unwrap();
            opt.step().unwrap();
            assert!(opt.found_non_finite().unwrap(), "loss {bad}");
            let after: Vec<Vec<f32>> = (0..SIZES.len()).map(|i| opt.read_param(ParamId(i)).unwrap()).collect();
            assert_eq!(after, before, "loss {bad}: a skipped step moved a parameter");
            assert_eq!(opt.read_state(ParamId(3), "b").unwrap(), b_before);
        }
        assert_eq!((opt.step_count().unwrap(), opt.skipped_steps().unwrap()), (1, 2));
        assert!(opt.write_loss(-1.0).is_err());
        write_grads(&mut opt, 3);
        opt.write_loss(0.5).unwrap();
        opt.step().unwrap();
        assert_eq!(opt.step_count().unwrap(), 2);
    }
}

#[test]
fn non_finite_gradients_or_hessian_samples_skip_the_step() {
    // OASIS over the awkward sizes: the shared guard check (a NaN, then an Inf gradient) on both
    // backends; then a NaN Hessian sample, which would otherwise enter D's EMA for good (the
    // shader's truncation keeps NaN rather than flooring it), skips the step too.
    let ctx = common::ctx();
    let alg = FlatAlgorithm::Oasis(OasisConfig::new(0.1, 0.9, 0.5));
    let grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| TestRng::new(n as u64 + 3).normals(n, 1.0)).collect();
    for mut opt in
        [FlatOptimizer::new(&ctx, alg.clone(), &params()).unwrap(), FlatOptimizer::cpu(alg.clone(), &params()).unwrap()]
    {
        for (i, &n) in SIZES.iter().enumerate() {
            opt.write_hess_diag(ParamId(i), &TestRng::new(n as u64 + 5).normals(n, 2.0)).unwrap();
        }
        common::assert_non_finite_skips(&mut opt, &grads, &["d", "w_prev", "g_prev", "scalars"]);
        let before = (opt.read_param(ParamId(1)).unwrap(), opt.read_state(ParamId(1), "d").unwrap());
        let t = opt.step_count().unwrap();
        let mut h = vec![1.0; 7];
        h[3] = f32::NAN;
        opt.write_hess_diag(ParamId(1), &h).unwrap();
        opt.step().unwrap();
        assert!(opt.found_non_finite().unwrap());
        assert_eq!(opt.step_count().unwrap(), t);
        assert_eq!((opt.read_param(ParamId(1)).unwrap(), opt.read_state(ParamId(1), "d").unwrap()), before);
        opt.write_hess_diag(ParamId(1), &[1.0; 7]).unwrap();
        opt.step().unwrap();
        assert_eq!(opt.step_count().unwrap(), t + 1);
    }
}
