//! Shampoo: GPU vs the CPU twin over several root refreshes (blocked and whole matrices, a vector,
//! every graft), against an independent f64 implementation whose roots come from an
//! eigendecomposition, the NaN-gradient skip, and bad configurations.
// The f64 reference is written index by index, like the equations.
#![allow(clippy::type_complexity, clippy::needless_range_loop)]

mod common;

use common::rel;

use gpuopt::kernels::roots::GpuMats;
use gpuopt::optim::shampoo::{Graft, Shampoo, ShampooConfig};
use gpuopt::parity::TestRng;
use gpuopt::reference::roots::{eigen, spectral, CpuMats};
use gpuopt::roots::MatOps;

const SHAPES: &[&[usize]] = &[&[20, 12], &[6, 5], &[7]];

fn config(graft: Graft, nesterov: bool) -> ShampooConfig {
    ShampooConfig {
        lr: 0.05,
        beta2: 0.99,
        weight_decay: 0.01,
        block_size: 8,
        precondition_frequency: 3,
        start_preconditioning_step: 2,
        graft,
        matrix_eps: 1e-3,
        nesterov,
        ..Default::default()
    }
}

fn grads(step: usize) -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| TestRng::new((step * 10 + i) as u64).normals(s.iter().product(), 1.0))
        .collect()
}

fn run<O: MatOps>(ops: O, cfg: &ShampooConfig, steps: usize) -> Vec<Vec<Vec<f32>>> {
    let mut opt = Shampoo::new(ops, cfg.clone()).unwrap();
    let ids: Vec<_> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| opt.add_param(&TestRng::new(100 + i as u64).normals(s.iter().product(), 1.0), s).unwrap())
        .collect();
    let mut traj = Vec::new();
    for t in 0..steps {
        let g = grads(t);
        opt.step(&g.iter().map(|v| v.as_slice()).collect::<Vec<_>>()).unwrap();
        traj.push(ids.iter().map(|&id| opt.read(id).unwrap()).collect());
    }
    assert_eq!(opt.root_failures(), 0);
    traj
}

#[test]
fn gpu_matches_cpu_twin_over_refreshes_for_every_graft() {
    let ctx = common::ctx();
    for (graft, nesterov) in [(Graft::Adagrad, true), (Graft::Sgd, false), (Graft::Rmsprop, true)] {
        let cfg = config(graft, nesterov);
        let gpu = run(GpuMats::new(&ctx).unwrap(), &cfg, 10);
        let cpu = run(CpuMats::default(), &cfg, 10);
        for (t, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            for (i, (gp, cp)) in g.iter().zip(c).enumerate() {
                let r = rel(gp, &cp.iter().map(|&v| v as f64).collect::<Vec<_>>());
                // Roots by an iteration to 1e-6, products with sqrt(k)·ε each: 1e-4 relative.
                assert!(r <= 1e-4, "{graft:?} step {} param {i}: GPU vs CPU {r:e}", t + 1);
            }
        }
    }
}

