//! AuON and Hybrid-AuON: GPU vs CPU parity for both variants, the skip-at-zero rule, and a known
//! answer worked out from the paper's equations.
//!
//! Tolerance per step: the update lr·x/(rms + 1e-8) differs by the relative error of x (NS5's bound
//! 3·s·3.44·(sqrt(c) + 2)·ε for Hybrid, exact otherwise) plus that of the two reductions and cosh
//! (a few ulp per element, summed pairwise: 32ε), and p is rounded once more (4ε·‖p‖).

mod common;

use gpuopt::optim::{AuonBuilder, AuonConfig, AuonVariant, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::ContextOptions;

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn parity(config: AuonConfig, hybrid: bool) {
    parity_on(&common::ctx(), config, hybrid, None);
}

/// GPU vs CPU twin over 10 steps on stacks: three 40×24 matrices (one of them a [40, 4, 6] view),
/// two 7-vectors and two 8-vectors (one of each with zero gradients: the scalar and the vec4
/// update's zero-norm branch), single and empty tensors; `chains` is the number of stacks
/// expected, when given.
fn parity_on(ctx: &gpuopt::Context, config: AuonConfig, hybrid: bool, chains: Option<usize>) {
    let shapes: Vec<Vec<usize>> = vec![
        vec![40, 24],
        vec![24, 40],
        vec![7],
        vec![40, 4, 6],
        vec![3, 4, 5],
        vec![1],
        vec![7],
        vec![0],
        vec![40, 24],
        vec![8],
        vec![8],
    ];
    let mut rng = TestRng::new(23);
    let mut b = AuonBuilder::new(config.clone(), hybrid);
    let ids: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap())
        .collect();
    let mut gpu = b.clone().build(ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    // Hybrid (NS5 over the last two dimensions, the brake over the tensor): [40, 24] ×2, [40, 4, 6]
    // (40 slices of 4×6), [24, 40], [7] ×2, [3, 4, 5], [1], [8] ×2 (the empty one has none); plain
    // AuON stacks by length: 960 ×4, 7 ×2, 60, 1, 8 ×2.
    let want = if hybrid { 7 } else { 5 };
    assert_eq!(gpu.chains(), chains.unwrap_or(want), "hybrid={hybrid}");
    for t in 1..=10 {
        // The first 7- and 8-vectors' gradients are zero: they only decay, and their live
        // stack-mates must not read their zero norms. The last 40×24's gradients are 50× its
        // stack-mates': for plain AuON, reading their norm inside its cosh would put
        // cosh(50·γ·v/‖v‖) in its RMS (Hybrid-AuON's NS5 normalises the scale away).
        let scale = |i: usize| match i {
            2 | 9 => 0.0,
            8 => 50.0,
            _ => 1.0,
        };
        let grads: Vec<Vec<f32>> =
            (shapes.iter().enumerate()).map(|(i, s)| rng.uniforms(s.iter().product(), scale(i))).collect();
        common::step_both(&mut gpu, &mut cpu, &ids, &grads);
        for (i, (&id, s)) in ids.iter().zip(&shapes).enumerate() {
            let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
            let n: usize = s.iter().product();
            let c = if s.len() >= 2 { s[0].max(n / s[0]) } else { n } as f64;
            let ns =
                if hybrid && s.len() >= 2 { 3.0 * config.ns_steps as f64 * 3.4445 * (c.sqrt() + 2.0) } else { 0.0 };
            let eps = f32::EPSILON as f64;
            // |x|/rms per element is at most ~1.2·sqrt(n) in norm (rms ≥ 1) for gradients of scale 1
            // (the package variant's v grows with the gradient's scale); the step is lr times that.
            let step = config.lr * 1.2 * (n as f64).sqrt().max(1.0) * scale(i).max(1.0) as f64;
            let tol = t as f64 * (step * (ns + 32.0) * eps + 4.0 * eps * norm(&y));
            let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
            assert!(norm(&diff) <= tol, "{config:?} hybrid={hybrid} {s:?} step {t}: {:e} > {tol:e}", norm(&diff));
        }
    }
}

#[test]
fn auon_package_matches_reference() {
    parity(AuonConfig { lr: 0.05, momentum: 0.9, weight_decay: 0.1, gamma: 1.2, ..AuonConfig::default() }, false);
}

#[test]
fn auon_paper_matches_reference() {
    parity(AuonConfig { lr: 0.01, variant: AuonVariant::Paper, ..AuonConfig::default() }, false);
}

#[test]
fn hybrid_auon_matches_reference() {
    parity(AuonConfig { lr: 0.02, weight_decay: 0.05, ns_steps: 3, ..AuonConfig::default() }, true);
    parity(AuonConfig { lr: 0.02, variant: AuonVariant::Paper, ..AuonConfig::default() }, true);
}

#[test]
fn stacks_split_where_one_storage_binding_is_full() {
    // An 8 KiB binding holds two 960-element tensors: the three 40×24 (and, for plain AuON, the
    // four tensors of 960) need two stacks.
    let ctx = common::ctx_with(ContextOptions { max_binding_bytes: Some(8192), ..Default::default() });
    parity_on(&ctx, AuonConfig { lr: 0.02, ..AuonConfig::default() }, true, Some(7));
    parity_on(&ctx, AuonConfig { lr: 0.02, ..AuonConfig::default() }, false, Some(6));
}

#[test]
fn norm_passes_fold_their_chunks_past_the_workgroup_limit() {
    // At most 3 workgroups per grid dimension: a 42,000-element tensor's 11 chunks of norm and cosh
    // partial sums fold into a 3×4 grid, over vec4s; 42,001 elements take the scalar passes. Same
    // bound as the parity test.
    let ctx = common::ctx_with(ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    let config = AuonConfig { lr: 0.02, ..AuonConfig::default() };
    let mut rng = TestRng::new(29);
    for n in [42_000, 42_001] {
        let mut b = AuonBuilder::new(config.clone(), false);
        let id = b.param("w", &rng.uniforms(n, 0.5), &[n]).unwrap();
        let mut gpu = b.clone().build(&ctx).unwrap();
        let mut cpu = b.build_cpu().unwrap();
        for t in 1..=3 {
            let g = rng.uniforms(n, 1.0);
            gpu.write_grad(id, &g).unwrap();
            cpu.write_grad(id, &g).unwrap();
            gpu.step().unwrap();
            cpu.step().unwrap();
            let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
            let eps = f32::EPSILON as f64;
            let tol = t as f64 * (config.lr * 1.2 * (n as f64).sqrt() * 32.0 * eps + 4.0 * eps * norm(&y));
            let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
            assert!(norm(&diff) <= tol, "{n} elements, step {t}: {:e} > {tol:e}", norm(&diff));
        }
    }
}

#[test]
fn auon_zero_gradient_skips_the_step_but_not_the_decay() {
    let ctx = common::ctx();
    let cfg = AuonConfig { lr: 0.1, weight_decay: 0.5, ..AuonConfig::default() };
    let mut b = AuonBuilder::new(cfg, false);
    let id = b.param("w", &[1.0, -2.0, 3.0], &[3]).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(id, &[0.0; 3]).unwrap();
    opt.step().unwrap();
    let d = (1.0f64 - 0.1 * 0.5) as f32;
    assert_eq!(opt.read_param(id).unwrap(), vec![d, -2.0 * d, 3.0 * d]);
}

#[test]
fn auon_paper_first_step_known_answer() {
    // Step 1 from m = 0: m = 0.05 g, u = lerp(g, m, 0.95) ∝ g, so X = g/‖g‖ (up to 1e-7),
    // r = sqrt(mean(cosh(X)²)) ((5.5.2): no γ, though the config holds the package's 1.5),
    // p = −lr·X/(r + 1e-8).
    let ctx = common::ctx();
    let g = [0.5f32, -1.0, 2.0, 0.25];
    let cfg = AuonConfig { lr: 0.1, variant: AuonVariant::Paper, ..AuonConfig::default() };
    let mut b = AuonBuilder::new(cfg.clone(), false);
    let id = b.param("w", &[0.0; 4], &[4]).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(id, &g).unwrap();
    opt.step().unwrap();
    let p = opt.read_param(id).unwrap();
    let ng = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let x: Vec<f64> = g.iter().map(|&v| v as f64 / ng).collect();
    let r = (x.iter().map(|v| v.cosh().powi(2)).sum::<f64>() / 4.0).sqrt();
    for i in 0..4 {
        let want = -cfg.lr * x[i] / r;
        assert!((p[i] as f64 - want).abs() <= 1e-5 * want.abs(), "{i}: {} vs {want}", p[i]);
    }
}

/// Row-major r×k times k×c, in f64.
fn matmul(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = (0..k).map(|l| a[i * k + l] * b[l * c + j]).sum();
        }
    }
    out
}

