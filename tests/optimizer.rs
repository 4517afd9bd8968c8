//! The optimizer object: groups, dispatch structure, pipeline cache, bad input, the non-finite
//! guard, learning-rate schedules and views.

mod common;

use gpuopt::optim::{AdamW, Algorithm, GroupOptions, Lion, Mars, MarsVariant, OptimizerBuilder, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::{ContextOptions, Error};

fn builder_with(
    alg: impl Into<Algorithm>,
    sizes: &[usize],
    seed: u64,
) -> (OptimizerBuilder, Vec<gpuopt::optim::ParamId>) {
    let mut rng = TestRng::new(seed);
    let mut b = OptimizerBuilder::new(alg);
    let ids = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| b.param(&format!("p{i}"), &rng.uniforms(n, 1.0), &[n], b.default_group()).unwrap())
        .collect();
    (b, ids)
}

#[test]
fn dispatch_count_does_not_grow_with_tensor_count() {
    let ctx = common::ctx();
    for alg in [
        Algorithm::from(AdamW::default()),
        Algorithm::from(Lion::default()),
        Algorithm::from(Mars { variant: MarsVariant::Lion, ..Mars::default() }),
    ] {
        for guard in [false, true] {
            let mut counts = Vec::new();
            for sizes in [vec![100_000], vec![100; 1000]] {
                let (mut b, ids) = builder_with(alg.clone(), &sizes, 1);
                b.guard_non_finite(guard);
                let mut opt = b.build(&ctx).unwrap();
                for (&id, &n) in ids.iter().zip(&sizes) {
                    opt.write_grad(id, &vec![0.1; n]).unwrap();
                }
                opt.step().unwrap();
                counts.push(opt.dispatches_last_step());
            }
            let expected = 1 + usize::from(guard) + if matches!(alg, Algorithm::Mars(_)) { 2 } else { 0 };
            assert_eq!(counts, vec![expected, expected], "{} guard={guard}", alg.name());
        }
    }
}

#[test]
fn pipeline_cache_compiles_each_kernel_once() {
    let ctx = common::own_ctx(); // its own: other tests compiling meanwhile would change the count
    let (b, ids) = builder_with(AdamW::default(), &[10, 20], 2);
    let mut first = b.clone().build(&ctx).unwrap();
    let compiled = ctx.pipelines_compiled();
    assert!(compiled >= 1);
    let mut second = b.build(&ctx).unwrap();
    for opt in [&mut first, &mut second] {
        opt.write_grad(ids[0], &[0.5; 10]).unwrap();
        for t in 0..3 {
            opt.set_lr(gpuopt::optim::GroupId(0), 1e-3 / (t + 1) as f64).unwrap();
            opt.step().unwrap();
        }
    }
    assert_eq!(ctx.pipelines_compiled(), compiled, "a second optimizer, steps and lr changes compile nothing");
}

#[test]
fn groups_apply_their_own_lr_and_decay() {
    let ctx = common::ctx();
    let mut b = OptimizerBuilder::new(Lion { lr: 0.1, weight_decay: 0.5, ..Lion::default() });
    let frozen = b.group(GroupOptions { lr: Some(0.0), weight_decay: None }).unwrap();
    let no_decay = b.group(GroupOptions { lr: None, weight_decay: Some(0.0) }).unwrap();
    let a = b.param("a", &[1.0; 5], &[5], b.default_group()).unwrap();
    let f = b.param("f", &[1.0; 5], &[5], frozen).unwrap();
    let n = b.param("n", &[1.0; 5], &[5], no_decay).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    for id in [a, f, n] {
        opt.write_grad(id, &[1.0; 5]).unwrap();
    }
    opt.step().unwrap();
    // Lion step 1 with m = 0, g = 1: c = 0.1 > 0, so p <- (1 - lr*wd)*p - lr.
    let expect_a = (1.0f32 - (0.1 * 0.5) as f32) - 0.1;
    assert_eq!(opt.read_param(a).unwrap(), vec![expect_a; 5]);
    assert_eq!(opt.read_param(f).unwrap(), vec![1.0; 5]);
    assert_eq!(opt.read_param(n).unwrap(), vec![1.0 - 0.1; 5]);
}