/// Shampoo in f64 with exact (eigendecomposition) roots, written from §7.7 independently of the
/// library's driver.
fn f64_reference(cfg: &ShampooConfig, steps: usize) -> Vec<Vec<Vec<f64>>> {
    struct P {
        cols: usize,
        p: Vec<f64>,
        m: Vec<f64>,
        a: Vec<f64>,
        blocks: Vec<(usize, usize, usize, usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)>,
    }
    let mut ps: Vec<P> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            let (rows, cols) = if s.len() >= 2 { (s[0], n / s[0]) } else { (1, n) };
            let mut blocks = Vec::new();
            if s.len() >= 2 {
                for r0 in (0..rows).step_by(cfg.block_size) {
                    for c0 in (0..cols).step_by(cfg.block_size) {
                        let (h, w) = (cfg.block_size.min(rows - r0), cfg.block_size.min(cols - c0));
                        let eye = |k: usize, v: f64| (0..k * k).map(|j| if j / k == j % k { v } else { 0.0 }).collect();
                        blocks.push((
                            r0,
                            c0,
                            h,
                            w,
                            eye(h, cfg.matrix_eps),
                            eye(w, cfg.matrix_eps),
                            eye(h, 1.0),
                            eye(w, 1.0),
                        ));
                    }
                }
            }
            let p = TestRng::new(100 + i as u64).normals(n, 1.0).iter().map(|&v| v as f64).collect();
            P { cols, p, m: vec![0.0; n], a: vec![0.0; n], blocks }
        })
        .collect();
    let root = |m: &[f64], k: usize| -> Vec<f64> {
        let m32: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        let (values, vectors) = eigen(&m32, k, cfg.matrix_eps);
        spectral(&values, &vectors, |l| l.powf(-0.25))
    };
    let (b2, w2) = (cfg.beta2, if cfg.beta2 == 1.0 { 1.0 } else { 1.0 - cfg.beta2 });
    let mut traj = Vec::new();
    for t in 1..=steps {
        let gs = grads(t - 1);
        for (p, g) in ps.iter_mut().zip(&gs) {
            let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let d: Vec<f64> = match cfg.graft {
                Graft::Sgd => g.clone(),
                Graft::Adagrad | Graft::Rmsprop => {
                    let (decay, weight) = if cfg.graft == Graft::Adagrad { (1.0, 1.0) } else { (b2, w2) };
                    p.a.iter_mut()
                        .zip(&g)
                        .map(|(a, g)| {
                            *a = decay * *a + weight * g * g;
                            g / (a.sqrt() + cfg.diag_eps)
                        })
                        .collect()
                }
            };
            let mut dir = d.clone();
            if !p.blocks.is_empty() {
                let mut s = vec![0.0; g.len()];
                for (r0, c0, h, w, l, r, pl, pr) in p.blocks.iter_mut() {
                    let gb = nalgebra::DMatrix::from_fn(*h, *w, |i, j| g[(*r0 + i) * p.cols + *c0 + j]);
                    let ggt = &gb * gb.transpose();
                    let gtg = gb.transpose() * &gb;
                    for i in 0..*h * *h {
                        l[i] = b2 * l[i] + w2 * ggt[(i / *h, i % *h)];
                    }
                    for i in 0..*w * *w {
                        r[i] = b2 * r[i] + w2 * gtg[(i / *w, i % *w)];
                    }
                    if (t - 1) % cfg.precondition_frequency == 0 {
                        *pl = root(l, *h);
                        *pr = root(r, *w);
                    }
                    let plm = nalgebra::DMatrix::from_row_slice(*h, *h, pl);
                    let prm = nalgebra::DMatrix::from_row_slice(*w, *w, pr);
                    let sb = plm * gb * prm;
                    for i in 0..*h {
                        for j in 0..*w {
                            s[(*r0 + i) * p.cols + *c0 + j] = sb[(i, j)];
                        }
                    }
                }
                // optax: `count >= start_preconditioning_step`, its count (t − 1) 0-based.
                let count = t - 1;
                if count >= cfg.start_preconditioning_step {
                    let nd = d.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let ns = s.iter().map(|v| v * v).sum::<f64>().sqrt();
                    dir = s.iter().map(|v| v * nd / (ns + 1e-16)).collect();
                }
            }
            for i in 0..g.len() {
                // (7.7.6) coupled: wd·p joins the direction before momentum; else decoupled.
                let (d, keep) = if cfg.decoupled_weight_decay {
                    (dir[i], 1.0 - cfg.lr * cfg.weight_decay)
                } else {
                    (dir[i] + cfg.weight_decay * p.p[i], 1.0)
                };
                p.m[i] = cfg.beta1 * p.m[i] + d;
                let u = if cfg.nesterov { d + cfg.beta1 * p.m[i] } else { p.m[i] };
                p.p[i] = keep * p.p[i] - cfg.lr * u;
            }
        }
        traj.push(ps.iter().map(|p| p.p.clone()).collect());
    }
    traj
}

#[test]
fn matches_an_independent_f64_implementation_with_exact_roots() {
    let ctx = common::ctx();
    let summed = |graft| ShampooConfig { beta2: 1.0, ..config(graft, true) };
    // optax's default decay: coupled, and large enough to matter.
    let coupled = ShampooConfig { decoupled_weight_decay: false, weight_decay: 0.5, ..config(Graft::Sgd, true) };
    for cfg in [config(Graft::Adagrad, true), config(Graft::Sgd, false), summed(Graft::Rmsprop), coupled] {
        let graft = cfg.graft;
        let gpu = run(GpuMats::new(&ctx).unwrap(), &cfg, 10);
        let want = f64_reference(&cfg, 10);
        for (t, (g, w)) in gpu.iter().zip(&want).enumerate() {
            for (i, (gp, wp)) in g.iter().zip(w).enumerate() {
                let r = rel(gp, wp);
                // The Newton roots stop at max|M − I| ≤ 1e-6 (κ of L + εI up to ~1e4 here): the
                // trajectories agree to f32 rounding amplified by the roots, asserted at 1e-4.
                assert!(r <= 1e-4, "{graft:?} step {} param {i}: vs f64 reference {r:e}", t + 1);
            }
        }
    }
}

