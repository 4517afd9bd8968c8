//! Shampoo: GPU vs the CPU twin over several root refreshes (blocked and whole matrices, vectors,
//! merged dimensions, rank-3 and rank-4 blocks, skipped parameters, every graft), against an
//! independent f64 implementation whose roots come from an eigendecomposition, the NaN-gradient
//! skip, and bad configurations.
// The f64 reference is written index by index, like the equations.
#![allow(clippy::type_complexity, clippy::needless_range_loop)]

mod common;

use common::rel;

use gpuopt::kernels::roots::GpuMats;
use gpuopt::optim::shampoo::{Graft, Shampoo, ShampooConfig};
use gpuopt::optim::{GroupId, ParamId, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::reference::roots::{eigen, spectral, CpuMats};
use gpuopt::roots::MatOps;

/// With `merge_small_dims_block_size` 8, `block_size` 8 and `skip_preconditioning_dim_size_gt` 32:
/// a blocked matrix, a one-block matrix, a skipped vector (40 > 32), a vector, a vector in three
/// blocks, a matrix merged into a vector ([6]), rank 3 blocked along its first and last dimensions
/// ([10, 3, 9]) and along its last two ([3, 10, 12]), rank 4 blocked along its first and third
/// ([9, 3, 9, 3]: the block copies loop over the first), rank 5 ([9, 3, 9, 3, 9]: they loop over two
/// dimensions), and a scalar (rank 0: the graft alone).
const SHAPES: &[&[usize]] =
    &[&[20, 12], &[6, 5], &[40], &[7], &[20], &[2, 3], &[10, 3, 9], &[3, 10, 12], &[9, 3, 9, 3], &[9, 3, 9, 3, 9], &[]];
const SKIPPED: usize = 2;

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
        merge_small_dims_block_size: 8,
        skip_preconditioning_dim_size_gt: 32,
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
    for (graft, nesterov) in [
        (Graft::Adagrad, true),
        (Graft::Sgd, false),
        (Graft::Rmsprop, true),
        (Graft::SqrtN, true),
        (Graft::AdagradNormalized, false),
        (Graft::RmspropNormalized, true),
    ] {
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

/// Row-major strides of a shape.
fn strides(d: &[usize]) -> Vec<usize> {
    (0..d.len()).map(|i| d[i + 1..].iter().product()).collect()
}

/// X ×_i M for a tensor x of shape d: y[.., a, ..] = Σ_b M[b, a]·x[.., b, ..] (optax's
/// `tensordot(x, M, axes=[[0], [0]])` on mode i).
fn mode_product(x: &[f64], d: &[usize], i: usize, m: &[f64]) -> Vec<f64> {
    let st = strides(d)[i];
    (0..x.len())
        .map(|idx| {
            let a = idx / st % d[i];
            let base = idx - a * st;
            (0..d[i]).map(|b| m[b * d[i] + a] * x[base + b * st]).sum()
        })
        .collect()
}

/// G_(i)·G_(i)ᵀ: Σ over all other indices of x[.., a, ..]·x[.., b, ..].
fn mode_gram(x: &[f64], d: &[usize], i: usize) -> Vec<f64> {
    let st = strides(d)[i];
    let mut g = vec![0.0; d[i] * d[i]];
    for base in (0..x.len()).filter(|idx| (idx / st).is_multiple_of(d[i])) {
        for a in 0..d[i] {
            for b in 0..d[i] {
                g[a * d[i] + b] += x[base + a * st] * x[base + b * st];
            }
        }
    }
    g
}

/// Shampoo in f64 with exact (eigendecomposition) roots, written from §7.7 and optax's
/// `merge_small_dims` / `BlockPartitioner` / `Preconditioner` independently of the library's driver.
fn f64_reference(cfg: &ShampooConfig, steps: usize) -> Vec<Vec<Vec<f64>>> {
    struct Blk {
        at: Vec<usize>,
        size: Vec<usize>,
        stats: Vec<Vec<f64>>,
        roots: Vec<Vec<f64>>,
    }
    struct P {
        dims: Vec<usize>,
        p: Vec<f64>,
        m: Vec<f64>,
        /// optax's diagonal_momentum (the graft's).
        mg: Vec<f64>,
        a: Vec<f64>,
        blocks: Vec<Blk>,
    }
    let merge = |shape: &[usize]| -> Vec<usize> {
        if !shape.is_empty() && shape.iter().all(|&d| d == 1) {
            return vec![1];
        }
        let (mut out, mut prod) = (Vec::new(), 1);
        for &d in shape {
            if prod * d <= cfg.merge_small_dims_block_size {
                prod *= d;
            } else {
                if prod > 1 {
                    out.push(prod);
                }
                prod = d;
            }
        }
        if prod > 1 {
            out.push(prod);
        }
        out
    };
    let eye = |k: usize, v: f64| -> Vec<f64> { (0..k * k).map(|j| if j / k == j % k { v } else { 0.0 }).collect() };
    let mut ps: Vec<P> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            let skip = s.len() < cfg.skip_preconditioning_rank_lt
                || s.iter().any(|&d| d > cfg.skip_preconditioning_dim_size_gt);
            let dims = if skip { vec![] } else { merge(s) };
            // Offsets: every dimension cut into pieces of block_size, row-major.
            let mut ats: Vec<Vec<usize>> = if dims.is_empty() { vec![] } else { vec![vec![]] };
            for &d in &dims {
                ats = ats
                    .into_iter()
                    .flat_map(|at| (0..d).step_by(cfg.block_size).map(move |o| [at.clone(), vec![o]].concat()))
                    .collect();
            }
            let blocks = ats
                .into_iter()
                .map(|at| {
                    let size: Vec<usize> = at.iter().zip(&dims).map(|(&o, &d)| cfg.block_size.min(d - o)).collect();
                    Blk {
                        stats: size.iter().map(|&k| eye(k, cfg.matrix_eps)).collect(),
                        roots: size.iter().map(|&k| eye(k, 1.0)).collect(),
                        at,
                        size,
                    }
                })
                .collect();
            let p = TestRng::new(100 + i as u64).normals(n, 1.0).iter().map(|&v| v as f64).collect();
            P { dims, p, m: vec![0.0; n], mg: vec![0.0; n], a: vec![0.0; n], blocks }
        })
        .collect();
    let root = |m: &[f64], k: usize, order: usize| -> Vec<f64> {
        let m32: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        // optax's relative ridge: matrix_eps·λ_max.
        let ridge = if cfg.relative_matrix_epsilon {
            cfg.matrix_eps * eigen(&m32, k, 0.0).0.iter().cloned().fold(0.0, f64::max)
        } else {
            cfg.matrix_eps
        };
        let (values, vectors) = eigen(&m32, k, ridge);
        spectral(&values, &vectors, |l| l.powf(-1.0 / order as f64))
    };
    let (b2, w2) = (cfg.beta2, if cfg.beta2 == 1.0 { 1.0 } else { 1.0 - cfg.beta2 });
    let mut traj = Vec::new();
    for t in 1..=steps {
        let gs = grads(t - 1);
        for (p, g) in ps.iter_mut().zip(&gs) {
            let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let d: Vec<f64> = match cfg.graft {
                Graft::Sgd => g.clone(),
                Graft::SqrtN => g
                    .iter()
                    .map(|&v| {
                        if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                    })
                    .collect(),
                Graft::Adagrad | Graft::Rmsprop | Graft::AdagradNormalized | Graft::RmspropNormalized => {
                    let adagrad = matches!(cfg.graft, Graft::Adagrad | Graft::AdagradNormalized);
                    let (decay, weight) = if adagrad { (1.0, 1.0) } else { (b2, w2) };
                    // optax's *_NORMALIZED: the graft runs on g/‖g‖.
                    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let normalised = matches!(cfg.graft, Graft::AdagradNormalized | Graft::RmspropNormalized);
                    let x: Vec<f64> = g.iter().map(|v| if normalised { v / norm } else { *v }).collect();
                    let d: Vec<f64> =
                        p.a.iter_mut()
                            .zip(&x)
                            .map(|(a, g)| {
                                *a = decay * *a + weight * g * g;
                                g / (a.sqrt() + cfg.diag_eps)
                            })
                            .collect();
                    // optax's clip_by_scaled_gradient_norm: the update's RMS at most c.
                    let rms = (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64).sqrt();
                    let clip = cfg.clip_by_scaled_gradient_norm.filter(|_| !adagrad);
                    let denom = clip.map_or(1.0, |c| (rms / c).max(1.0));
                    d.iter().map(|v| v / denom).collect()
                }
            };
            // optax's precond_grad: the blocks' mode products, or D for a graft-only parameter.
            let mut s = d.clone();
            if !p.blocks.is_empty() {
                let full_st = strides(&p.dims);
                let order = if cfg.exponent_override > 0 { cfg.exponent_override } else { 2 * p.dims.len() };
                for blk in p.blocks.iter_mut() {
                    // The block's flat indices in the parameter.
                    let bst = strides(&blk.size);
                    let count: usize = blk.size.iter().product();
                    let index: Vec<usize> = (0..count)
                        .map(|j| (0..blk.size.len()).map(|m| (blk.at[m] + j / bst[m] % blk.size[m]) * full_st[m]).sum())
                        .collect();
                    let gb: Vec<f64> = index.iter().map(|&f| g[f]).collect();
                    for (m, (stat, root_m)) in blk.stats.iter_mut().zip(blk.roots.iter_mut()).enumerate() {
                        if (t - 1) % cfg.statistics_compute_steps == 0 {
                            let gram = mode_gram(&gb, &blk.size, m);
                            for (s, v) in stat.iter_mut().zip(gram) {
                                *s = b2 * *s + w2 * v;
                            }
                        }
                        if (t - 1) % cfg.precondition_frequency == 0 {
                            *root_m = root(stat, blk.size[m], order);
                        }
                    }
                    let mut sb = gb;
                    for m in 0..blk.size.len() {
                        sb = mode_product(&sb, &blk.size, m, &blk.roots[m]);
                    }
                    for (&f, v) in index.iter().zip(sb) {
                        s[f] = v;
                    }
                }
            }
            // (7.7.5) grafting, then optax's `_transform_grad` step by step: both momenta from the
            // old state, `run_shampoo` (its count, t − 1, at least start_preconditioning_step) selecting.
            let nd = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            let ns = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            let run = t > cfg.start_preconditioning_step;
            for i in 0..g.len() {
                let (mut sd, mut dd) = (s[i] * nd / (ns + 1e-16), d[i]);
                // (7.7.6) coupled: wd·p joins both directions before momentum; else decoupled.
                let keep = if cfg.decoupled_weight_decay {
                    1.0 - cfg.lr * cfg.weight_decay
                } else {
                    sd += cfg.weight_decay * p.p[i];
                    dd += cfg.weight_decay * p.p[i];
                    1.0
                };
                let w = if cfg.moving_average_for_momentum { 1.0 - cfg.beta1 } else { 1.0 };
                let sm = cfg.beta1 * p.m[i] + w * sd;
                let gm = cfg.beta1 * p.mg[i] + w * dd;
                let (update, momentum) = if run { (sd, sm) } else { (dd, gm) };
                (p.m[i], p.mg[i]) = (sm, gm);
                let u = if cfg.nesterov { w * update + cfg.beta1 * momentum } else { momentum };
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
    // optax's other knobs: statistics every other step, a fixed root order, averaged momentum.
    let knobs = ShampooConfig {
        statistics_compute_steps: 2,
        exponent_override: 3,
        moving_average_for_momentum: true,
        relative_matrix_epsilon: true,
        ..config(Graft::Adagrad, true)
    };
    // optax's other grafts.
    let others = [Graft::SqrtN, Graft::AdagradNormalized, Graft::RmspropNormalized].map(|g| config(g, true));
    // The RMSProp graft's RMS clipped (at beta2 0.99 its first steps have an RMS near 10).
    let clipped = ShampooConfig { clip_by_scaled_gradient_norm: Some(2.0), ..config(Graft::Rmsprop, false) };
    for cfg in
        [config(Graft::Adagrad, true), config(Graft::Sgd, false), summed(Graft::Rmsprop), coupled, knobs, clipped]
            .into_iter()
            .chain(others)
    {
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
            // Parameter 0 (20 x 12) is preconditioned; the skipped one never is.
            let same = got[t][0] == never[t][0];
            assert_eq!(same, t < start, "start {start}: step {} graft-only {same}", t + 1);
            assert_eq!(got[t][SKIPPED], never[t][SKIPPED]);
        }
    }
    let summed = |graft| ShampooConfig { beta2: 1.0, ..config(graft, true) };
    let (rms, ada) =
        (run(CpuMats::default(), &summed(Graft::Rmsprop), 4), run(CpuMats::default(), &summed(Graft::Adagrad), 4));
    assert_eq!(rms, ada);
    assert!(rms[3][0].iter().all(|v| v.abs() < 10.0), "bounded: {:?}", &rms[3][0][..4]);
}

/// Shampoo as a Stepper: the same trajectory as its own `step(&grads)`, state readable by its
/// checkpoint names, parameters writable, bad ids / lengths / states refused, a NaN gradient skips.
#[test]
fn stepper_interface_matches_the_host_step() {
    let cfg = config(Graft::Adagrad, true);
    let (mut a, mut b) = (Shampoo::cpu(cfg.clone()).unwrap(), Shampoo::cpu(cfg).unwrap());
    let shapes: [&[usize]; 2] = [&[6, 5], &[]];
    let (mut ids, mut a_ids) = (Vec::new(), Vec::new());
    for (i, sh) in shapes.iter().enumerate() {
        let init = TestRng::new(40 + i as u64).normals(sh.iter().product(), 1.0);
        a_ids.push(a.add_param(&init, sh).unwrap());
        ids.push(ParamId::from(b.add_named_param(&format!("w{i}"), &init, sh).unwrap()));
    }
    assert!(b.add_named_param("w0", &[1.0], &[1]).is_err(), "names are unique");
    let names: Vec<&str> = b.params().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["w0", "w1"]);
    for t in 0..4 {
        let g: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, sh)| TestRng::new(50 + 10 * t + i as u64).normals(sh.iter().product(), 1.0))
            .collect();
        a.step(&[&g[0], &g[1]]).unwrap();
        for (id, g) in ids.iter().zip(&g) {
            b.write_grad(*id, g).unwrap();
        }
        Stepper::step(&mut b).unwrap();
    }
    for (&id, &a_id) in ids.iter().zip(&a_ids) {
        assert_eq!(b.read_param(id).unwrap(), a.read(a_id).unwrap());
    }
    assert_eq!(b.step_count().unwrap(), 4);
    let st = b.read_state(ids[0], "graft_momentum").unwrap();
    assert_eq!(st.len(), 30);
    assert!(st.iter().any(|&v| v != 0.0));
    assert_eq!(b.read_state(ids[0], "l/0").unwrap().len(), 36);
    // The scalar is driven by its graft alone: no graft momentum, and the error lists what it has.
    let e = b.read_state(ids[1], "graft_momentum").unwrap_err().to_string();
    assert!(e.contains("momentum, graft"), "{e}");
    assert!(b.read_param(ParamId(2)).is_err());
    assert!(b.write_grad(ids[0], &[0.0; 29]).is_err());
    b.write_param(ids[0], &[0.25; 30]).unwrap();
    assert_eq!(b.read_param(ids[0]).unwrap(), vec![0.25; 30]);
    // A NaN gradient is refused and skips the next step.
    let mut bad = vec![0.1; 30];
    bad[3] = f32::NAN;
    b.write_grad(ids[0], &bad).unwrap();
    Stepper::step(&mut b).unwrap();
    assert!(b.found_non_finite().unwrap());
    assert_eq!((b.step_count().unwrap(), Stepper::skipped_steps(&mut b).unwrap()), (4, 1));
    assert_eq!(b.read_param(ids[0]).unwrap(), vec![0.25; 30]);
}