#[test]
fn bad_input_is_an_error_and_loses_nothing() {
    let ctx = common::ctx();
    let (b, ids) = builder_with(AdamW::default(), &[8], 3);
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(ids[0], &[0.25; 8]).unwrap();
    opt.step().unwrap();
    let p = opt.read_param(ids[0]).unwrap();
    let m = opt.read_state(ids[0], "m").unwrap();
    assert!(matches!(opt.write_grad(ids[0], &[1.0; 7]), Err(Error::Shape { .. })));
    assert!(matches!(opt.write_param(ids[0], &[1.0; 9]), Err(Error::Shape { .. })));
    assert!(matches!(opt.set_lr(gpuopt::optim::GroupId(0), f64::NAN), Err(Error::Hyperparameter { .. })));
    assert!(matches!(opt.set_lr(gpuopt::optim::GroupId(7), 0.1), Err(Error::Invalid(_))));
    assert!(matches!(opt.read_state(ids[0], "nope"), Err(Error::Invalid(_))));
    assert!(matches!(opt.read_param(gpuopt::optim::ParamId(5)), Err(Error::Invalid(_))));
    assert_eq!(opt.read_param(ids[0]).unwrap(), p);
    assert_eq!(opt.read_state(ids[0], "m").unwrap(), m);
    assert_eq!(opt.step_count().unwrap(), 1);

    // Builder-time errors.
    let mut b = OptimizerBuilder::new(AdamW { beta2: f64::NAN, ..AdamW::default() });
    b.param("x", &[1.0], &[1], b.default_group()).unwrap();
    assert!(matches!(b.build(&ctx), Err(Error::Hyperparameter { .. })));
    // AdEMAMix's alpha weighs the slow EMA: apple/ml-ademamix refuses a negative one.
    let mut b = OptimizerBuilder::new(gpuopt::optim::AdEMAMix { alpha: -1.0, ..Default::default() });
    b.param("x", &[1.0], &[1], b.default_group()).unwrap();
    assert!(matches!(b.build(&ctx), Err(Error::Hyperparameter { ref name, .. }) if name == "alpha"));
    // AdaBound divides by each group's initial lr: a group starting at lr 0 is refused when it is
    // made (its checkpoint would be refused on load), as a later set_lr(0) is not.
    let mut b = OptimizerBuilder::new(gpuopt::optim::AdaBound::default());
    assert!(matches!(b.group(GroupOptions { lr: Some(0.0), weight_decay: None }), Err(Error::Hyperparameter { .. })));
    assert!(b.group(GroupOptions { lr: Some(1e-4), weight_decay: None }).is_ok());
    let mut b = OptimizerBuilder::new(AdamW::default());
    assert!(matches!(b.param("x", &[1.0; 3], &[2, 2], b.default_group()), Err(Error::Shape { .. })));
    b.param("x", &[1.0], &[1], b.default_group()).unwrap();
    assert!(b.param("x", &[1.0], &[1], b.default_group()).is_err(), "duplicate name");
    assert!(b.group(GroupOptions { lr: Some(f64::INFINITY), weight_decay: None }).is_err());
    assert!(b.param("y", &[1.0], &[1], gpuopt::optim::GroupId(3)).is_err(), "unknown group");
}

#[test]
fn oversized_tensor_is_refused_with_the_limit_named() {
    let ctx = common::ctx_with(ContextOptions { max_binding_bytes: Some(4096), ..Default::default() });
    let mut b = OptimizerBuilder::new(Lion::default());
    b.param("big", &vec![0.0; 2000], &[2000], b.default_group()).unwrap();
    match b.build(&ctx) {
        Err(e @ Error::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("max_storage_buffer_binding_size") && msg.contains("big"), "{msg}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

fn guard_case(bad: f32) {
    let ctx = common::ctx();
    let (mut b, ids) = builder_with(AdamW { weight_decay: 0.1, ..AdamW::default() }, &[300, 5000], 4);
    b.guard_non_finite(true);
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    let mut rng = TestRng::new(8);
    for step in 0..6 {
        let g0 = rng.uniforms(300, 1.0);
        let mut g1 = rng.uniforms(5000, 1.0);
        if step == 2 || step == 3 {
            g1[4321] = bad;
        }
        let before = gpu.read_param(ids[1]).unwrap();
        let m_before = gpu.read_state(ids[1], "m").unwrap();
        for opt in [&mut gpu as &mut dyn Stepper, &mut cpu] {
            opt.write_grad(ids[0], &g0).unwrap();
            opt.write_grad(ids[1], &g1).unwrap();
            opt.step().unwrap();
        }
        let skipped = step == 2 || step == 3;
        assert_eq!(gpu.found_non_finite().unwrap(), skipped, "step {step}");
        assert_eq!(cpu.found_non_finite().unwrap(), skipped);
        if skipped {
            assert_eq!(gpu.read_param(ids[1]).unwrap(), before, "parameters kept");
            assert_eq!(gpu.read_state(ids[1], "m").unwrap(), m_before, "state kept");
        }
    }
    assert_eq!(gpu.step_count().unwrap(), 4);
    assert_eq!(gpu.skipped_steps().unwrap(), 2);
    assert_eq!(cpu.step_count().unwrap(), 4);
    for &id in &ids {
        let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= gpuopt::parity::tolerance(4, *b, 1e-2), "{a} vs {b}");
        }
    }
}

#[test]
fn guard_skips_nan_gradients_and_keeps_state() {
    guard_case(f32::NAN);
}

#[test]
fn guard_skips_infinite_gradients_and_keeps_state() {
    guard_case(f32::NEG_INFINITY);
}

#[test]
fn lr_schedule_matches_the_reference() {
    let ctx = common::ctx();
    let (b, ids) = builder_with(AdamW::default(), &[1000], 5);
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    let mut rng = TestRng::new(9);
    for t in 0..10 {
        let g = rng.uniforms(1000, 1.0);
        let lr = 1e-2 * 0.5f64.powi(t);
        for opt in [&mut gpu as &mut dyn Stepper, &mut cpu] {
            opt.set_lr(gpuopt::optim::GroupId(0), lr).unwrap();
            opt.write_grad(ids[0], &g).unwrap();
            opt.step().unwrap();
        }
    }
    let (x, y) = (gpu.read_param(ids[0]).unwrap(), cpu.read_param(ids[0]).unwrap());
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= gpuopt::parity::tolerance(10, *b, 1e-2), "{a} vs {b}");
    }
    assert_ne!(x, TestRng::new(5).uniforms(1000, 1.0), "parameters moved");
}

