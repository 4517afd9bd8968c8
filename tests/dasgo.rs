//! DASGO (ALGORITHMS.md §5.7, ASGO's diagonal variant): the GPU against its CPU twin and an f64 model
//! written here from the equations, over awkward sizes (1×1 … a 1×16,777,217 parameter whose column
//! pass needs more than 65,535 workgroups; column counts below, at and above the 256-element stride
//! of the element passes; their chunk grid folded into rows of 3 workgroups); a closed-form first
//! step; zero and NaN gradients; stacks of same-shape parameters against each one alone (bit for
//! bit), split at the binding and grid limits, grown by parameters added after steps;
//! checkpoints; replay; bad input.
//!
//! Tolerances, relative to the movement ‖p_t − p_0‖ (each step moves lr·0.2 in RMS): the GPU and the
//! twin run the same operations in the same order except the norm's summation (f32 partial sums per
//! workgroup against the twin's f64 sum); the f64 model differs by the f32 rounding of a few
//! operations per step. Both are bounded by 1e-5 plus the floor f32 puts under any trajectory: p
//! itself (|p| ≤ 1 here) is rounded to ε·|p| each step, 4·ε/(0.2·lr) relative to a step's movement.

mod common;

use gpuopt::optim::dasgo::column_bands;
use gpuopt::optim::{Dasgo, DasgoConfig, GroupId, ParamId, Stepper};
use gpuopt::parity::TestRng;
use gpuopt::{ContextOptions, Error};

const EPS: f32 = f32::EPSILON;

fn cfg() -> DasgoConfig {
    DasgoConfig { lr: 0.05, momentum: 0.8, beta2: 0.7, eps: 1e-6, weight_decay: 0.1 }
}

/// DASGO in f64 from §5.7's equations.
struct Model {
    c: DasgoConfig,
    rows: usize,
    cols: usize,
    p: Vec<f64>,
    d: Vec<f64>,
    m: Vec<f64>,
}

impl Model {
    fn new(c: DasgoConfig, p: &[f32], rows: usize, cols: usize) -> Self {
        Model { c, rows, cols, p: p.iter().map(|&x| x as f64).collect(), d: vec![0.0; cols], m: vec![0.0; rows * cols] }
    }

    fn step(&mut self, g: &[f32]) {
        let (rows, cols) = (self.rows, self.cols);
        for j in 0..cols {
            let s: f64 = (0..rows).map(|i| (g[i * cols + j] as f64).powi(2)).sum();
            self.d[j] = self.c.beta2 * self.d[j] + (1.0 - self.c.beta2) * s;
        }
        for (m, g) in self.m.iter_mut().zip(g) {
            *m = self.c.momentum * *m + (1.0 - self.c.momentum) * *g as f64;
        }
        let u: Vec<f64> = (0..rows * cols).map(|k| self.m[k] / (self.d[k % cols] + self.c.eps).sqrt()).collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        let scale = 0.2 * ((rows * cols) as f64).sqrt() / norm;
        for (p, u) in self.p.iter_mut().zip(&u) {
            *p = *p * (1.0 - self.c.lr * self.c.weight_decay) - self.c.lr * scale * u;
        }
    }
}

fn data(rows: usize, cols: usize, steps: usize, seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = TestRng::new(seed);
    let p = rng.uniforms(rows * cols, 1.0);
    let g = (0..steps).map(|t| rng.uniforms(rows * cols, 0.1 * (1.0 + t as f32))).collect();
    (p, g)
}