/// NS5 (ALGORITHMS.md §5.1) of a wide r×c matrix in f64: X/(‖X‖_F + 1e-7), then X ← aX + (bA + cA²)X.
fn ns5_f64(x: &[f64], r: usize, c: usize) -> Vec<f64> {
    let (a, b, cc) = (3.4445, -4.7750, 2.0315);
    let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut x: Vec<f64> = x.iter().map(|v| v / (n + 1e-7)).collect();
    let mut xt = vec![0.0; r * c];
    for _ in 0..5 {
        for i in 0..r {
            for j in 0..c {
                xt[j * r + i] = x[i * c + j];
            }
        }
        let g = matmul(&x, &xt, r, c, r);
        let g2 = matmul(&g, &g, r, r, r);
        let bm: Vec<f64> = g.iter().zip(&g2).map(|(p, q)| b * p + cc * q).collect();
        let bx = matmul(&bm, &x, r, r, c);
        x = x.iter().zip(&bx).map(|(p, q)| a * p + q).collect();
    }
    x
}

#[test]
fn hybrid_auon_paper_first_step_known_answer() {
    // The paper's Hybrid-AuON (§5.5): X = u/(‖u‖ + 1e-7) with u ∝ g at step 1, O = NS5(X), then
    // (5.5.2)–(5.5.3) on O as it is: r = sqrt(mean(cosh(O)²)), p = −lr·O/(r + 1e-8) (O is not
    // normalised again, and no γ).
    let (rows, cols) = (4, 6);
    let g = TestRng::new(31).uniforms(rows * cols, 1.0);
    let cfg = AuonConfig { lr: 0.1, variant: AuonVariant::Paper, ..AuonConfig::default() };
    let u: Vec<f64> = g.iter().map(|&v| v as f64 * (1.0 - 0.95 * 0.95)).collect();
    let nu = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    let x: Vec<f64> = u.iter().map(|v| v / (nu + 1e-7)).collect();
    let o = ns5_f64(&x, rows, cols);
    let r = (o.iter().map(|v| v.cosh().powi(2)).sum::<f64>() / o.len() as f64).sqrt();
    let want: Vec<f64> = o.iter().map(|v| -cfg.lr * v / (r + 1e-8)).collect();
    first_hybrid_step_is(&cfg, &[rows, cols], &g, &want);
}