#[test]
fn views_point_into_the_arenas_at_aligned_offsets() {
    let ctx = common::ctx();
    let (b, ids) = builder_with(Lion { lr: 0.5, ..Lion::default() }, &[3, 0, 70, 129], 6);
    let mut opt = b.build(&ctx).unwrap();
    for &id in &ids {
        let v = opt.param_view(id).unwrap();
        assert_eq!(v.offset % 256, 0);
        assert_eq!(v.len(), opt.params()[id.0].len());
    }
    assert!(opt.grad_view(ids[1]).unwrap().binding().is_none(), "an empty view has no binding");
    // Write a gradient through the view, as a user's kernel would, then step.
    let gv = opt.grad_view(ids[2]).unwrap();
    let (buffer, offset) = (gv.buffer.clone(), gv.offset);
    ctx.queue().write_buffer(&buffer, offset, bytemuck::cast_slice(&[1.0f32; 70]));
    let before = opt.read_param(ids[2]).unwrap();
    opt.step().unwrap();
    let after = opt.read_param(ids[2]).unwrap();
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(*a, b - 0.5, "Lion moves each coordinate by lr against the gradient's sign");
    }
    assert_eq!(
        opt.read_param(ids[3]).unwrap(),
        TestRng::new(6).uniforms(3 + 70 + 129, 1.0)[73..].to_vec(),
        "zero gradient, no decay: unchanged"
    );
}

/// Every epsilon the kernels add in f32 (and OASIS's floor) must be > 0 and a normal f32: 0, a value
/// that rounds to 0 (1e-46) or to a subnormal (1e-40, which a GPU may flush to 0) gave 0/0 for a zero
/// gradient, and through DASGO's or REG's norms NaN for a whole tensor; 1e39 is Inf in f32. Also
/// AuON's gamma (cosh(γ)² finite in f32) and MARS's gamma (γ·β1/(1 − β1) finite in f32).
#[test]
fn epsilons_and_scales_must_survive_f32() {
    use gpuopt::optim::{AuonConfig, DasgoConfig, OasisConfig, RegConfig, SaniaConfig, ShampooConfig};
    for eps in [0.0, 1e-46, 1e-40, 1e39, f64::NAN] {
        // (JSON has no NaN: the configs below take it.)
        for name in ["adamw", "adabound", "adamomentum", "ademamix", "mars", "ano", "adahessian", "sophia"]
            .into_iter()
            .filter(|_| !eps.is_nan())
        {
            let e = Algorithm::from_name(name, &serde_json::json!({ "eps": eps })).unwrap_err().to_string();
            assert!(e.contains("eps") && e.contains("normal f32"), "{name} eps {eps}: {e}");
        }
        let errs = [
            DasgoConfig { eps, ..Default::default() }.validate(),
            RegConfig { eps, ..Default::default() }.validate(),
            ShampooConfig { diag_eps: eps, ..Default::default() }.validate(),
            ShampooConfig { matrix_eps: eps, ..Default::default() }.validate(),
            OasisConfig::new(1.0, 0.9, eps).validate(),
            SaniaConfig { eps, ..Default::default() }.validate(),
        ];
        for (i, e) in errs.into_iter().enumerate() {
            let e = e.unwrap_err().to_string();
            assert!(e.contains("normal f32"), "config {i}, eps {eps}: {e}");
        }
    }
    // The smallest normal f32 and ordinary values pass.
    for eps in [1.2e-38, 1e-8, 1.0] {
        Algorithm::from_name("adamw", &serde_json::json!({ "eps": eps })).unwrap();
        DasgoConfig { eps, ..Default::default() }.validate().unwrap();
    }
    assert!(AuonConfig { gamma: 45.0, ..Default::default() }.validate().is_err());
    AuonConfig { gamma: 44.0, ..Default::default() }.validate().unwrap();
    // The paper variant has no γ in its cosh: any finite γ > 0 is taken there.
    AuonConfig { gamma: 100.0, variant: gpuopt::optim::AuonVariant::Paper, ..Default::default() }.validate().unwrap();
    let e = Algorithm::from_name("mars", &serde_json::json!({"gamma": 1e38})).unwrap_err().to_string();
    assert!(e.contains("gamma"), "{e}");
}

