//! Muon: routing, batching of same-shape matrices, GPU vs CPU parity over 10 steps for every
//! adjust_lr rule and both momentum forms, and a known answer on a rank-one gradient.
//!
//! Tolerance: the momentum arithmetic is the same on both sides; the difference comes from NS5, whose
//! relative error is at most e = 3·s·3.44·(sqrt(c) + 2)·ε (tests/newton_schulz.rs) on an output of
//! Frobenius norm ≤ 1.2·sqrt(r), scaled by lr·ratio per step, plus a rounding of p per step.

mod common;

use gpuopt::optim::{AdjustLr, MuonBuilder, MuonConfig, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::ContextOptions;

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn muon_routes_matrices_and_batches_same_shapes() {
    let ctx = common::ctx();
    let mut b = MuonBuilder::new(MuonConfig::default());
    let w1 = b.param("w1", &[0.1; 12], &[3, 4]).unwrap();
    let w2 = b.param("w2", &[0.1; 12], &[3, 4]).unwrap();
    let conv = b.param("conv", &[0.1; 24], &[2, 3, 2, 2]).unwrap();
    let bias = b.param("bias", &[0.0; 4], &[4]).unwrap();
    let emb = b.param_adamw("emb", &[0.1; 12], &[6, 2]).unwrap();
    use gpuopt::optim::muon::Route;
    assert_eq!([w1, w2, conv].map(|id| b.route(id)), [Some(Route::Muon); 3]);
    assert_eq!([bias, emb].map(|id| b.route(id)), [Some(Route::AdamW); 2]);
    let opt = b.build(&ctx).unwrap();
    assert_eq!(opt.shape_groups(), 2, "w1 and w2 share one batched NS5 chain; conv (2 x 12) has its own");
    assert!((AdjustLr::Original.ratio(12, 3) - 2.0).abs() < 1e-12);
    assert_eq!(AdjustLr::Original.ratio(3, 12), 1.0);
    assert!((AdjustLr::MatchRmsAdamw.ratio(100, 25) - 2.0).abs() < 1e-12);
    assert_eq!(AdjustLr::None.ratio(7, 2), 1.0);
}

#[test]
fn stacks_split_where_one_storage_binding_is_full() {
    // Bindings of 4 KiB hold five 8×24 matrices: seven of them (one in an [8, 2, 3, 4] conv view, and
    // an odd shape between) make two stacks of their shape, and the other shape its own. Before the
    // split, such a build failed: 32 layers of 4096×11008 (5.8 GB) exceed any GPU's binding.
    let ctx = common::ctx_with(ContextOptions { max_binding_bytes: Some(4096), ..Default::default() });
    let shapes: Vec<Vec<usize>> = vec![
        vec![8, 24],
        vec![8, 24],
        vec![5, 7],
        vec![8, 2, 3, 4],
        vec![8, 24],
        vec![8, 24],
        vec![8, 24],
        vec![8, 24],
    ];
    parity_on(&ctx, MuonConfig::default(), &shapes, (23, 4), Some(3));
    // A 3-D parameter's matrices stay in one stack: four 8×24s fill one, [3, 8, 24] cannot join them
    // (4 + 3 members > 5) and opens the next, where one more 8×24 still fits.
    let shapes: Vec<Vec<usize>> = vec![vec![8, 24], vec![8, 24], vec![8, 24], vec![8, 24], vec![3, 8, 24], vec![8, 24]];
    parity_on(&ctx, MuonConfig::default(), &shapes, (29, 3), Some(2));
}

fn parity(config: MuonConfig) {
    let shapes: Vec<Vec<usize>> =
        vec![vec![64, 32], vec![64, 32], vec![17, 40], vec![40, 17], vec![3, 4, 5], vec![10], vec![1, 1]];
    parity_on(&common::ctx(), config, &shapes, (17, 10), None);
}

/// GPU vs CPU twin over `steps` steps from `seed`'s parameters and gradients, each parameter held to
/// its bound; `groups` is the number of batched NS5 chains expected, when given.
fn parity_on(
    ctx: &gpuopt::Context,
    config: MuonConfig,
    shapes: &[Vec<usize>],
    (seed, steps): (u64, usize),
    groups: Option<usize>,
) {
    parity_scaled(ctx, config, shapes, (seed, steps), groups, 1.0);
}

/// [`parity_on`] with gradients drawn from ±`grad_scale`.
fn parity_scaled(
    ctx: &gpuopt::Context,
    config: MuonConfig,
    shapes: &[Vec<usize>],
    (seed, steps): (u64, usize),
    groups: Option<usize>,
    grad_scale: f32,
) {
    let mut rng = TestRng::new(seed);
    let mut b = MuonBuilder::new(config.clone());
    let mut ids = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let n: usize = s.iter().product();
        ids.push(b.param(&format!("p{i}"), &rng.uniforms(n, 0.5), s).unwrap());
    }
    let mut gpu = b.clone().build(ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    if let Some(groups) = groups {
        assert_eq!(gpu.shape_groups(), groups);
    }
    for t in 1..=steps {
        let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s.iter().product(), grad_scale)).collect();
        common::step_both(&mut gpu, &mut cpu, &ids, &grads);
        for (&id, s) in ids.iter().zip(shapes) {
            let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
            let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
            let err = norm(&diff);
            let tol = if s.len() >= 2 {
                // b matrices (a 3-D parameter is a batch), each of Frobenius norm at most 1.2·sqrt(r).
                let (b, rows, cols) = MuonBuilder::matrices(s);
                let (r, c) = (rows.min(cols), rows.max(cols));
                let e = 3.0 * config.ns_steps as f64 * 3.4445 * ((c as f64).sqrt() + 2.0) * f32::EPSILON as f64;
                let step = config.lr * config.adjust_lr.ratio(rows, cols);
                t as f64 * (step * e * 1.2 * ((b * r) as f64).sqrt() + 4.0 * f32::EPSILON as f64 * norm(&y))
            } else {
                // AdamW-routed: the elementwise parity bound (gpuopt::parity::tolerance), in norm.
                gpuopt::parity::tolerance(t, 1.0, 1e-3) as f64 * (y.len() as f64).sqrt()
            };
            assert!(err <= tol, "{config:?} {s:?} step {t}: |gpu - cpu| = {err:e} > {tol:e}");
        }
    }
}

