//! REG (the RACS operator of pytorch-optimizer): GPU vs CPU parity with the limiter engaged, a
//! first-step known answer worked out in f64, and the limiter's growth bound θ_t ≤ γ·θ_{t−1}.

mod common;

use gpuopt::optim::{RegBuilder, RegConfig, Stepper};
use gpuopt::parity::{tolerance, TestRng};
use gpuopt::ContextOptions;

#[test]
fn reg_matches_reference_over_twelve_steps() {
    // Stacks: [40, 24] ×3 (one a [40, 4, 6] view), [7, 1] ×2, [3, 20], [1, 1], [300, 2] (9 bands
    // of column sums), [5, 100] (a workgroup per row: 25 vec4s, 231 lanes idle), [3, 516] (129
    // vec4s a row: the walk's first step carries a wrapped column into the next row for most
    // lanes; the folded 70×600 test below walks four steps of 150-vec4 rows), [3, 101] (a wide row
    // of scalars), [1, 1100] (275 vec4s: lanes 0-18 sum two each).
    parity_on(&common::ctx(), 9);
}

#[test]
fn stacks_split_where_one_storage_binding_is_full() {
    // An 8 KiB binding holds two 40×24 tensors: their stack of three splits.
    let ctx = common::ctx_with(ContextOptions { max_binding_bytes: Some(8192), ..Default::default() });
    parity_on(&ctx, 10);
}

#[test]
fn folded_grids_and_stack_caps_follow_the_workgroup_limit() {
    // With at most 3 workgroups per grid dimension, four 70×600 tensors make two stacks (3 + 1:
    // the stack index is a grid dimension) and each tensor's 11 chunks of partial sums fold into a
    // 3×4 grid, chunks past the end returning early (the row and column passes fold their counts
    // into x, which this cap exercises; their y stays below real limits).
    let ctx = common::ctx_with(ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    let cfg = RegConfig { lr: 0.01, beta2: 0.8, alpha: 0.1, gamma: 1.05, ..RegConfig::default() };
    let mut rng = TestRng::new(41);
    let mut b = RegBuilder::new(cfg);
    let ids: Vec<_> =
        (0..4).map(|i| b.param(&format!("p{i}"), &rng.uniforms(42_000, 1.0), &[70, 600]).unwrap()).collect();
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    assert_eq!(gpu.chains(), 2);
    for t in 1..=4 {
        for &id in &ids {
            let g = rng.uniforms(42_000, 1.5f32.powi(t));
            gpu.write_grad(id, &g).unwrap();
            cpu.write_grad(id, &g).unwrap();
        }
        gpu.step().unwrap();
        cpu.step().unwrap();
        for &id in &ids {
            let (tg, tc) = (gpu.read_state(id, "theta").unwrap()[0], cpu.read_state(id, "theta").unwrap()[0]);
            assert!((tg - tc).abs() <= 1e-5 * tc.abs(), "step {t}: theta {tg} vs {tc}");
            let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
            let d = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-5, "step {t}: largest parameter difference {d:e}");
            // 600 columns: a workgroup per row, lanes summing up to 3 columns each; 70 rows: column
            // sums in 2 bands of 35. The twin adds in the same order: equal to a few ulp (16 ε leaves
            // room for drivers that contract the squares into FMAs and divide to 2.5 ulp).
            for state in ["s", "q"] {
                let (a, b) = (gpu.read_state(id, state).unwrap(), cpu.read_state(id, state).unwrap());
                let worst = a.iter().zip(&b).map(|(u, v)| ((u - v) / v).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 16.0 * f32::EPSILON, "step {t} {state}: relative difference {worst:e}");
            }
        }
    }
}

/// GPU vs CPU twin over 12 steps with the limiter engaged, on stacks of same-view tensors (one
/// vector's gradient is zero throughout) and an empty tensor; `chains` stacks are expected.
fn parity_on(ctx: &gpuopt::Context, chains: usize) {
    let cfg = RegConfig { lr: 0.01, beta2: 0.8, alpha: 0.1, gamma: 1.05, weight_decay: 0.1, ..RegConfig::default() };
    let shapes: Vec<Vec<usize>> = vec![
        vec![40, 24],
        vec![7],
        vec![3, 4, 5],
        vec![40, 4, 6],
        vec![1],
        vec![300, 2],
        vec![7],
        vec![0],
        vec![40, 24],
        vec![5, 100],
        vec![3, 516],
        vec![3, 101],
        vec![1, 1100],
    ];
    let mut rng = TestRng::new(31);
    let mut b = RegBuilder::new(cfg);
    let ids: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 1.0), s).unwrap())
        .collect();
    let mut gpu = b.clone().build(ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    assert_eq!(gpu.chains(), chains);
    let mut prev: Vec<Vec<f32>> = ids.iter().map(|&id| cpu.read_param(id).unwrap()).collect();
    let mut max_step = vec![0.0f32; ids.len()];
    for t in 1..=12 {
        // Growing gradient scales (the limiter itself is checked in the test below).
        let scale = 1.5f32.powi(t as i32);
        // In two stacks a member's limiter sees other data: a zero gradient beside a live one, and a
        // steady gradient scale (η stays 1) beside growing ones (η < 1).
        let grads: Vec<Vec<f32>> = (shapes.iter().enumerate())
            .map(|(i, s)| match i {
                6 => vec![0.0; 7],
                8 => rng.uniforms(s.iter().product(), 1.0),
                _ => rng.uniforms(s.iter().product(), scale),
            })
            .collect();
        common::step_both(&mut gpu, &mut cpu, &ids, &grads);
        for (k, &id) in ids.iter().enumerate() {
            let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
            for (a, b) in y.iter().zip(&prev[k]) {
                max_step[k] = max_step[k].max((a - b).abs());
            }
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                assert!(
                    (a - b).abs() <= tolerance(t, *b, max_step[k]),
                    "{:?} step {t} element {i}: {a} vs {b}",
                    shapes[k]
                );
            }
            if shapes[k] == [0] {
                assert!(x.is_empty() && gpu.read_state(id, "theta").unwrap().is_empty());
                continue;
            }
            let (tg, tc) = (gpu.read_state(id, "theta").unwrap()[0], cpu.read_state(id, "theta").unwrap()[0]);
            assert!((tg - tc).abs() <= 1e-5 * tc.abs(), "theta {tg} vs {tc}");
            for state in ["s", "q"] {
                let (a, b) = (gpu.read_state(id, state).unwrap(), cpu.read_state(id, state).unwrap());
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() <= 1e-5 * v.abs(), "{:?} {state}: {u} vs {v}", shapes[k]);
                }
            }
            prev[k] = y;
        }
    }
}