fn dist(x: &[f32], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn gpu_matches_cpu_twin_and_f64_model_over_awkward_sizes() {
    let ctx = common::ctx();
    // (rows, cols, steps): 1 × 16,777,217 needs 65,537 workgroups of 256 in the column pass and 4,097
    // chunks of 4,096 in the element passes; 3 × 256 has 256 mod cols = 0; 300 × 300 has cols > 256
    // (each invocation's column advances by 256, wrapping past the row's end). Columns a multiple of
    // 4 walk vec4s: 3 × 256 (256 mod 64 = 0), 300 × 300 (75 vec4s a row, 256 mod 75 = 31), 3 × 1028
    // (257 a row, 256 mod 257 = 256: every invocation but the first wraps at its first step),
    // 70 × 20 (5). The column sums split
    // into bands of rows: 300 × 300 into 9 (34 rows, the last 28), 1000 × 7 into 31 (33 rows, the
    // last 10), 2000 × 1 into 61 (33, the last 20), 70 × 20 into 2 (35); the others keep one.
    for &(rows, cols, steps) in &[
        (1, 1, 12),
        (1, 5, 12),
        (7, 3, 12),
        (37, 53, 12),
        (70, 20, 12),
        (3, 256, 6),
        (300, 300, 4),
        (3, 1028, 4),
        (1000, 7, 3),
        (2000, 1, 3),
        (1, 16_777_217, 2),
    ] {
        let (p0, gs) = data(rows, cols, steps, (rows * 31 + cols) as u64);
        let mut gpu = Dasgo::gpu(&ctx, cfg()).unwrap();
        let mut cpu = Dasgo::cpu(cfg()).unwrap();
        let ig = gpu.add_param("w", &p0, &[rows, cols]).unwrap();
        let ic = cpu.add_param("w", &p0, &[rows, cols]).unwrap();
        let mut model = Model::new(cfg(), &p0, rows, cols);
        let mut worst = (0.0f64, 0.0f64);
        let bound = 1e-5 + 4.0 * EPS as f64 / (0.2 * cfg().lr);
        for (t, g) in gs.iter().enumerate() {
            for (o, id) in [(&mut gpu, ig), (&mut cpu, ic)] {
                o.write_grad(id, g).unwrap();
                o.step().unwrap();
            }
            model.step(g);
            let (pg, pc) = (gpu.read_param(ig).unwrap(), cpu.read_param(ic).unwrap());
            let moved = dist(&p0, &model.p);
            let pc64: Vec<f64> = pc.iter().map(|&x| x as f64).collect();
            let (eg, ec) = (dist(&pg, &pc64) / moved, dist(&pc, &model.p) / moved);
            worst = (worst.0.max(eg), worst.1.max(ec));
            assert!(eg < bound, "{rows}x{cols} step {}: GPU vs CPU twin {eg:e} of the movement", t + 1);
            assert!(ec < bound, "{rows}x{cols} step {}: CPU twin vs f64 model {ec:e} of the movement", t + 1);
        }
        eprintln!("{rows}x{cols}: worst GPU-CPU {:e}, CPU-f64 {:e}", worst.0, worst.1);
        assert_eq!(gpu.read_state(ig, "precond").unwrap().len(), cols);
    }
}

#[test]
fn column_sums_split_into_bands_only_where_a_row_has_few_invocations() {
    // (rows, cols) → (bands, rows per band): enough bands of ≥ 32 rows for 65,536 invocations, a
    // row's being one per column, or per four columns where cols % 4 == 0.
    for &((rows, cols), want) in &[
        ((1024, 1024), (32, 32)),
        ((1024, 16384), (16, 64)),
        ((768, 3072), (24, 32)),
        ((300, 300), (9, 34)),
        ((1000, 7), (31, 33)),
        ((2000, 1), (61, 33)),
        ((63, 5), (1, 63)),
        ((1, 16_777_217), (1, 1)),
        ((4096, 65536), (4, 1024)),
        ((4096, 65537), (1, 4096)),
    ] {
        assert_eq!(column_bands(rows, cols), want, "{rows}x{cols}");
    }
    // Tall and narrow: bands and rows per band both stay under 2^15 (loops on llvmpipe stop after
    // 65,535 iterations), where up to 65,536 bands were allowed.
    for &(rows, cols) in &[(1 << 21, 1), (1 << 21, 4), (1 << 30, 1), (1 << 26, 16)] {
        let (bands, band_rows) = column_bands(rows, cols);
        assert!(bands <= 1 << 15 && band_rows <= 1 << 15, "{rows}x{cols}: {bands} x {band_rows}");
        assert!(bands * band_rows >= rows && (bands - 1) * band_rows < rows, "{rows}x{cols}");
    }
    for rows in [1, 31, 32, 64, 65, 100, 999, 1024, 5000] {
        for cols in [1, 3, 255, 256, 1000, 70000] {
            let (bands, band_rows) = column_bands(rows, cols);
            // Every row in exactly one band, none empty, bands of ≥ 32 rows when split.
            assert!(bands * band_rows >= rows && (bands - 1) * band_rows < rows, "{rows}x{cols}");
            assert!(bands == 1 || band_rows >= 32, "{rows}x{cols}");
        }
    }
}

/// A [2^21, 1] and a [2^21, 4] parameter: the column statistic on the GPU equals the CPU twin's (on
/// lavapipe, 65,536 bands lost two of them to llvmpipe's loop limit, silently).
#[test]
fn tall_narrow_column_statistics_are_whole() {
    let ctx = common::ctx();
    for cols in [1, 4] {
        let rows = 1 << 21;
        let (p0, gs) = data(rows, cols, 1, 3);
        let mut gpu = Dasgo::gpu(&ctx, cfg()).unwrap();
        let mut cpu = Dasgo::cpu(cfg()).unwrap();
        let ig = gpu.add_param("w", &p0, &[rows, cols]).unwrap();
        let ic = cpu.add_param("w", &p0, &[rows, cols]).unwrap();
        for (o, id) in [(&mut gpu, ig), (&mut cpu, ic)] {
            o.write_grad(id, &gs[0]).unwrap();
            o.step().unwrap();
        }
        let (dg, dc) = (gpu.read_state(ig, "precond").unwrap(), cpu.read_state(ic, "precond").unwrap());
        for (g, c) in dg.iter().zip(&dc) {
            assert!((g - c).abs() <= 1e-6 * c.abs(), "{rows}x{cols}: GPU {g} vs CPU twin {c}");
        }
    }
}

#[test]
fn chunk_grid_folded_into_rows_matches_the_twin() {
    // With at most 3 workgroups per grid dimension, the 22 chunks of a 300×300 parameter run on a
    // 3×8 grid: chunks past the end return early, and chunk = x + 3·y must still walk each element
    // once. Same bound as above.
    let ctx = common::ctx_with(ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    let (rows, cols) = (300, 300);
    let (p0, gs) = data(rows, cols, 3, 77);
    let mut gpu = Dasgo::gpu(&ctx, cfg()).unwrap();
    let mut model = Model::new(cfg(), &p0, rows, cols);
    let id = gpu.add_param("w", &p0, &[rows, cols]).unwrap();
    for g in &gs {
        gpu.write_grad(id, g).unwrap();
        gpu.step().unwrap();
        model.step(g);
    }
    let e = dist(&gpu.read_param(id).unwrap(), &model.p) / dist(&p0, &model.p);
    assert!(e < 1e-5 + 4.0 * EPS as f64 / (0.2 * cfg().lr), "folded grid vs model: {e:e}");
}

/// One GPU optimizer per parameter, each holding only it.
fn alone(ctx: &gpuopt::Context, params: &[(Vec<f32>, [usize; 2])]) -> Vec<Dasgo> {
    let one = |(p, shape): &(Vec<f32>, [usize; 2])| {
        let mut o = Dasgo::gpu(ctx, cfg()).unwrap();
        o.add_param("w", p, shape).unwrap();
        o
    };
    params.iter().map(one).collect()
}

/// One GPU optimizer stacking all the parameters (named w0, w1, ...).
fn stacked(ctx: &gpuopt::Context, params: &[(Vec<f32>, [usize; 2])]) -> Dasgo {
    let mut stack = Dasgo::gpu(ctx, cfg()).unwrap();
    for (i, (p, shape)) in params.iter().enumerate() {
        stack.add_param(&format!("w{i}"), p, shape).unwrap();
    }
    stack
}

/// Gradient i written to parameter i of `stack` and to `alone[i]`'s, then a step of every optimizer.
fn step_alike(stack: &mut Dasgo, alone: &mut [Dasgo], grads: &[Vec<f32>]) {
    for (i, g) in grads.iter().enumerate() {
        stack.write_grad(ParamId(i), g).unwrap();
        alone[i].write_grad(ParamId(0), g).unwrap();
    }
    stack.step().unwrap();
    alone.iter_mut().for_each(|o| o.step().unwrap());
}

/// Every parameter of `stack` (and each state) bit for bit equal to its lone optimizer's.
fn assert_same(stack: &mut Dasgo, alone: &mut [Dasgo], what: &str) {
    for (i, one) in alone.iter_mut().enumerate() {
        let (s, o) = (ParamId(i), ParamId(0));
        assert_eq!(stack.read_param(s).unwrap(), one.read_param(o).unwrap(), "{what}: parameter {i}");
        for state in ["momentum", "precond"] {
            assert_eq!(stack.read_state(s, state).unwrap(), one.read_state(o, state).unwrap(), "{what}: {i} {state}");
        }
    }
}

#[test]
fn stacks_step_each_matrix_as_if_alone() {
    // Same-shape parameters share a stack whatever the order they are added in; each keeps its own
    // column statistics and norm, so the stacked step equals each lone one bit for bit (the same
    // operations in the same order). Among them: 300×300 (9 bands of rows for the column sums), a
    // member whose gradient is always zero (it only decays: a shared norm or statistic would move
    // it) and one whose gradients are 1000× its neighbours'.
    let ctx = common::ctx();
    let shapes = [[37, 53], [300, 300], [37, 53], [70, 20], [37, 53], [1, 1], [300, 300], [37, 53], [70, 20]];
    let mut rng = TestRng::new(41);
    let params: Vec<(Vec<f32>, [usize; 2])> = shapes.iter().map(|&s| (rng.uniforms(s[0] * s[1], 1.0), s)).collect();
    let mut stack = stacked(&ctx, &params);
    let mut alone = alone(&ctx, &params);
    assert_eq!(stack.chains(), 4, "one stack per shape");
    for t in 0..4 {
        let scale = |i: usize| match i {
            2 => 0.0,
            4 => 100.0,
            _ => 0.1,
        };
        let gs: Vec<Vec<f32>> = params.iter().enumerate().map(|(i, (p, _))| rng.uniforms(p.len(), scale(i))).collect();
        step_alike(&mut stack, &mut alone, &gs);
        assert_same(&mut stack, &mut alone, &format!("step {}", t + 1));
    }
    // The zero-gradient member decayed and nothing else: (1 − lr·wd) applied in f32 each step.
    let decay = (1.0 - cfg().lr * cfg().weight_decay) as f32;
    let want: Vec<f32> = params[2].0.iter().map(|&x| (0..4).fold(x, |p, _| decay * p)).collect();
    assert_eq!(stack.read_param(ParamId(2)).unwrap(), want);
    // A NaN in one member's gradient skips the step for the whole stack.
    let before: Vec<Vec<f32>> = (0..params.len()).map(|i| stack.read_param(ParamId(i)).unwrap()).collect();
    let mut bad = rng.uniforms(37 * 53, 0.1);
    bad[100] = f32::NAN;
    stack.write_grad(ParamId(4), &bad).unwrap();
    stack.step().unwrap();
    assert!(stack.found_non_finite().unwrap());
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&stack.read_param(ParamId(i)).unwrap(), b, "a skipped step moved parameter {i}");
    }
}