/// Finite gradients whose squares overflow f32 (a loss spike) or underflow: Muon's update is
/// scale-free, and the GPU follows the twin (it once went NaN: NS5's normalisation rode on the
/// first product's epilogue, after G·Gᵀ had overflowed).
#[test]
fn muon_matches_reference_on_huge_and_tiny_gradients() {
    let shapes = vec![vec![24, 16], vec![16, 24], vec![12, 12]];
    for scale in [1e25f32, 1e-25] {
        parity_scaled(&common::ctx(), MuonConfig::default(), &shapes, (21, 4), None, scale);
    }
}

#[test]
fn muon_matches_reference_original_nesterov() {
    parity(MuonConfig { lr: 0.01, momentum: 0.9, weight_decay: 0.1, ..MuonConfig::default() });
}

#[test]
fn muon_matches_reference_match_rms_plain_momentum() {
    parity(MuonConfig {
        lr: 0.005,
        nesterov: false,
        adjust_lr: AdjustLr::MatchRmsAdamw,
        ns_steps: 3,
        ..MuonConfig::default()
    });
}

#[test]
fn muon_matches_reference_no_adjustment() {
    parity(MuonConfig { adjust_lr: AdjustLr::None, weight_decay: 0.05, ..MuonConfig::default() });
}

#[test]
fn muon_rank_one_gradient_known_answer() {
    // g = a·bᵀ has one singular value; NS5 maps σ/‖g‖_F = 1 through φ(x) = 3.4445x − 4.775x³ + 2.0315x⁵
    // five times, so the first step is p = −lr·ratio·φ⁵(1)·(a/|a|)(b/|b|)ᵀ (the momentum only scales g).
    let ctx = common::ctx();
    let (m, n) = (6, 4);
    let a: Vec<f64> = (0..m).map(|i| 1.0 + i as f64).collect();
    let bv: Vec<f64> = (0..n).map(|j| if j % 2 == 0 { 1.0 } else { -2.0 }).collect();
    let g: Vec<f32> = (0..m * n).map(|k| (a[k / n] * bv[k % n]) as f32).collect();
    let mut s = 1.0f64;
    for _ in 0..5 {
        s = 3.4445 * s - 4.775 * s.powi(3) + 2.0315 * s.powi(5);
    }
    let (na, nb) = (a.iter().map(|x| x * x).sum::<f64>().sqrt(), bv.iter().map(|x| x * x).sum::<f64>().sqrt());
    let cfg = MuonConfig::default();
    let ratio = cfg.adjust_lr.ratio(m, n);
    let mut b = MuonBuilder::new(cfg.clone());
    let id = b.param("w", &vec![0.0; m * n], &[m, n]).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(id, &g).unwrap();
    opt.step().unwrap();
    let p = opt.read_param(id).unwrap();
    for k in 0..m * n {
        let want = -cfg.lr * ratio * s * (a[k / n] / na) * (bv[k % n] / nb);
        assert!((p[k] as f64 - want).abs() <= 1e-5 * want.abs().max(1e-3), "{k}: {} vs {want}", p[k]);
    }
}