/// optax's step rules: the graft alone for the first `start_preconditioning_step` steps (its count is
/// 0-based); the RMSProp graft's accumulator weighted like the statistics, so at beta2 = 1 it is a
/// sum and the graft is AdaGrad's (a weight of 1 - beta2 = 0 left it at zero, and the update at
/// g / diag_eps).
#[test]
fn preconditioning_starts_after_the_graft_steps_and_rmsprop_at_beta2_one_is_adagrad() {
    let base = ShampooConfig { precondition_frequency: 1, ..config(Graft::Adagrad, true) };
    let never = run(CpuMats::default(), &ShampooConfig { start_preconditioning_step: 100, ..base.clone() }, 4);
    for start in [0, 1, 3] {
        let got = run(CpuMats::default(), &ShampooConfig { start_preconditioning_step: start, ..base.clone() }, 4);
        for t in 0..4 {
            // Parameter 0 (20 x 12) is preconditioned; parameter 2, a vector, never is.
            let same = got[t][0] == never[t][0];
            assert_eq!(same, t < start, "start {start}: step {} graft-only {same}", t + 1);
            assert_eq!(got[t][2], never[t][2]);
        }
    }
    let summed = |graft| ShampooConfig { beta2: 1.0, ..config(graft, true) };
    let (rms, ada) =
        (run(CpuMats::default(), &summed(Graft::Rmsprop), 4), run(CpuMats::default(), &summed(Graft::Adagrad), 4));
    assert_eq!(rms, ada);
    assert!(rms[3][0].iter().all(|v| v.abs() < 10.0), "bounded: {:?}", &rms[3][0][..4]);
}

#[test]
fn nan_gradient_skips_the_step_and_keeps_state() {
    let ctx = common::ctx();
    let cfg = config(Graft::Adagrad, true);
    let mut a = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg.clone()).unwrap();
    let mut b = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg).unwrap();
    let init = TestRng::new(3).normals(30, 1.0);
    let (ia, ib) = (a.add_param(&init, &[6, 5]).unwrap(), b.add_param(&init, &[6, 5]).unwrap());
    let g1 = TestRng::new(4).normals(30, 1.0);
    let g2 = TestRng::new(5).normals(30, 1.0);
    let mut bad = g2.clone();
    bad[7] = f32::NAN;
    a.step(&[&g1]).unwrap();
    a.step(&[&bad]).unwrap();
    a.step(&[&g2]).unwrap();
    b.step(&[&g1]).unwrap();
    b.step(&[&g2]).unwrap();
    assert_eq!(a.skipped_steps(), 1);
    assert_eq!(a.steps(), 2);
    assert_eq!(a.read(ia).unwrap(), b.read(ib).unwrap());
}

#[test]
fn bad_configurations_and_shapes_are_errors() {
    for cfg in [
        ShampooConfig { beta1: 1.0, ..Default::default() },
        ShampooConfig { beta2: 0.0, ..Default::default() },
        ShampooConfig { lr: f64::NAN, ..Default::default() },
        ShampooConfig { block_size: 0, ..Default::default() },
        ShampooConfig { matrix_eps: 0.0, ..Default::default() },
        ShampooConfig { precondition_frequency: 0, ..Default::default() },
    ] {
        assert!(Shampoo::new(CpuMats::default(), cfg).is_err());
    }
    let mut opt = Shampoo::new(CpuMats::default(), ShampooConfig::default()).unwrap();
    assert!(opt.add_param(&[1.0; 5], &[2, 3]).is_err());
    opt.add_param(&[1.0; 6], &[2, 3]).unwrap();
    assert!(opt.step(&[&[1.0; 5]]).is_err());
    assert!(opt.step(&[]).is_err());
}