#[test]
fn stacks_split_at_the_binding_and_grid_limits() {
    // Eight 10×20 parameters (800 bytes each): a 4 KiB storage binding holds five, so two stacks; at
    // three workgroups per grid dimension (where the stack index sits) three stacks. Each still
    // steps as alone (the lone optimizers run under the same limits).
    for (opts, chains) in [
        (ContextOptions { max_binding_bytes: Some(4096), ..Default::default() }, 2),
        (ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() }, 3),
    ] {
        let ctx = common::ctx_with(opts);
        let mut rng = TestRng::new(5);
        let params: Vec<(Vec<f32>, [usize; 2])> = (0..8).map(|_| (rng.uniforms(200, 1.0), [10, 20])).collect();
        let mut stack = stacked(&ctx, &params);
        let mut alone = alone(&ctx, &params);
        assert_eq!(stack.chains(), chains);
        for _ in 0..3 {
            let gs: Vec<Vec<f32>> = (0..8).map(|i| rng.uniforms(200, 0.1 * (i + 1) as f32)).collect();
            step_alike(&mut stack, &mut alone, &gs);
        }
        assert_same(&mut stack, &mut alone, &format!("{chains} stacks"));
    }
}

#[test]
fn parameters_added_after_steps_wait_and_grow_their_stack_once() {
    // Two 6×5 parameters take two steps; then four more of 6×5 and one 4×4 arrive, each added and
    // given values or a gradient before the next is added. The 6×5 stack grows once (at the step),
    // the 4×4 starts its own; the late parameters start from zero state, as fresh optimizers.
    let ctx = common::ctx();
    let mut rng = TestRng::new(13);
    let mut params: Vec<(Vec<f32>, [usize; 2])> = (0..2).map(|_| (rng.uniforms(30, 1.0), [6, 5])).collect();
    let mut stack = stacked(&ctx, &params);
    let mut alone = alone(&ctx, &params);
    let grads = |rng: &mut TestRng, params: &[(Vec<f32>, [usize; 2])]| -> Vec<Vec<f32>> {
        params.iter().map(|(p, _)| rng.uniforms(p.len(), 0.1)).collect()
    };
    for _ in 0..2 {
        step_alike(&mut stack, &mut alone, &grads(&mut rng, &params));
    }
    let late: Vec<(Vec<f32>, [usize; 2])> =
        [[6, 5], [6, 5], [4, 4], [6, 5], [6, 5]].iter().map(|&s| (rng.uniforms(s[0] * s[1], 1.0), s)).collect();
    let first = params.len();
    // The second parameter joined the first's stack at the first step.
    assert_eq!(stack.stack_growths(), 1);
    for (k, (p, shape)) in late.iter().enumerate() {
        let id = stack.add_param(&format!("late{k}"), &vec![9.0; p.len()], shape).unwrap();
        // Values written while waiting replace those it was added with.
        stack.write_param(id, p).unwrap();
        params.push((p.clone(), *shape));
    }
    alone.extend(self::alone(&ctx, &late));
    assert_eq!(stack.stack_growths(), 1, "nothing grows before the next step or read");
    assert_eq!(stack.chains(), 2);
    step_alike(&mut stack, &mut alone, &grads(&mut rng, &params));
    assert_eq!(stack.stack_growths(), 2, "the 6×5 stack grows once for its four late members");
    assert_same(&mut stack, &mut alone, "after the late additions");
    assert!(stack.read_state(ParamId(first), "precond").unwrap().iter().all(|&d| d > 0.0));
}