#[test]
fn muon_bad_input_is_an_error() {
    let ctx = common::ctx();
    assert!(MuonBuilder::new(MuonConfig { momentum: 1.0, ..MuonConfig::default() }).build(&ctx).is_err());
    assert!(MuonBuilder::new(MuonConfig { lr: f64::NAN, ..MuonConfig::default() }).build(&ctx).is_err());
    let mut b = MuonBuilder::new(MuonConfig::default());
    assert!(b.param("w", &[0.0; 5], &[2, 3]).is_err());
    let w = b.param("w", &[0.0; 6], &[2, 3]).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    assert!(opt.write_grad(w, &[0.0; 5]).is_err());
    assert!(opt.set_lr(gpuopt::optim::GroupId(0), f64::INFINITY).is_err());
    assert!(opt.load(std::path::Path::new("/nonexistent/muon.safetensors")).is_err());
}

fn muon_builder(seed: u64) -> (MuonBuilder, Vec<gpuopt::optim::ParamId>, Vec<Vec<usize>>) {
    muon_builder_with(seed, MuonConfig { lr: 0.01, weight_decay: 0.05, ..MuonConfig::default() })
}

fn muon_builder_with(seed: u64, config: MuonConfig) -> (MuonBuilder, Vec<gpuopt::optim::ParamId>, Vec<Vec<usize>>) {
    let shapes: Vec<Vec<usize>> = vec![vec![12, 8], vec![12, 8], vec![5, 9], vec![9], vec![4, 3]];
    let mut rng = TestRng::new(seed);
    let mut b = MuonBuilder::new(config);
    let mut ids = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let data = rng.uniforms(s.iter().product(), 0.5);
        ids.push(if i == 4 {
            b.param_adamw(&format!("p{i}"), &data, s).unwrap()
        } else {
            b.param(&format!("p{i}"), &data, s).unwrap()
        });
    }
    (b, ids, shapes)
}

fn feed(opt: &mut dyn Stepper, ids: &[gpuopt::optim::ParamId], shapes: &[Vec<usize>], rng: &mut TestRng, steps: usize) {
    for _ in 0..steps {
        for (&id, s) in ids.iter().zip(shapes) {
            opt.write_grad(id, &rng.uniforms(s.iter().product(), 1.0)).unwrap();
        }
        opt.step().unwrap();
    }
}

