//! Update rules checked against values worked out here from ALGORITHMS.md in f64, independently of
//! the host-side scalar code that the GPU and CPU paths share. Both backends must agree with them.

mod common;

use gpuopt::optim::{AdaBound, AdamW, Algorithm, Ano, Lion, Mars, OptimizerBuilder, Sgd, Signum, Stepper};

/// Runs `alg` on both backends over the gradient sequence; returns (gpu, cpu) trajectories.
fn run(alg: impl Into<Algorithm>, p0: &[f32], grads: &[Vec<f32>]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let ctx = common::ctx();
    let mut b = OptimizerBuilder::new(alg);
    let id = b.param("p", p0, &[p0.len()], b.default_group()).unwrap();
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    grads
        .iter()
        .map(|g| {
            gpu.write_grad(id, g).unwrap();
            cpu.write_grad(id, g).unwrap();
            gpu.step().unwrap();
            cpu.step().unwrap();
            (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap())
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= rel * w.abs().max(1e-6), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn adamw_two_steps_match_the_formula() {
    let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1);
    let p0 = [1.0f32, -2.0, 0.5];
    let gs = vec![vec![0.5f32, -0.25, 0.0], vec![-1.0f32, 0.5, 2.0]];
    let traj = run(AdamW { lr, beta1: b1, beta2: b2, eps, weight_decay: wd, amsgrad: false }, &p0, &gs);
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    for (t, g) in gs.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..3 {
            let gi = g[i] as f64;
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = (v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
            p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
        }
        let (gpu, cpu) = &traj[t as usize - 1];
        close(gpu, &p, 1e-6, "adamw gpu");
        close(cpu, &p, 1e-6, "adamw cpu");
    }
}

#[test]
fn lion_uses_the_old_momentum_for_the_sign() {
    // Step 1 (g = 1): c = 0.1 > 0, p = -0.1, m1 = 0.01. Step 2 with g = -0.085:
    // c = 0.9 * m1 + 0.1 * g = 0.0005 > 0, so p = -0.2; had c used the NEW m
    // (0.99 * 0.01 + 0.01 * g = 0.00905) it would be 0.9 * 0.00905 - 0.0085 < 0 and p = 0.
    // With g = -0.2 both agree: c < 0, p back to 0.
    let traj = run(
        Lion { lr: 0.1, beta1: 0.9, beta2: 0.99, weight_decay: 0.0, ..Lion::default() },
        &[0.0, 0.0],
        &[vec![1.0, 1.0], vec![-0.085, -0.2]],
    );
    for (gpu, cpu) in &traj[1..] {
        assert_eq!(gpu, &vec![-0.2f32, 0.0]);
        assert_eq!(cpu, gpu);
    }
}

#[test]
fn signum_and_sgd_follow_their_references() {
    // Signum: m1 = 0.1 * g; p = p - lr * sign(m1) (decoupled wd_lh = 0.5): (1 - 0.05) * 1 - 0.1.
    let traj = run(Signum { lr: 0.1, momentum: 0.9, weight_decay: 0.5 }, &[1.0, 1.0, 1.0], &[vec![2.0, -3.0, 0.0]]);
    close(&traj[0].0, &[0.85, 1.05, 0.95], 1e-6, "signum");
    // SGD, L2 decay, dampening 0.5, momentum 0.9: b1 = g + wd p (first step copies), b2 = 0.9 b1 + 0.5 d2.
    let (lr, wd) = (0.1, 0.01);
    let traj = run(
        Sgd { lr, momentum: 0.9, dampening: 0.5, weight_decay: wd, ..Sgd::default() },
        &[1.0],
        &[vec![1.0], vec![1.0]],
    );
    let d1 = 1.0 + wd * 1.0;
    let p1 = 1.0 - lr * d1;
    let d2 = 1.0 + wd * p1;
    let b2 = 0.9 * d1 + 0.5 * d2;
    close(&traj[0].0, &[p1], 1e-6, "sgd step 1");
    close(&traj[1].0, &[p1 - lr * b2], 1e-6, "sgd step 2");
}

#[test]
fn ano_first_step_is_sign_times_magnitude_ratio() {
    // t = 1: m = 0.08 g; v = 0.01 * sign(g^2 - 0) g^2; vhat = v / (1 - 0.99) = g^2;
    // u = |g| sign(m) / sqrt(g^2 + eps) ~ sign(g).
    let (lr, eps) = (0.01, 1e-8);
    let traj = run(Ano { lr, eps, ..Ano::default() }, &[0.0, 0.0], &[vec![0.5, -2.0]]);
    let want: Vec<f64> = [0.5f64, -2.0].iter().map(|g| -lr * g.abs() * g.signum() / (g * g + eps).sqrt()).collect();
    close(&traj[0].0, &want, 1e-5, "ano gpu");
    close(&traj[0].1, &want, 1e-5, "ano cpu");
}

#[test]
fn adabound_clips_the_step_between_its_bounds() {
    // t = 1, gamma = 0.5, final_lr = 0.1: lower = 0.1 (1 - 1/1.5) = 0.0333, upper = 0.1 (1 + 2) = 0.3.
    // step/denom = lr sqrt(bc2)/bc1 / (sqrt(v) + eps) with v = 0.001 g^2: for g = 1e-3 it is huge
    // (clipped to 0.3); for g = 1e3 it is tiny (raised to 0.0333). m = 0.1 g.
    let traj =
        run(AdaBound { lr: 1e-3, gamma: 0.5, final_lr: 0.1, ..AdaBound::default() }, &[0.0, 0.0], &[vec![1e-3, 1e3]]);
    close(&traj[0].0, &[-0.3 * 1e-4, -(0.1 / 3.0) * 100.0], 1e-5, "adabound");
}

#[test]
fn mars_amplifies_the_first_step_and_clips_to_unit_norm() {
    // t = 1, g_prev = 0: c = (1 + gamma beta1/(1 - beta1)) g = (1 + 0.5 * 9) g = 5.5 g; ||c|| = 5.5 * 5 > 1
    // so c = g/||g||; MARS-AdamW's first step then moves each coordinate by ~lr * sign(g).
    let g = vec![3.0f32, -4.0];
    let traj = run(Mars { lr: 0.01, beta1: 0.9, gamma: 0.5, ..Mars::default() }, &[0.0, 0.0], &[g]);
    // m = 0.1 c, v = 0.01 c^2 (beta2 0.99); u = (m / 0.1) / ((sqrt(v + 1e-15) + eps) / sqrt(0.01)) ~ c / |c|
    close(&traj[0].0, &[-0.01, 0.01], 1e-5, "mars");
}

/// Runs `alg` with gradients and Hessian diagonals on both backends.
fn run_hess(alg: impl Into<Algorithm>, p0: &[f32], steps: &[(Vec<f32>, Vec<f32>)]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let ctx = common::ctx();
    let mut b = OptimizerBuilder::new(alg);
    let id = b.param("p", p0, &[p0.len()], b.default_group()).unwrap();
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    steps
        .iter()
        .map(|(g, d)| {
            for opt in [&mut gpu as &mut dyn Stepper, &mut cpu] {
                opt.write_grad(id, g).unwrap();
                opt.write_hess_diag(id, d).unwrap();
                opt.step().unwrap();
            }
            (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap())
        })
        .collect()
}

#[test]
fn adahessian_first_step_divides_by_the_hessian_magnitude() {
    // t = 1, k = 1: m/bc1 = g, sqrt(v/bc2) = |D|, so p = p − lr·(g/(|D| + eps) + wd·p).
    use gpuopt::optim::algorithm::AdaHessian;
    let (lr, eps, wd) = (0.1, 1e-4, 0.01);
    let p0 = [1.0f32, -1.0, 0.5];
    let (g, d) = (vec![0.5f32, -2.0, 1.0], vec![2.0f32, -4.0, 0.0]);
    let traj =
        run_hess(AdaHessian { lr, eps, weight_decay: wd, ..AdaHessian::default() }, &p0, &[(g.clone(), d.clone())]);
    let want: Vec<f64> =
        (0..3).map(|i| p0[i] as f64 - lr * (g[i] as f64 / ((d[i] as f64).abs() + eps) + wd * p0[i] as f64)).collect();
    close(&traj[0].0, &want, 1e-5, "adahessian gpu");
    close(&traj[0].1, &want, 1e-5, "adahessian cpu");
}

#[test]
fn adahessian_power_zero_divides_by_one_plus_eps_even_where_the_hessian_is_zero() {
    // k = 0: the reference's denominator (sqrt(v)^k)/sqrt(bc2)^k + eps is 1 + eps, also where v = 0
    // (torch's 0 ** 0 = 1): an SGD-with-momentum step. (0^0 was taken as 0 here: eps alone, 1e4× too far.)
    use gpuopt::optim::algorithm::AdaHessian;
    let (lr, eps, wd) = (0.05, 1e-4, 0.01);
    let p0 = [1.0f32, -1.0, 0.5];
    let (g, d) = (vec![0.5f32, -2.0, 1.0], vec![2.0f32, 0.0, 0.0]);
    let cfg = AdaHessian { lr, eps, weight_decay: wd, hessian_power: 0.0, ..AdaHessian::default() };
    let traj = run_hess(cfg, &p0, &[(g.clone(), d)]);
    let want: Vec<f64> = (0..3).map(|i| p0[i] as f64 * (1.0 - lr * wd) - lr * g[i] as f64 / (1.0 + eps)).collect();
    close(&traj[0].0, &want, 1e-5, "adahessian k = 0 gpu");
    close(&traj[0].1, &want, 1e-5, "adahessian k = 0 cpu");
}

#[test]
fn sophia_starts_with_sign_steps_then_clips_by_the_hessian() {
    // hess_interval 1: step 1 has h = 0, so ratio = 1 (a sign step); then h = (1 − β2)·D.
    // Step 2: m₂ = β1·m₁ + (1 − β1)·g₂, ratio = min(|m₂| / max(rho·h, eps), 1).
    use gpuopt::optim::algorithm::Sophia;
    let (lr, b1, b2, rho, wd) = (0.01, 0.9, 0.5, 1.0, 0.1);
    let cfg = Sophia { lr, beta1: b1, beta2: b2, rho, weight_decay: wd, hess_interval: 1, ..Sophia::default() };
    let p0 = [1.0f32, 1.0];
    let s1 = (vec![1.0f32, -1.0], vec![0.2f32, 100.0]);
    let s2 = (vec![1.0f32, -1.0], vec![0.0f32, 0.0]);
    let traj = run_hess(cfg, &p0, &[s1, s2]);
    let d = 1.0 - lr * wd;
    let p1: Vec<f64> = vec![d * 1.0 - lr, d * 1.0 + lr];
    close(&traj[0].0, &p1, 1e-6, "sophia step 1");
    let m2: [f64; 2] = [b1 * 0.1 + 0.1, -(b1 * 0.1 + 0.1)];
    let h: [f64; 2] = [(1.0 - b2) * 0.2, (1.0 - b2) * 100.0];
    let p2: Vec<f64> =
        (0..2).map(|i| d * p1[i] - lr * m2[i].signum() * (m2[i].abs() / (rho * h[i])).min(1.0)).collect();
    close(&traj[1].0, &p2, 1e-5, "sophia step 2 gpu");
    close(&traj[1].1, &p2, 1e-5, "sophia step 2 cpu");
}

#[test]
fn sophia_takes_rho_zero_as_its_references_do() {
    // Liuhong99/Sophia and pytorch-optimizer's SophiaH accept rho = 0. sophiag: max(0·h, eps) = eps,
    // so the ratio saturates and the step is a sign step; sophiah: rho is the clip bound, so only
    // the decay moves p.
    use gpuopt::optim::algorithm::{Sophia, SophiaVariant};
    let (lr, wd) = (0.01, 0.1);
    let p0 = [1.0f32, 1.0];
    // A large diagonal: with the default rho (0.04) neither variant saturates at step 2, where rho
    // matters for sophiag (h = 0 at step 1 makes any rho a sign step).
    let s = (vec![0.5f32, -2.0], vec![300.0f32, 400.0]);
    let d = 1.0 - lr * wd;
    let g2 = [d * (d - lr) - lr, d * (d + lr) + lr];
    for (variant, want) in [(SophiaVariant::Sophiag, g2.to_vec()), (SophiaVariant::Sophiah, vec![d * d, d * d])] {
        let cfg = Sophia { lr, rho: 0.0, weight_decay: wd, hess_interval: 1, variant, ..Sophia::default() };
        let traj = run_hess(cfg.clone(), &p0, &[s.clone(), s.clone()]);
        close(&traj[1].0, &want, 1e-6, "rho 0 gpu");
        close(&traj[1].1, &want, 1e-6, "rho 0 cpu");
        let default_rho = run_hess(Sophia { rho: 0.04, ..cfg }, &p0, &[s.clone(), s.clone()]);
        let moved = |t: &[f32]| t.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(moved(&default_rho[1].1) > 1e-4, "{variant:?}: rho 0.04 must give another step");
    }
    assert!(gpuopt::optim::Algorithm::from_name("sophia", &serde_json::json!({"rho": 1e39})).is_err());
    assert!(gpuopt::optim::Algorithm::from_name("sophia", &serde_json::json!({"rho": -0.1})).is_err());
}