#[test]
fn first_step_normalises_each_column_in_closed_form() {
    // momentum 0, beta2 0, eps ≈ 0: U_ij = G_ij/‖G_:j‖, every column of U a unit vector, so
    // ‖U‖_F = sqrt(cols) and the step is Δ_ij = −lr·0.2·sqrt(rows)·G_ij/‖G_:j‖ (worked from the
    // equations, not from the code), on the GPU and the twin.
    let ctx = common::ctx();
    let (rows, cols) = (5, 4);
    let g = TestRng::new(2).uniforms(rows * cols, 1.0);
    let c = DasgoConfig { lr: 0.1, momentum: 0.0, beta2: 0.0, eps: 1e-30, weight_decay: 0.0 };
    let p0 = vec![0.0f32; rows * cols];
    let mut gpu = Dasgo::gpu(&ctx, c.clone()).unwrap();
    let mut cpu = Dasgo::cpu(c).unwrap();
    for opt in [&mut gpu, &mut cpu] {
        let id = opt.add_param("w", &p0, &[rows, cols]).unwrap();
        opt.write_grad(id, &g).unwrap();
        opt.step().unwrap();
        let p = opt.read_param(id).unwrap();
        for j in 0..cols {
            let norm = (0..rows).map(|i| (g[i * cols + j] as f64).powi(2)).sum::<f64>().sqrt();
            for i in 0..rows {
                let want = -0.1 * 0.2 * (rows as f64).sqrt() * g[i * cols + j] as f64 / norm;
                let got = p[i * cols + j] as f64;
                // 8ε relative: the handful of f32 roundings between g and the step.
                assert!((got - want).abs() < 8.0 * EPS as f64 * want.abs().max(1e-3), "({i}, {j}): {got} vs {want}");
            }
        }
    }
}