/// torch.optim.Muon's `ns_coefficients` (ALGORITHMS.md §11.1): the classical cubic (1.5, −0.5, 0)
/// instead of Keller's quintic changes the step, GPU and twin alike.
#[test]
fn ns_coefficients_are_used() {
    let cubic = MuonConfig { ns_coefficients: [1.5, -0.5, 0.0], ns_steps: 8, ..MuonConfig::default() };
    parity(cubic.clone());
    let run = |config: MuonConfig| {
        let (b, ids, shapes) = muon_builder_with(3, config);
        let mut opt = b.build(&common::ctx()).unwrap();
        feed(&mut opt, &ids, &shapes, &mut TestRng::new(5), 1);
        opt.read_param(ids[0]).unwrap()
    };
    let (a, b) = (run(cubic), run(MuonConfig { ns_steps: 8, ..MuonConfig::default() }));
    let moved: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).abs()).sum();
    assert!(moved > 1e-4, "ns_coefficients changed nothing ({moved:e})");
    for bad in [[f64::NAN, 0.0, 0.0], [1e39, 0.0, 0.0]] {
        let config = MuonConfig { ns_coefficients: bad, ..MuonConfig::default() };
        assert!(MuonBuilder::new(config).build(&common::ctx()).is_err(), "{bad:?}");
    }
}

/// A checkpoint taken under other NS5 settings (steps, coefficients) restores them: the GPU's NS5
/// chains are planned again (they held the builder's settings while the config said otherwise).
#[test]
fn restore_replans_ns5_settings() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muon.safetensors");
    let saved = MuonConfig { ns_steps: 3, ns_coefficients: [2.0, -1.5, 0.5], lr: 0.01, ..MuonConfig::default() };
    let (b, ids, shapes) = muon_builder_with(1, saved);
    let mut straight = b.clone().build(&ctx).unwrap();
    feed(&mut straight, &ids, &shapes, &mut TestRng::new(9), 6);
    let mut first = b.build(&ctx).unwrap();
    let mut rng = TestRng::new(9);
    feed(&mut first, &ids, &shapes, &mut rng, 3);
    first.save(&path).unwrap();
    let (other, _, _) = muon_builder_with(1, MuonConfig::default());
    let mut resumed = other.build(&ctx).unwrap();
    resumed.load(&path).unwrap();
    feed(&mut resumed, &ids, &shapes, &mut rng, 3);
    for &id in &ids {
        assert_eq!(straight.read_param(id).unwrap(), resumed.read_param(id).unwrap());
    }
}

#[test]
fn muon_checkpoint_resume_is_bit_identical_and_portable() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muon.safetensors");
    let (b, ids, shapes) = muon_builder(1);
    let mut straight = b.clone().build(&ctx).unwrap();
    feed(&mut straight, &ids, &shapes, &mut TestRng::new(9), 8);

    let mut first = b.build(&ctx).unwrap();
    let mut rng = TestRng::new(9);
    feed(&mut first, &ids, &shapes, &mut rng, 4);
    first.save(&path).unwrap();
    let (b2, _, _) = muon_builder(2);
    let mut resumed = b2.clone().build(&ctx).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(resumed.step_count().unwrap(), 4);
    feed(&mut resumed, &ids, &shapes, &mut rng, 4);
    for &id in &ids {
        assert_eq!(straight.read_param(id).unwrap(), resumed.read_param(id).unwrap());
    }
    // The same file restores the CPU reference to the same state.
    let mut cpu = b2.build_cpu().unwrap();
    cpu.load(&path).unwrap();
    assert_eq!(first.snapshot().unwrap(), cpu.snapshot().unwrap());
    // Another model's checkpoint is refused and changes nothing.
    let before = resumed.snapshot().unwrap();
    let mut other = MuonBuilder::new(MuonConfig::default());
    other.param("x", &[0.0; 6], &[2, 3]).unwrap();
    let mut other = other.build(&ctx).unwrap();
    other.save(&dir.path().join("other.safetensors")).unwrap();
    assert!(resumed.load(&dir.path().join("other.safetensors")).is_err());
    assert_eq!(resumed.snapshot().unwrap(), before);
}