/// The shared NaN/Inf contract of the Steppers (a refused gradient skips the step and keeps every
/// state, survives a restore, is cleared by a finite rewrite), on both backends.
#[test]
fn non_finite_gradients_follow_the_stepper_contract() {
    let ctx = common::ctx();
    let shapes: [&[usize]; 3] = [&[6, 5], &[7], &[]];
    let grads: Vec<Vec<f32>> =
        shapes.iter().enumerate().map(|(i, s)| TestRng::new(70 + i as u64).normals(s.iter().product(), 1.0)).collect();
    let states = ["momentum", "graft", "graft_momentum", "l/0", "pl/0"];
    let cfg = ShampooConfig { start_preconditioning_step: 0, ..config(Graft::Adagrad, true) };
    let mut gpu = Shampoo::gpu(&ctx, cfg.clone()).unwrap();
    let mut cpu = Shampoo::cpu(cfg).unwrap();
    for (i, sh) in shapes.iter().enumerate() {
        let init = TestRng::new(80 + i as u64).normals(sh.iter().product(), 1.0);
        gpu.add_param(&init, sh).unwrap();
        cpu.add_param(&init, sh).unwrap();
    }
    common::assert_non_finite_skips(&mut gpu, &grads, &states);
    common::assert_non_finite_skips(&mut cpu, &grads, &states);
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
        ShampooConfig { statistics_compute_steps: 0, ..Default::default() },
        ShampooConfig { exponent_override: 33, ..Default::default() },
        // Clipping applies to the rmsprop grafts only, and needs a positive normal f32.
        ShampooConfig { clip_by_scaled_gradient_norm: Some(1.0), graft: Graft::Adagrad, ..Default::default() },
        ShampooConfig { clip_by_scaled_gradient_norm: Some(0.0), graft: Graft::Rmsprop, ..Default::default() },
    ] {
        assert!(Shampoo::new(CpuMats::default(), cfg).is_err());
    }
    let mut opt = Shampoo::new(CpuMats::default(), ShampooConfig::default()).unwrap();
    // A schedule's bad value is refused and changes nothing; Shampoo has one group.
    assert!(opt.set_lr(GroupId(0), f64::NAN).is_err() && opt.set_lr(GroupId(0), -1.0).is_err());
    assert!(opt.set_weight_decay(GroupId(0), f64::INFINITY).is_err());
    assert!(opt.set_lr(GroupId(1), 0.1).is_err());
    opt.set_lr(GroupId(0), 0.5).unwrap();
    let hyper = opt.snapshot().unwrap().hyper;
    assert_eq!((hyper["lr"].as_f64(), hyper["weight_decay"].as_f64()), (Some(0.5), Some(0.0)));
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