#[test]
fn zero_and_non_finite_gradients() {
    let ctx = common::ctx();
    let (p0, gs) = data(6, 4, 3, 8);
    let mut a = Dasgo::gpu(&ctx, DasgoConfig { weight_decay: 0.0, ..cfg() }).unwrap();
    let w = a.add_param("w", &p0, &[6, 4]).unwrap();
    // A zero gradient first: zero momentum, no step (the reference would write 0/0 = NaN).
    a.write_grad(w, &[0.0; 24]).unwrap();
    a.step().unwrap();
    assert_eq!(a.read_param(w).unwrap(), p0);
    a.write_grad(w, &gs[0]).unwrap();
    a.step().unwrap();
    let before = (a.read_param(w).unwrap(), a.read_state(w, "momentum").unwrap(), a.read_state(w, "precond").unwrap());
    let mut bad = gs[1].clone();
    bad[3] = f32::NAN;
    a.write_grad(w, &bad).unwrap();
    a.step().unwrap();
    assert!(a.found_non_finite().unwrap());
    assert_eq!(a.skipped_steps().unwrap(), 1);
    let after = (a.read_param(w).unwrap(), a.read_state(w, "momentum").unwrap(), a.read_state(w, "precond").unwrap());
    assert_eq!(before, after, "a skipped step must change nothing");
    a.write_grad(w, &gs[1]).unwrap();
    a.step().unwrap();
    assert!(!a.found_non_finite().unwrap());
    assert_eq!(a.step_count().unwrap(), 3);
}

