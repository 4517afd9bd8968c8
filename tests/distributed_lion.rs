//! Distributed Lion (ALGORITHMS.md §4.6): the GPU's packed signs, aggregates and updates against the
//! CPU twin step by step (each step started from the GPU's own state, so nothing drifts: signs and
//! aggregates must agree bit for bit, except a sign whose argument is within rounding of 0), the
//! update rule against hand-worked votes, the 2-D grid, bad input and checkpoints.

mod common;

use gpuopt::kernels::distributed_lion::DlionParams;
use gpuopt::optim::distributed_lion::{Aggregation, DistributedLion, DistributedLionConfig, MAX_AVG_WORKERS};
use gpuopt::parity::TestRng;
use gpuopt::reference::distributed_lion as cpu;
use gpuopt::{Context, ContextOptions};

fn config(variant: Aggregation) -> DistributedLionConfig {
    DistributedLionConfig { lr: 0.01, beta1: 0.9, beta2: 0.95, weight_decay: 0.1, variant }
}

/// Gradients with zeros, ±tiny and huge values mixed in (no subnormals: (1 − β1)·g must keep g's sign).
fn grad(rng: &mut TestRng, n: usize, step: usize) -> Vec<f32> {
    let mut g = rng.normals(n, [1.0, 1e-3, 3.0][step % 3]);
    for (k, i) in (0..n).step_by(37).enumerate() {
        g[i] = [0.0, 1e-30, -1e-30, 1e30, -1e30][k % 5];
    }
    g
}

/// Whether c = β1·m + (1 − β1)·g is within rounding of 0, where the GPU (which may fuse into an FMA)
/// and the CPU may disagree on its sign.
fn ambiguous(h: &DlionParams, m: f32, g: f32) -> bool {
    let c = h.beta1 * m + h.omb1 * g;
    c.abs() <= 4.0 * f32::EPSILON * ((h.beta1 * m).abs() + (h.omb1 * g).abs())
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 2.0 * f32::EPSILON * (a.abs().max(b.abs()) + scale)
}

fn run_against_twin(ctx: &Context, variant: Aggregation, n: usize, workers: usize, steps: usize) {
    let cfg = config(variant);
    let mut rng = TestRng::new((n * 31 + workers) as u64);
    let init = rng.normals(n, 1.0);
    let mut gpu = DistributedLion::new(ctx, cfg.clone(), &init, workers).unwrap();
    let h = cfg.params(cpu::words(n), workers);
    let what = format!("{variant:?} n={n} N={workers}");
    for s in 0..steps {
        let x0 = gpu.read_param().unwrap();
        let m0: Vec<Vec<f32>> = (0..workers).map(|w| gpu.read_momentum(w).unwrap()).collect();
        let gs: Vec<Vec<f32>> = (0..workers).map(|_| grad(&mut rng, n, s)).collect();
        for (w, g) in gs.iter().enumerate() {
            gpu.write_grad(w, g).unwrap();
        }
        gpu.step().unwrap();
        // Workers: the packed signs and the momenta.
        let mut signs = Vec::new();
        for w in 0..workers {
            let mut m = m0[w].clone();
            let want = cpu::compress(&h, &gs[w], &mut m);
            let got = gpu.read_signs(w).unwrap();
            assert_eq!(got.len(), want.len(), "{what}");
            for j in 0..n {
                if cpu::unpack(&got, j) != cpu::unpack(&want, j) {
                    assert!(ambiguous(&h, m0[w][j], gs[w][j]), "{what} step {s} worker {w} element {j}");
                }
            }
            // Bits past n stay 0 (the padding never votes).
            for j in n..32 * cpu::words(n) {
                assert_eq!(cpu::unpack(&got, j), 0, "{what}: padding element {j} voted");
            }
            let gm = gpu.read_momentum(w).unwrap();
            for j in 0..n {
                assert!(close(gm[j], m[j], 0.0), "{what} step {s} m[{w}][{j}]: {} vs {}", gm[j], m[j]);
            }
            signs.push(got);
        }
        // Server: exact integer arithmetic on the GPU's own signs.
        let agg = gpu.read_aggregate().unwrap();
        let want = match variant {
            Aggregation::Mavo => cpu::vote(&signs, n),
            Aggregation::Avg => cpu::average(&signs, n),
        };
        assert_eq!(agg, want, "{what} step {s}: aggregate");
        // Everyone: x from the GPU's previous x and aggregate.
        let mut x = x0.clone();
        match variant {
            Aggregation::Mavo => cpu::apply_vote(&h, &mut x, &agg),
            Aggregation::Avg => cpu::apply_average(&h, &mut x, &agg),
        }
        let gx = gpu.read_param().unwrap();
        for j in 0..n {
            assert!(close(gx[j], x[j], h.lr), "{what} step {s} x[{j}]: {} vs {}", gx[j], x[j]);
        }
    }
    assert_eq!(gpu.step_count(), steps as u64);
}