#[test]
fn checkpoint_resumes_bit_identically_and_refuses_mismatches() {
    let ctx = common::ctx();
    let cfg = config(Graft::Adagrad, true);
    let make = || {
        let mut s = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg.clone()).unwrap();
        let ids: Vec<_> = SHAPES
            .iter()
            .enumerate()
            .map(|(i, sh)| s.add_param(&TestRng::new(100 + i as u64).normals(sh.iter().product(), 1.0), sh).unwrap())
            .collect();
        (s, ids)
    };
    let step = |s: &mut Shampoo<GpuMats>, t: usize| {
        let g = grads(t);
        s.step(&g.iter().map(|v| v.as_slice()).collect::<Vec<_>>()).unwrap();
    };
    let (mut a, ids) = make();
    for t in 0..4 {
        step(&mut a, t);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shampoo.safetensors");
    a.save(&path).unwrap();
    let (mut b, _) = make();
    b.load(&path).unwrap();
    assert_eq!(b.steps(), 4);
    for t in 4..8 {
        step(&mut a, t);
        step(&mut b, t);
    }
    for &id in &ids {
        assert_eq!(a.read(id).unwrap(), b.read(id).unwrap());
    }
    // A Shampoo with another block size or other parameters refuses the file and stays as it was.
    let mut other = Shampoo::new(GpuMats::new(&ctx).unwrap(), ShampooConfig { block_size: 4, ..cfg.clone() }).unwrap();
    let oid = other.add_param(&[1.0; 240], &[20, 12]).unwrap();
    for sh in &SHAPES[1..] {
        other.add_param(&vec![1.0; sh.iter().product()], sh).unwrap();
    }
    assert!(other.load(&path).is_err());
    assert_eq!(other.read(oid).unwrap(), vec![1.0; 240]);
    let mut fewer = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg.clone()).unwrap();
    fewer.add_param(&[1.0; 240], &[20, 12]).unwrap();
    assert!(fewer.load(&path).is_err());
    // A corrupt file is an error.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let (mut c, _) = make();
    assert!(c.load(&path).is_err());
}

#[test]
fn long_runs_do_not_grow_the_backend_and_bad_statistics_keep_the_old_root() {
    let ctx = common::ctx();
    let cfg = ShampooConfig { precondition_frequency: 1, start_preconditioning_step: 1, ..config(Graft::Sgd, false) };
    let mut opt = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg.clone()).unwrap();
    let w = opt.add_param(&TestRng::new(1).normals(30, 1.0), &[6, 5]).unwrap();
    let g = TestRng::new(2).normals(30, 1.0);
    opt.step(&[&g]).unwrap();
    let mats = opt.backend().mark();
    for _ in 0..5 {
        opt.step(&[&g]).unwrap();
    }
    assert_eq!(opt.backend().mark(), mats, "every step's scratch matrices are released");
    // A NaN written straight into the gradient is caught by step_in_place too: the step is skipped
    // and nothing changes.
    let grad = opt.grad_mat(w);
    let before = opt.read(w).unwrap();
    let (steps, skipped) = (opt.steps(), opt.skipped_steps());
    let nan = opt.backend().upload(&[f32::NAN; 30], 1, 6, 5).unwrap();
    opt.backend().affine(grad, Some(nan), 1.0, gpuopt::roots::Scale::One, 0.0, 0.0).unwrap();
    opt.step_in_place().unwrap();
    assert_eq!((opt.steps(), opt.skipped_steps()), (steps, skipped + 1));
    assert_eq!(opt.read(w).unwrap(), before);
    // A finite gradient of 1e18 is not skipped, but its statistics (entries ≈ 5e36, near the top of
    // f32's range) make the root fail: the failure is counted and the old roots stay; no error, no panic.
    let huge = opt.backend().upload(&[1e18; 30], 1, 6, 5).unwrap();
    opt.backend().affine(grad, Some(huge), 1.0, gpuopt::roots::Scale::One, 0.0, 0.0).unwrap();
    opt.step_in_place().unwrap();
    assert_eq!(opt.steps(), steps + 1);
    assert!(opt.root_failures() >= 1);
    // The failure count survives a checkpoint (and one without it reads as 0).
    let mut snap = opt.snapshot().unwrap();
    let mut other = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg.clone()).unwrap();
    other.add_param(&[0.0; 30], &[6, 5]).unwrap();
    other.restore(snap.clone()).unwrap();
    assert_eq!((other.root_failures(), other.steps()), (opt.root_failures(), opt.steps()));
    snap.hyper.as_object_mut().unwrap().remove("root_failures");
    other.restore(snap.clone()).unwrap();
    assert_eq!(other.root_failures(), 0);
    snap.hyper["root_failures"] = serde_json::json!("many");
    assert!(other.restore(snap).is_err());
}