#[test]
fn checkpoints_resume_bit_identically_and_refuse_mismatches() {
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dasgo.safetensors");
    let (p0, gs) = data(5, 7, 6, 12);
    let mut a = Dasgo::gpu(&ctx, cfg()).unwrap();
    let id = a.add_param("w", &p0, &[5, 7]).unwrap();
    for g in &gs[..3] {
        a.write_grad(id, g).unwrap();
        a.step().unwrap();
    }
    a.save(&path).unwrap();
    // Resumed on the CPU twin: the file is backend-neutral.
    let mut b = Dasgo::cpu(DasgoConfig::default()).unwrap();
    let ib = b.add_param("w", &p0, &[5, 7]).unwrap();
    b.load(&path).unwrap();
    assert_eq!(b.config(), &cfg());
    let mut c = Dasgo::gpu(&ctx, DasgoConfig::default()).unwrap();
    let ic = c.add_param("w", &p0, &[5, 7]).unwrap();
    c.load(&path).unwrap();
    for g in &gs[3..] {
        for (o, i) in [(&mut a, id), (&mut c, ic), (&mut b, ib)] {
            o.write_grad(i, g).unwrap();
            o.step().unwrap();
        }
    }
    assert_eq!(a.read_param(id).unwrap(), c.read_param(ic).unwrap(), "GPU resumed bit-identically");
    let (pa, pb) = (a.read_param(id).unwrap(), b.read_param(ib).unwrap());
    // GPU and twin differ by the norm's summation order and FMA contraction: an ulp of |p| a step,
    // bounded by 2ε·max(|p|, 1) per step over the 6.
    assert!(pa.iter().zip(&pb).all(|(x, y)| (x - y).abs() <= 2.0 * EPS * 6.0 * x.abs().max(1.0)));
    let mut d = Dasgo::gpu(&ctx, cfg()).unwrap();
    let idd = d.add_param("w", &p0, &[7, 5]).unwrap();
    assert!(matches!(d.load(&path), Err(Error::Checkpoint { .. })));
    assert_eq!(d.read_param(idd).unwrap(), p0);
}