/// optax's inverse_failure_threshold: below every root's residual, each refresh fails and the
/// roots stay at their initial identity; at its default none fails. Bad values are refused.
#[test]
fn inverse_failure_threshold_decides_which_roots_are_kept() {
    let run = |threshold: f64| {
        let cfg = ShampooConfig {
            precondition_frequency: 1,
            inverse_failure_threshold: threshold,
            ..config(Graft::Sgd, false)
        };
        let mut opt = Shampoo::cpu(cfg).unwrap();
        let w = ParamId::from(opt.add_param(&TestRng::new(1).normals(30, 1.0), &[6, 5]).unwrap());
        for t in 0..3 {
            opt.step(&[&TestRng::new(2 + t).normals(30, 1.0)]).unwrap();
        }
        (opt.root_failures(), opt.read_state(w, "pl/0").unwrap())
    };
    let eye: Vec<f32> = (0..36).map(|i| if i / 6 == i % 6 { 1.0 } else { 0.0 }).collect();
    let (failures, root) = run(1e-30);
    assert_eq!((failures, root), (6, eye.clone()), "two statistics, three refreshes, all refused");
    let (failures, root) = run(0.1);
    assert_eq!(failures, 0);
    assert_ne!(root, eye);
    for bad in [0.0, -0.1, f64::NAN, 1e-45] {
        let cfg = ShampooConfig { inverse_failure_threshold: bad, ..Default::default() };
        assert!(Shampoo::cpu(cfg).is_err(), "threshold {bad}");
    }
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

/// Checkpoints from before dimension merging carry no layout keys: they load into a Shampoo set up
/// with the layout they had (no merging, vectors and scalars graft-only, no size skip), and any other
/// layout setting is refused, naming it. A rank above 16 after merging (a root order above 32) is
/// refused when the parameter is added.
#[test]
fn checkpoints_check_the_layout_settings_and_old_ones_still_load() {
    let legacy = ShampooConfig {
        best_effort_shape_interpretation: false,
        skip_preconditioning_dim_size_gt: usize::MAX,
        skip_preconditioning_rank_lt: 2,
        block_size: 4,
        start_preconditioning_step: 1,
        ..Default::default()
    };
    let make = |cfg: &ShampooConfig| {
        let mut s = Shampoo::new(CpuMats::default(), cfg.clone()).unwrap();
        let w = s.add_param(&TestRng::new(1).normals(30, 1.0), &[6, 5]).unwrap();
        s.add_param(&TestRng::new(2).normals(7, 1.0), &[7]).unwrap();
        (s, w)
    };
    let (mut a, w) = make(&legacy);
    for t in 0..3 {
        a.step(&[&TestRng::new(10 + t).normals(30, 1.0), &TestRng::new(20 + t).normals(7, 1.0)]).unwrap();
    }
    let mut snap = a.snapshot().unwrap();
    for key in [
        "best_effort_shape_interpretation",
        "merge_small_dims_block_size",
        "skip_preconditioning_dim_size_gt",
        "skip_preconditioning_rank_lt",
    ] {
        assert!(snap.hyper.as_object_mut().unwrap().remove(key).is_some(), "{key} is saved");
    }
    // Nor had they a graft momentum (one buffer, fed by the graft, then by Shampoo): it seeds both.
    let before: usize = snap.states.iter().map(Vec::len).sum();
    for st in &mut snap.states {
        st.retain(|(name, _)| name != "graft_momentum");
    }
    assert_eq!(snap.states.iter().map(Vec::len).sum::<usize>(), before - 1, "the matrix's graft momentum is saved");
    let (mut b, _) = make(&legacy);
    b.restore(snap.clone()).unwrap();
    let state = |s: &mut Shampoo<CpuMats>, name: &str| {
        let snap = s.snapshot().unwrap();
        snap.states[0].iter().find(|(n, _)| n == name).unwrap().1.clone()
    };
    assert_eq!(state(&mut b, "graft_momentum"), state(&mut a, "momentum"));
    let g = [TestRng::new(30).normals(30, 1.0), TestRng::new(31).normals(7, 1.0)];
    a.step(&[&g[0], &g[1]]).unwrap();
    b.step(&[&g[0], &g[1]]).unwrap();
    assert_eq!(b.read(w).unwrap(), a.read(w).unwrap());
    // Today's defaults merge the 6x5 matrix into a vector: other blocks, refused, naming the settings.
    let (mut c, _) = make(&ShampooConfig { block_size: 4, ..Default::default() });
    let e = c.restore(snap).unwrap_err().to_string();
    assert!(e.contains("param0 of shape [6, 5]") && e.contains("other blocks"), "{e}");
    assert!(
        e.contains("best_effort_shape_interpretation false") && e.contains("skip_preconditioning_rank_lt 2"),
        "{e}"
    );
    // Settings that differ but give the same blocks (no merging: its size does not matter) load.
    let snap = a.snapshot().unwrap();
    let (mut d, _) = make(&ShampooConfig { merge_small_dims_block_size: 16, ..legacy.clone() });
    d.restore(snap.clone()).unwrap();
    // Another block size gives other blocks: refused.
    let (mut e2, _) = make(&ShampooConfig { block_size: 2, ..legacy.clone() });
    assert!(e2.restore(snap).unwrap_err().to_string().contains("other blocks"));
    let mut opt = Shampoo::new(CpuMats::default(), legacy.clone()).unwrap();
    let e = opt.add_param(&[1.0; 1 << 17], &[2; 17]).unwrap_err().to_string();
    assert!(e.contains("rank 17") && e.contains("at most 32"), "{e}");
    // With an exponent_override it is taken, and a checkpoint without one cannot make it rank 17's.
    let overridden = ShampooConfig { exponent_override: 4, ..legacy };
    let mut opt = Shampoo::new(CpuMats::default(), overridden.clone()).unwrap();
    opt.add_param(&[1.0; 1 << 17], &[2; 17]).unwrap();
    let mut snap = opt.snapshot().unwrap();
    opt.restore(snap.clone()).unwrap();
    snap.hyper["exponent_override"] = serde_json::json!(0);
    let e = opt.restore(snap).unwrap_err().to_string();
    assert!(e.contains("rank 17") && e.contains("exponent_override 0"), "{e}");
}

/// A block whose middle-mode products would put more matrices in one grid dimension than the GPU
/// allows is refused when the parameter is added, saying what to change.
#[test]
fn blocks_too_deep_for_the_grid_are_refused() {
    let ctx = common::ctx();
    let cfg = ShampooConfig {
        best_effort_shape_interpretation: false,
        skip_preconditioning_dim_size_gt: usize::MAX,
        block_size: 100_000,
        ..Default::default()
    };
    let mut opt = Shampoo::new(GpuMats::new(&ctx).unwrap(), cfg).unwrap();
    let e = opt.add_param(&vec![0.0; 280_000], &[70_000, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("batches of 70000") && e.contains("smaller block_size"), "{e}");
    // Refused before anything was allocated for it: the optimizer takes other parameters.
    opt.add_param(&[0.0; 12], &[3, 2, 2]).unwrap();
    opt.step(&[&[1.0; 12]]).unwrap();
}

/// Same-size statistics are rooted in one batched iteration, but one parameter's infinite
/// statistics (a finite gradient of 1e20, whose squares overflow, which would make the batch be
/// refused whole) must not stop the refresh of another's: that one's roots still change, and only
/// the bad parameter's are counted as failed.
#[test]
fn one_bad_statistic_does_not_stop_the_others_roots() {
    let cfg = ShampooConfig { precondition_frequency: 1, start_preconditioning_step: 0, ..config(Graft::Sgd, false) };
    let run = |huge: bool| {
        let mut opt = Shampoo::new(CpuMats::default(), cfg.clone()).unwrap();
        let a = opt.add_param(&TestRng::new(1).normals(30, 1.0), &[6, 5]).unwrap();
        opt.add_param(&TestRng::new(2).normals(30, 1.0), &[6, 5]).unwrap();
        let g = TestRng::new(3).normals(30, 1.0);
        opt.step(&[&g, &g]).unwrap();
        let bad = if huge { vec![1e20; 30] } else { g.clone() };
        let g2 = TestRng::new(4).normals(30, 1.0);
        opt.step(&[&g2, &bad]).unwrap();
        (opt.read(a).unwrap(), opt.root_failures())
    };
    let (clean, none) = run(false);
    let (mixed, failures) = run(true);
    assert_eq!(none, 0);
    // The bad parameter's two statistics fail (L and R); the good one's refresh as without it.
    assert_eq!(failures, 2);
    assert_eq!(mixed, clean);
}