#[test]
fn non_finite_gradients_skip_the_whole_step_and_keep_every_state() {
    // Two stacked matrices, a conv kernel and an AdamW bias: a NaN or Inf in any of them (the bias
    // included: its AdamW must not step either) skips the step for all, on the GPU and the twin.
    let ctx = common::ctx();
    let mut rng = TestRng::new(61);
    let shapes: [&[usize]; 4] = [&[6, 8], &[6, 8], &[4, 2, 3], &[5]];
    let mut b = MuonBuilder::new(MuonConfig::default());
    for (i, s) in shapes.iter().enumerate() {
        b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
    }
    let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s.iter().product(), 1.0)).collect();
    let states = ["momentum_buffer", "m", "v"];
    common::assert_non_finite_skips(&mut b.clone().build(&ctx).unwrap(), &grads, &states);
    common::assert_non_finite_skips(&mut b.build_cpu().unwrap(), &grads, &states);
}

/// KellerJordan/Muon's `muon_update` (ALGORITHMS.md §5.2): a 3-D parameter is a batch of matrices,
/// each orthogonalised and lr-scaled on its own (so it steps exactly as its slices would as 2-D
/// parameters, which stack into the same chain); a 4-D conv kernel is one out × (in·kh·kw) matrix
/// (so it steps as that 2-D matrix). Bit for bit, GPU and twin.
#[test]
fn three_d_parameters_are_batches_and_conv_kernels_are_flattened() {
    let ctx = common::ctx();
    let config = MuonConfig {
        lr: 0.05,
        weight_decay: 0.1,
        adjust_lr: gpuopt::optim::muon::AdjustLr::MatchRmsAdamw,
        ..MuonConfig::default()
    };
    let mut rng = TestRng::new(17);
    let (batch, conv) = (rng.uniforms(3 * 6 * 4, 0.5), rng.uniforms(4 * 2 * 3 * 3, 0.5));
    let grads: Vec<(Vec<f32>, Vec<f32>)> = (0..4).map(|_| (rng.uniforms(72, 1.0), rng.uniforms(72, 1.0))).collect();
    let mut joint = MuonBuilder::new(config.clone());
    let b3 = joint.param("experts", &batch, &[3, 6, 4]).unwrap();
    let c4 = joint.param("conv", &conv, &[4, 2, 3, 3]).unwrap();
    let mut apart = MuonBuilder::new(config.clone());
    let slices: Vec<_> =
        (0..3).map(|z| apart.param(&format!("e{z}"), &batch[z * 24..(z + 1) * 24], &[6, 4]).unwrap()).collect();
    let flat = apart.param("conv", &conv, &[4, 18]).unwrap();
    let run = |joint: &mut dyn Stepper, apart: &mut dyn Stepper| {
        for (gb, gc) in &grads {
            joint.write_grad(b3, gb).unwrap();
            joint.write_grad(c4, gc).unwrap();
            for (z, &id) in slices.iter().enumerate() {
                apart.write_grad(id, &gb[z * 24..(z + 1) * 24]).unwrap();
            }
            apart.write_grad(flat, gc).unwrap();
            joint.step().unwrap();
            apart.step().unwrap();
        }
        let pieces: Vec<f32> = slices.iter().flat_map(|&id| apart.read_param(id).unwrap()).collect();
        assert_eq!(joint.read_param(b3).unwrap(), pieces);
        assert_eq!(joint.read_param(c4).unwrap(), apart.read_param(flat).unwrap());
        let momenta: Vec<f32> =
            slices.iter().flat_map(|&id| apart.read_state(id, "momentum_buffer").unwrap()).collect();
        assert_eq!(joint.read_state(b3, "momentum_buffer").unwrap(), momenta);
    };
    let (mut jg, mut ag) = (joint.clone().build(&ctx).unwrap(), apart.clone().build(&ctx).unwrap());
    assert_eq!(jg.shape_groups(), 2, "the three 6x4 matrices in one chain, the conv kernel in another");
    run(&mut jg, &mut ag);
    run(&mut joint.build_cpu().unwrap(), &mut apart.build_cpu().unwrap());
}