#[test]
fn workers_server_and_update_match_the_cpu_twin() {
    let ctx = common::ctx();
    for variant in [Aggregation::Mavo, Aggregation::Avg] {
        for (n, workers) in [(1, 1), (7, 2), (33, 3), (1000, 4), (4099, 7), (70_001, 5)] {
            run_against_twin(&ctx, variant, n, workers, 4);
        }
    }
    // Many workers: the vote counters need 7 bits; Avg's bytes hold up to ±127.
    run_against_twin(&ctx, Aggregation::Avg, 300, MAX_AVG_WORKERS, 2);
    run_against_twin(&ctx, Aggregation::Mavo, 300, 200, 2);
}

/// The vote loops over every worker for 8 elements per invocation: on an adapter that stops long
/// loops (llvmpipe from 8,191 workers: elements came out wrong, silently) the constructor refuses
/// what would not fit. Here a budget of 100 iterations (ContextOptions): 11 workers fit, 12 do not.
#[test]
fn more_workers_than_the_adapters_loop_budget_are_refused() {
    let ctx = common::ctx_with(ContextOptions { loop_limit: Some(100), ..Default::default() });
    run_against_twin(&ctx, Aggregation::Mavo, 40, 11, 2);
    let e = DistributedLion::new(&ctx, config(Aggregation::Mavo), &[0.5; 40], 12).unwrap_err();
    assert!(e.to_string().contains("12 workers") && e.to_string().contains("loop iterations"), "{e}");
}