/// Hybrid-AuON's first step from zero parameters on `shape` with gradient `g` lands within 1e-5 of
/// `want` (relative, in norm), on the GPU and the twin.
fn first_hybrid_step_is(cfg: &AuonConfig, shape: &[usize], g: &[f32], want: &[f64]) {
    let wn = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    for gpu in [true, false] {
        let mut b = AuonBuilder::new(cfg.clone(), true);
        let id = b.param("w", &vec![0.0; g.len()], shape).unwrap();
        let mut opt: Box<dyn Stepper> =
            if gpu { Box::new(b.build(&common::ctx()).unwrap()) } else { Box::new(b.build_cpu().unwrap()) };
        opt.write_grad(id, g).unwrap();
        opt.step().unwrap();
        let p = opt.read_param(id).unwrap();
        let err = p.iter().zip(want).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>().sqrt();
        assert!(err <= 1e-5 * wn, "{shape:?}, gpu {gpu}: |p - want| = {err:e} of {wn:e}");
    }
}

#[test]
fn non_finite_gradients_skip_the_whole_step_and_keep_every_state() {
    // A stack of two 6×8 matrices and a vector, plain and hybrid, on the GPU and the twin.
    let ctx = common::ctx();
    let mut rng = TestRng::new(62);
    let shapes: [&[usize]; 3] = [&[6, 8], &[6, 8], &[7]];
    for hybrid in [false, true] {
        let mut b = AuonBuilder::new(AuonConfig::default(), hybrid);
        for (i, s) in shapes.iter().enumerate() {
            b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
        }
        let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s.iter().product(), 1.0)).collect();
        common::assert_non_finite_skips(&mut b.clone().build(&ctx).unwrap(), &grads, &["momentum_buffer"]);
        common::assert_non_finite_skips(&mut b.build_cpu().unwrap(), &grads, &["momentum_buffer"]);
    }
}