/// AdaMomentum's `rectify`, against an f64 transcription of the authors' `AdaM3.step` (wyzjack/AdaM3,
/// `DCGAN_BigGAN/src/AdaM3.py`: decoupled decay, eps added to the stored v, the RAdam-style step
/// once N_sma ≥ 5, before it an SGD step or none), on both backends. β2 = 0.9 puts the switch at
/// step 6, inside the 12 steps.
#[test]
fn adamomentum_rectified_follows_the_authors_code() {
    use gpuopt::optim::AdaMomentum;
    let ctx = common::ctx();
    let n = 37;
    let grads: Vec<Vec<f32>> = (0..12).map(|t| TestRng::new(300 + t).normals(n, 1.0)).collect();
    let init = TestRng::new(299).normals(n, 1.0);
    for degenerated_to_sgd in [true, false] {
        let cfg = AdaMomentum {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.1,
            rectify: true,
            degenerated_to_sgd,
        };
        let (lr, b1, b2, eps, wd) = (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
        // The model, in f64.
        let (mut p, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) =
            (init.iter().map(|&x| x as f64).collect(), vec![0.0; n], vec![0.0; n]);
        let mut want = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as f64;
            let (b1t, b2t) = (b1.powf(t), b2.powf(t));
            let n_max = 2.0 / (1.0 - b2) - 1.0;
            let n_sma = n_max - 2.0 * t * b2t / (1.0 - b2t);
            for i in 0..n {
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i] as f64;
                v[i] = b2 * v[i] + (1.0 - b2) * m[i] * m[i] + eps;
                if n_sma >= 5.0 {
                    let r = ((1.0 - b2t) * (n_sma - 4.0) / (n_max - 4.0) * (n_sma - 2.0) / n_sma * n_max
                        / (n_max - 2.0))
                        .sqrt()
                        / (1.0 - b1t);
                    p[i] -= lr * r * m[i] / (v[i].sqrt() + eps);
                } else if degenerated_to_sgd {
                    p[i] -= lr / (1.0 - b1t) * m[i];
                }
            }
            want.push(p.clone());
        }
        for gpu in [true, false] {
            let mut b = OptimizerBuilder::new(cfg.clone());
            let id = b.param("x", &init, &[n], b.default_group()).unwrap();
            let mut opt: Box<dyn Stepper> =
                if gpu { Box::new(b.build(&ctx).unwrap()) } else { Box::new(b.build_cpu().unwrap()) };
            for (t, g) in grads.iter().enumerate() {
                opt.write_grad(id, g).unwrap();
                opt.step().unwrap();
                let got = opt.read_param(id).unwrap();
                for (i, (&x, &w)) in got.iter().zip(&want[t]).enumerate() {
                    // f32 rounding of a few operations per step, compounded over 12 steps.
                    assert!(
                        (x as f64 - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                        "degenerated_to_sgd {degenerated_to_sgd}, gpu {gpu}, step {}, element {i}: {x} vs {w}",
                        t + 1
                    );
                }
            }
        }
    }
}

/// Lion-K's k_p / k_scale given to a map that does not read them are reported (the builders warn),
/// so a misspelt map does not run silently as plain Lion.
#[test]
fn lion_k_reports_settings_its_map_does_not_read() {
    use gpuopt::optim::KMap;
    let unread =
        |k_map, k_p, k_scale| Algorithm::from(Lion { k_map, k_p, k_scale, ..Lion::default() }).unread_settings();
    assert!(unread(KMap::Sign, None, 1.0).is_empty(), "defaults are not reported");
    assert_eq!(unread(KMap::Sign, Some(3.0), 2.0), ["k_p", "k_scale"]);
    assert_eq!(unread(KMap::L2, Some(3.0), 1.0), ["k_p"]);
    assert!(unread(KMap::Lp, Some(3.0), 1.0).is_empty());
    assert_eq!(unread(KMap::Lp, Some(3.0), 0.5), ["k_scale"]);
    assert!(unread(KMap::Tanh, None, 2.0).is_empty());
    assert_eq!(unread(KMap::Relativistic, Some(1.5), 2.0), ["k_p"]);
    assert!(Algorithm::from(AdamW::default()).unread_settings().is_empty());
}