#[test]
fn checkpoints_restore_into_stacks_with_waiting_members() {
    // Three 5×7 parameters stepped in one stack are saved; a new optimizer adds the same three (the
    // last two waiting to join the first's stack) and loads the file: every member resumes bit for
    // bit, at its place in the stack.
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dasgo.safetensors");
    let mut rng = TestRng::new(21);
    let p0: Vec<Vec<f32>> = (0..3).map(|_| rng.uniforms(35, 1.0)).collect();
    let mut a = Dasgo::gpu(&ctx, cfg()).unwrap();
    let mut c = Dasgo::gpu(&ctx, DasgoConfig::default()).unwrap();
    for (i, p) in p0.iter().enumerate() {
        a.add_param(&format!("w{i}"), p, &[5, 7]).unwrap();
        c.add_param(&format!("w{i}"), &[0.0; 35], &[5, 7]).unwrap();
    }
    let step_all = |o: &mut Dasgo, gs: &[Vec<f32>]| {
        for (i, g) in gs.iter().enumerate() {
            o.write_grad(ParamId(i), g).unwrap();
        }
        o.step().unwrap();
    };
    for _ in 0..3 {
        step_all(&mut a, &(0..3).map(|_| rng.uniforms(35, 0.1)).collect::<Vec<_>>());
    }
    a.save(&path).unwrap();
    c.load(&path).unwrap();
    assert_eq!(c.chains(), 1);
    for _ in 0..3 {
        let gs: Vec<Vec<f32>> = (0..3).map(|_| rng.uniforms(35, 0.1)).collect();
        step_all(&mut a, &gs);
        step_all(&mut c, &gs);
    }
    for i in 0..3 {
        assert_eq!(a.read_param(ParamId(i)).unwrap(), c.read_param(ParamId(i)).unwrap(), "parameter {i}");
        assert_eq!(a.read_state(ParamId(i), "precond").unwrap(), c.read_state(ParamId(i), "precond").unwrap());
    }
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    for c in [
        DasgoConfig { eps: 0.0, ..cfg() },
        DasgoConfig { momentum: 1.0, ..cfg() },
        DasgoConfig { beta2: f64::NAN, ..cfg() },
        DasgoConfig { lr: -1.0, ..cfg() },
    ] {
        assert!(matches!(Dasgo::cpu(c.clone()), Err(Error::Hyperparameter { .. })), "{c:?}");
    }
    let mut opt = Dasgo::cpu(cfg()).unwrap();
    assert!(opt.add_param("b", &[1.0; 3], &[3]).unwrap_err().to_string().contains("AdamW"));
    let id = opt.add_param("w", &[1.0; 6], &[2, 3]).unwrap();
    assert!(opt.add_param("w", &[1.0; 6], &[3, 2]).is_err(), "duplicate name");
    assert!(matches!(opt.write_grad(id, &[1.0; 5]), Err(Error::Shape { .. })));
    assert!(opt.read_param(ParamId(7)).is_err());
    assert!(opt.set_weight_decay(GroupId(0), f64::INFINITY).is_err());
    assert_eq!(opt.config(), &cfg(), "a refused change leaves the config");
    assert!(opt.read_state(id, "d").is_err());
    // An lr whose f32 factors overflow is refused at the step, before anything changes.
    opt.set_lr(GroupId(0), 1e39).unwrap();
    opt.write_grad(id, &[1.0; 6]).unwrap();
    assert!(matches!(opt.step(), Err(Error::Hyperparameter { .. })));
    assert_eq!(opt.read_state(id, "momentum").unwrap(), vec![0.0; 6]);
    assert_eq!(opt.read_param(id).unwrap(), vec![1.0; 6]);
}