/// A checkpoint taken under another γ, variant or NS5 setting restores it: the GPU's passes, into
/// which those are planned, are planned again (they kept the builder's while the config said
/// otherwise), so the resumed run equals the straight one bit for bit.
#[test]
fn restore_replans_gamma_variant_and_ns5() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auon.safetensors");
    let shapes: Vec<Vec<usize>> = vec![vec![12, 8], vec![12, 8], vec![9]];
    let builder = |config: AuonConfig| {
        let mut b = AuonBuilder::new(config, true);
        let mut rng = TestRng::new(4);
        let ids: Vec<_> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap())
            .collect();
        (b, ids)
    };
    let feed = |opt: &mut dyn Stepper, ids: &[gpuopt::optim::ParamId], rng: &mut TestRng, steps: usize| {
        for _ in 0..steps {
            for (&id, s) in ids.iter().zip(&shapes) {
                opt.write_grad(id, &rng.uniforms(s.iter().product(), 1.0)).unwrap();
            }
            opt.step().unwrap();
        }
    };
    let saved_configs = [
        AuonConfig { gamma: 3.0, lr: 0.05, ..AuonConfig::default() },
        AuonConfig { variant: AuonVariant::Paper, lr: 0.05, ..AuonConfig::default() },
        AuonConfig { ns_steps: 2, ns_coefficients: [2.0, -1.5, 0.5], lr: 0.05, ..AuonConfig::default() },
    ];
    for saved in saved_configs {
        let (b, ids) = builder(saved.clone());
        let mut straight = b.clone().build(&ctx).unwrap();
        feed(&mut straight, &ids, &mut TestRng::new(9), 4);
        let mut first = b.build(&ctx).unwrap();
        let mut rng = TestRng::new(9);
        feed(&mut first, &ids, &mut rng, 2);
        first.save(&path).unwrap();
        let mut resumed = builder(AuonConfig::default()).0.build(&ctx).unwrap();
        resumed.load(&path).unwrap();
        feed(&mut resumed, &ids, &mut rng, 2);
        for &id in &ids {
            assert_eq!(straight.read_param(id).unwrap(), resumed.read_param(id).unwrap(), "{saved:?}");
        }
    }
}

/// ryyzn9/AuON's HybridAuON on a tensor of rank > 2: NS5 over its last two dimensions, slice by
/// slice (each normalised on its own), then the cosh brake over the whole tensor. Step 1 of a
/// [2, 3, 5] tensor against that in f64, both backends.
#[test]
fn hybrid_auon_3d_is_ns_per_slice_then_one_brake() {
    let shape = [2, 3, 5];
    let g = TestRng::new(37).uniforms(30, 1.0);
    let cfg = AuonConfig { lr: 0.1, ..AuonConfig::default() };
    let u: Vec<f64> = g.iter().map(|&v| v as f64 * (1.0 - 0.95 * 0.95)).collect();
    let o: Vec<f64> = u.chunks(15).flat_map(|s| ns5_f64(s, 3, 5)).collect();
    let n = o.iter().map(|v| v * v).sum::<f64>().sqrt();
    let r = (o.iter().map(|v| (cfg.gamma * v / (n + 1e-7)).cosh().powi(2)).sum::<f64>() / 30.0).sqrt();
    let want: Vec<f64> = o.iter().map(|v| -cfg.lr * v / (r + 1e-8)).collect();
    first_hybrid_step_is(&cfg, &shape, &g, &want);
}