#[test]
fn reg_first_step_known_answer() {
    // t = 1: s_i = 0.1·mean_j g², q_j = 0.9 + 0.1·mean_i g², η = 1, p = −lr·α·g/(sqrt(s+eps)·sqrt(q+eps)).
    let ctx = common::ctx();
    let cfg = RegConfig { lr: 0.1, alpha: 0.5, ..RegConfig::default() };
    let g = [1.0f32, -2.0, 0.5, 3.0, 0.0, -1.0];
    let mut b = RegBuilder::new(cfg.clone());
    let id = b.param("w", &[0.0; 6], &[2, 3]).unwrap();
    let mut opt = b.build(&ctx).unwrap();
    opt.write_grad(id, &g).unwrap();
    opt.step().unwrap();
    let p = opt.read_param(id).unwrap();
    let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    let s: Vec<f64> = (0..2).map(|i| 0.1 * (0..3).map(|j| g64[i * 3 + j].powi(2)).sum::<f64>() / 3.0).collect();
    let q: Vec<f64> = (0..3).map(|j| 0.9 + 0.1 * (0..2).map(|i| g64[i * 3 + j].powi(2)).sum::<f64>() / 2.0).collect();
    for k in 0..6 {
        let want = -cfg.lr * cfg.alpha * g64[k] / ((s[k / 3] + cfg.eps).sqrt() * (q[k % 3] + cfg.eps).sqrt());
        assert!((p[k] as f64 - want).abs() <= 1e-5 * want.abs().max(1e-6), "{k}: {} vs {want}", p[k]);
    }
}

#[test]
fn reg_limiter_bounds_norm_growth_by_gamma() {
    // Step 1 puts the gradient in row 0 only; step 2 in all 4 rows. Rows 1..3 had s = 0, so their
    // scaled gradient is as large as row 0's was: ‖Ĝ₂‖ ≈ 2·‖Ĝ₁‖ > γ·θ₁, and the limiter must cap
    // θ₂ = η·‖Ĝ₂‖ at γ·θ₁, on the GPU and the CPU alike.
    let ctx = common::ctx();
    let cfg = RegConfig { gamma: 1.1, lr: 0.01, ..RegConfig::default() };
    let mut b = RegBuilder::new(cfg);
    let id = b.param("w", &[0.0; 12], &[4, 3]).unwrap();
    let mut gpu = b.clone().build(&ctx).unwrap();
    let mut cpu = b.build_cpu().unwrap();
    let g1 = [1.0, -0.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let g2 = [1.0, -0.5, 2.0, 0.5, 1.0, -1.5, -2.0, 0.25, 1.0, 1.0, -1.0, 0.75];
    let mut thetas = Vec::new();
    for g in [&g1, &g2] {
        for opt in [&mut gpu as &mut dyn Stepper, &mut cpu] {
            opt.write_grad(id, g).unwrap();
            opt.step().unwrap();
        }
        let (tg, tc) = (gpu.read_state(id, "theta").unwrap()[0], cpu.read_state(id, "theta").unwrap()[0]);
        assert!((tg - tc).abs() <= 1e-5 * tc, "theta gpu {tg} vs cpu {tc}");
        thetas.push(tg);
    }
    assert!((thetas[1] / thetas[0] - 1.1).abs() < 1e-4, "theta {} -> {}: capped at gamma", thetas[0], thetas[1]);
    let (x, y) = (gpu.read_param(id).unwrap(), cpu.read_param(id).unwrap());
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= tolerance(2, *b, 0.01), "{a} vs {b}");
    }
}

#[test]
fn non_finite_gradients_skip_the_whole_step_and_keep_every_state() {
    // A stack of two 6×8 matrices and a vector, on the GPU and the twin (s, q and θ kept).
    let ctx = common::ctx();
    let mut rng = TestRng::new(63);
    let shapes: [&[usize]; 3] = [&[6, 8], &[6, 8], &[7]];
    let mut b = RegBuilder::new(RegConfig::default());
    for (i, s) in shapes.iter().enumerate() {
        b.param(&format!("p{i}"), &rng.uniforms(s.iter().product(), 0.5), s).unwrap();
    }
    let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s.iter().product(), 1.0)).collect();
    common::assert_non_finite_skips(&mut b.clone().build(&ctx).unwrap(), &grads, &["s", "q", "theta"]);
    common::assert_non_finite_skips(&mut b.build_cpu().unwrap(), &grads, &["s", "q", "theta"]);
}