/// Grids folded onto two dimensions (at most 3 workgroups per dimension) still cover every word.
#[test]
fn a_two_dimensional_grid_covers_every_element() {
    let ctx = common::ctx_with(ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    run_against_twin(&ctx, Aggregation::Mavo, 70_001, 3, 2);
    run_against_twin(&ctx, Aggregation::Avg, 70_001, 3, 2);
}

/// The rule by hand: signs of (1 − β1)·g on the first step (m = 0), then the vote or the mean.
#[test]
fn votes_follow_the_update_rule() {
    let ctx = common::ctx();
    // Element 0: +, +, − ; element 1: +, −, 0 ; element 2: 0, 0, 0 ; element 3: −, −, −.
    let g = [[1.0f32, 2.0, 0.0, -1.0], [0.5, -3.0, 0.0, -2.0], [-4.0, 0.0, 0.0, -0.1]];
    let (lr, wd, x0) = (0.1, 0.5, 2.0f32);
    let decay = (1.0 - lr * wd) as f32;
    for (variant, want) in
        [(Aggregation::Mavo, [1.0f32, 0.0, 0.0, -1.0]), (Aggregation::Avg, [1.0 / 3.0, 0.0, 0.0, -1.0])]
    {
        let cfg = DistributedLionConfig { lr, weight_decay: wd, variant, ..Default::default() };
        let mut opt = DistributedLion::new(&ctx, cfg, &[x0; 4], 3).unwrap();
        for (w, gw) in g.iter().enumerate() {
            opt.write_grad(w, gw).unwrap();
        }
        opt.step().unwrap();
        let x = opt.read_param().unwrap();
        for j in 0..4 {
            let expect = decay * x0 - lr as f32 * want[j];
            assert!((x[j] - expect).abs() <= 1e-6, "{variant:?} x[{j}] = {} (want {expect})", x[j]);
        }
        // Worker 0's packed signs: elements 0, 1 positive, 2 no vote, 3 negative.
        assert_eq!(opt.read_signs(0).unwrap(), vec![0b1011, 0b1000]);
        // Each momentum is (1 − β2)·g after the first step.
        let m = opt.read_momentum(2).unwrap();
        assert!((m[0] - 0.01 * -4.0).abs() < 1e-7, "{m:?}");
    }
    // A tie (even N) leaves only the decay: 2 workers, opposite signs.
    let cfg = DistributedLionConfig { lr, weight_decay: wd, ..Default::default() };
    let mut opt = DistributedLion::new(&ctx, cfg, &[x0], 2).unwrap();
    opt.write_grad(0, &[1.0]).unwrap();
    opt.write_grad(1, &[-1.0]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.read_param().unwrap(), vec![decay * x0]);
    assert_eq!(opt.read_aggregate().unwrap(), vec![0, 0]);
}

#[test]
fn bad_input_is_refused_and_loses_nothing() {
    let ctx = common::ctx();
    let cfg = config(Aggregation::Mavo);
    assert!(DistributedLion::new(&ctx, cfg.clone(), &[1.0; 4], 0).is_err());
    assert!(DistributedLion::new(&ctx, cfg.clone(), &[], 2).is_err());
    assert!(DistributedLion::new(&ctx, cfg.clone(), &[f32::NAN], 2).is_err());
    assert!(DistributedLion::new(&ctx, config(Aggregation::Avg), &[1.0], MAX_AVG_WORKERS + 1).is_err());
    let bad = DistributedLionConfig { beta1: 1.0, ..cfg.clone() };
    assert!(DistributedLion::new(&ctx, bad, &[1.0], 2).is_err());
    let bad = DistributedLionConfig { lr: f64::NAN, ..cfg.clone() };
    assert!(DistributedLion::new(&ctx, bad, &[1.0], 2).is_err());

    let mut opt = DistributedLion::new(&ctx, cfg, &[1.0, 1.0, 1.0], 2).unwrap();
    opt.write_grad(0, &[1.0, -1.0, 1.0]).unwrap();
    opt.write_grad(1, &[1.0, -1.0, 1.0]).unwrap();
    // A NaN gradient, a wrong length, a missing worker: errors, and the gradients written before stay.
    assert!(opt.write_grad(1, &[f32::NAN, 5.0, 5.0]).is_err());
    assert!(opt.write_grad(1, &[f32::INFINITY, 5.0, 5.0]).is_err());
    assert!(opt.write_grad(1, &[1.0, 2.0]).is_err());
    assert!(opt.write_grad(2, &[1.0, 2.0, 3.0]).is_err());
    assert!(opt.read_signs(2).is_err());
    assert!(opt.set_lr(-1.0).is_err());
    opt.step().unwrap();
    let (lr, decay) = (0.01f32, (1.0 - 0.01 * 0.1) as f32);
    let x = opt.read_param().unwrap();
    let want = [decay - lr, decay + lr, decay - lr];
    for j in 0..3 {
        assert!((x[j] - want[j]).abs() < 1e-6, "{x:?} vs {want:?}");
    }
}

#[test]
fn checkpoints_resume_bit_identically_and_mismatches_change_nothing() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlion.safetensors");
    let cfg = config(Aggregation::Avg);
    let mut rng = TestRng::new(3);
    let grads: Vec<Vec<Vec<f32>>> = (0..5).map(|s| (0..3).map(|_| grad(&mut rng, 100, s)).collect()).collect();
    let steps = |opt: &mut DistributedLion, range: std::ops::Range<usize>| {
        for s in range {
            for (w, g) in grads[s].iter().enumerate() {
                opt.write_grad(w, g).unwrap();
            }
            opt.step().unwrap();
        }
    };
    let mut a = DistributedLion::new(&ctx, cfg.clone(), &[0.5; 100], 3).unwrap();
    steps(&mut a, 0..3);
    a.save(&path).unwrap();
    steps(&mut a, 3..5);
    let mut b = DistributedLion::new(&ctx, cfg.clone(), &[0.0; 100], 3).unwrap();
    b.load(&path).unwrap();
    assert_eq!(b.step_count(), 3);
    steps(&mut b, 3..5);
    assert_eq!(a.read_param().unwrap(), b.read_param().unwrap());
    assert_eq!(a.read_momentum(2).unwrap(), b.read_momentum(2).unwrap());

    // Other worker count, other variant, other size, a corrupt file: errors, and nothing moves.
    let mismatched = [
        DistributedLion::new(&ctx, cfg.clone(), &[0.25; 100], 2).unwrap(),
        DistributedLion::new(&ctx, config(Aggregation::Mavo), &[0.25; 100], 3).unwrap(),
        DistributedLion::new(&ctx, cfg.clone(), &[0.25; 99], 3).unwrap(),
    ];
    for mut opt in mismatched {
        assert!(opt.load(&path).is_err());
        assert!(opt.read_param().unwrap().iter().all(|&x| x == 0.25));
        assert_eq!(opt.step_count(), 0);
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mut c = DistributedLion::new(&ctx, cfg, &[0.25; 100], 3).unwrap();
    assert!(c.load(&path).is_err());
    assert!(c.read_param().unwrap().iter().all(|&x| x == 0.25));
}