#[test]
fn replay_runs_dasgo_with_the_cases_hyperparameters() {
    use ndarray_npy::NpzWriter;
    let ctx = common::ctx();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), r#"{"optimizer": "dasgo", "hyper": {"lr": 0.05, "beta2": 0.5}}"#)
        .unwrap();
    let (p0, gs) = data(4, 6, 4, 30);
    let mut w = NpzWriter::new(std::fs::File::create(dir.path().join("inputs.npz")).unwrap());
    w.add_array("param", &ndarray::Array2::from_shape_vec((4, 6), p0.clone()).unwrap()).unwrap();
    w.add_array("grads", &ndarray::Array3::from_shape_vec((4, 4, 6), gs.concat()).unwrap()).unwrap();
    w.finish().unwrap();
    let case = gpuopt::replay::load_case(dir.path()).unwrap();
    let g: Vec<f32> = gpuopt::replay::run(&case, Some(&ctx)).unwrap().iter().copied().collect();
    let c: Vec<f32> = gpuopt::replay::run(&case, None).unwrap().iter().copied().collect();
    let mut model = Model::new(DasgoConfig { lr: 0.05, beta2: 0.5, ..DasgoConfig::default() }, &p0, 4, 6);
    for gr in &gs {
        model.step(gr);
    }
    // The bounds of the tests above: the movement's 1e-5 plus f32's floor (lr 0.05 here), and 2ε of
    // max(|p|, 1) per step between the backends.
    let last = &g[g.len() - 24..];
    let bound = 1e-5 + 4.0 * EPS as f64 / (0.2 * 0.05);
    assert!(dist(last, &model.p) / dist(&p0, &model.p) < bound, "replay vs model");
    assert!(g.iter().zip(&c).all(|(x, y)| (x - y).abs() <= 2.0 * EPS * 4.0 * x.abs().max(1.0)), "GPU vs CPU replay");
}

#[test]
fn the_shared_guard_check_holds_on_stacks() {
    // As ASGO's: two stacked 6×8 matrices and an 8×6 one, GPU and twin.
    let ctx = common::ctx();
    let mut rng = TestRng::new(65);
    let shapes: [[usize; 2]; 3] = [[6, 8], [6, 8], [8, 6]];
    let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s[0] * s[1], 1.0)).collect();
    let inits: Vec<Vec<f32>> = shapes.iter().map(|s| rng.uniforms(s[0] * s[1], 0.5)).collect();
    let mut gpu = Dasgo::gpu(&ctx, cfg()).unwrap();
    let mut cpu = Dasgo::cpu(cfg()).unwrap();
    for (i, (s, p)) in shapes.iter().zip(&inits).enumerate() {
        gpu.add_param(&format!("w{i}"), p, s).unwrap();
        cpu.add_param(&format!("w{i}"), p, s).unwrap();
    }
    common::assert_non_finite_skips(&mut gpu, &grads, &["momentum", "precond"]);
    common::assert_non_finite_skips(&mut cpu, &grads, &["momentum", "precond"]);
}
