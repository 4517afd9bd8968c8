//! Matrix-root family: each GPU op against its CPU twin (`CpuMats`), each algorithm against the f64
//! eigendecomposition oracle, MTP/MPA against their exact truncation error, the backward against
//! the exact Lyapunov solution and finite differences, batched = one by one, and bad inputs.
//!
//! Tolerances. An f32 GEMM result carries a relative error of about sqrt(n)·ε (tests/gemm.rs); the
//! iterations here run tens of products, so parity GPU vs CPU twin is asserted at 100·sqrt(n)·ε
//! relative (Frobenius) — the two differ only in summation order, not in the algorithm. Against the
//! oracle, each test states its bound next to the assertion.

mod common;

use common::{rel, rel32};

use gpuopt::kernels::roots::GpuMats;
use gpuopt::parity::TestRng;
use gpuopt::reference::roots::{eigen, oracle_power, oracle_sqrt_backward, spd_matrix, spectral, CpuMats};
use gpuopt::roots::{
    inv_root, inv_sqrt, inv_sqrt_backward, pade_coefficients, sqrt, sqrt_backward, taylor_coefficients, InvRootOptions,
    MatOps, Scale, SqrtMethod,
};

const EPS: f64 = f32::EPSILON as f64;

fn spd(n: usize, cond: f64, top: f64, seed: u64) -> Vec<f32> {
    spd_matrix(n, cond, top, seed)
}

fn batch(mats: &[Vec<f32>]) -> Vec<f32> {
    mats.concat()
}

#[test]
fn affine_maxdev_frobenius_match_their_cpu_twins() {
    let ctx = common::ctx();
    for &(b, r, c) in &[(1, 1, 1), (3, 7, 7), (2, 37, 37), (1, 130, 66), (2, 64, 64)] {
        let mut rng = TestRng::new((b * 1000 + r * 10 + c) as u64);
        let x = rng.normals(b * r * c, 2.0);
        let o = rng.normals(b * r * c, 1.0);
        let s: Vec<f32> = (0..b).map(|z| 0.5 + z as f32).collect();
        let mask: Vec<f32> = (0..b).map(|z| (z % 2) as f32).collect();
        let mut gpu = GpuMats::new(&ctx).unwrap();
        let mut cpu = CpuMats::default();
        let mut results = Vec::new();
        for ops in [&mut gpu as &mut dyn MatOpsDyn, &mut cpu] {
            results.push(ops.run(&x, &o, &s, &mask, b, r, c));
        }
        for (k, (g, w)) in results[0].iter().zip(&results[1]).enumerate() {
            let r = rel32(g, w);
            assert!(r <= 4.0 * EPS, "op {k} ({b}x{r}x{c}): relative difference {r:e}");
        }
    }
}

/// `transpose` moves values exactly: GPU and CPU twin against an index-by-index transpose, over
/// batches and sizes that cross the 256-invocation workgroups; bad outputs are refused.
#[test]
fn transpose_is_exact_on_both_backends() {
    let ctx = common::ctx();
    let mut gpu = GpuMats::new(&ctx).unwrap();
    let mut cpu = CpuMats::default();
    for &(b, r, c) in &[(1, 1, 1), (3, 7, 5), (2, 37, 64), (5, 1, 300), (1, 257, 3)] {
        let x = TestRng::new((b * 100 + r + c) as u64).normals(b * r * c, 1.0);
        let mut want = vec![0.0; x.len()];
        for z in 0..b {
            for i in 0..r {
                for j in 0..c {
                    want[z * r * c + j * r + i] = x[z * r * c + i * c + j];
                }
            }
        }
        fn run(ops: &mut impl MatOps, x: &[f32], (b, r, c): (usize, usize, usize)) -> Vec<f32> {
            let (xm, om) = (ops.upload(x, b, r, c).unwrap(), ops.alloc(b, c, r).unwrap());
            ops.transpose(xm, om).unwrap();
            assert!(ops.transpose(xm, xm).is_err(), "in place must be refused");
            if r != c {
                let bad = ops.alloc(b, r, c).unwrap();
                assert!(ops.transpose(xm, bad).is_err(), "an output of x's shape must be refused");
            }
            ops.read(om).unwrap()
        }
        assert_eq!(run(&mut gpu, &x, (b, r, c)), want, "GPU {b}x{r}x{c}");
        assert_eq!(run(&mut cpu, &x, (b, r, c)), want, "CPU {b}x{r}x{c}");
    }
    // At most 3 workgroups per grid dimension: 40×40 is 7 workgroups on a 3×3 grid (two past the end
    // return at once), and a batch of 4 is more than the z dimension holds.
    let small = common::ctx_with(gpuopt::ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    let mut gpu = GpuMats::new(&small).unwrap();
    let x = TestRng::new(9).normals(3 * 40 * 40, 1.0);
    let (xm, om) = (gpu.upload(&x, 3, 40, 40).unwrap(), gpu.alloc(3, 40, 40).unwrap());
    gpu.transpose(xm, om).unwrap();
    let (cx, co) = (cpu.upload(&x, 3, 40, 40).unwrap(), cpu.alloc(3, 40, 40).unwrap());
    cpu.transpose(cx, co).unwrap();
    assert_eq!(gpu.read(om).unwrap(), cpu.read(co).unwrap());
    let (xm, om) = (gpu.alloc(4, 2, 3).unwrap(), gpu.alloc(4, 3, 2).unwrap());
    let e = gpu.transpose(xm, om).unwrap_err().to_string();
    assert!(e.contains("4 matrices"), "{e}");
}

#[test]
fn norms_fold_their_chunks_past_the_workgroup_limit() {
    // At most 3 workgroups per grid dimension: a 70×600 matrix has 11 chunks of partial sums, which
    // fold into a 3×4 grid (one past the end returns at once). Both reductions against the twin.
    let ctx = common::ctx_with(gpuopt::ContextOptions { max_workgroups_per_dim: Some(3), ..Default::default() });
    let x = TestRng::new(12).normals(2 * 70 * 600, 1.0);
    let mut results = Vec::new();
    let mut gpu = GpuMats::new(&ctx).unwrap();
    let mut cpu = CpuMats::default();
    for ops in [&mut gpu as &mut dyn FoldCase, &mut cpu] {
        results.push(ops.norms(&x));
    }
    assert!(rel32(&results[0].0, &results[1].0) <= 4.0 * EPS, "{:?} vs {:?}", results[0].0, results[1].0);
    assert_eq!(results[0].1, results[1].1, "max |x - I|");
}

/// Frobenius norms and max_dev of a [2, 70, 600] batch, object-safe over both backends.
trait FoldCase {
    fn norms(&mut self, x: &[f32]) -> (Vec<f32>, Vec<f32>);
}

impl<T: MatOps> FoldCase for T {
    fn norms(&mut self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let m = self.upload(x, 2, 70, 600).unwrap();
        let (f, d) = (self.alloc(2, 1, 1).unwrap(), self.alloc(2, 1, 1).unwrap());
        self.frobenius(m, f).unwrap();
        self.max_dev(m, d).unwrap();
        (self.read(f).unwrap(), self.read(d).unwrap())
    }
}

/// The op sequence of `affine_maxdev_frobenius_match_their_cpu_twins`, object-safe over both backends.
trait MatOpsDyn {
    #[allow(clippy::too_many_arguments)]
    fn run(&mut self, x: &[f32], o: &[f32], s: &[f32], mask: &[f32], b: usize, r: usize, c: usize) -> Vec<Vec<f32>>;
}

impl<T: MatOps> MatOpsDyn for T {
    fn run(&mut self, x: &[f32], o: &[f32], s: &[f32], mask: &[f32], b: usize, r: usize, c: usize) -> Vec<Vec<f32>> {
        let xm = self.upload(x, b, r, c).unwrap();
        let sm = self.upload(s, b, 1, 1).unwrap();
        let mm = self.upload(mask, b, 1, 1).unwrap();
        let mut out = Vec::new();
        for (alpha, scale, beta, gamma) in [
            (1.5, Scale::One, 0.0, 0.0),
            (-1.0, Scale::Pow(sm, -1.0), 0.0, 1.0),
            (2.0, Scale::Pow(sm, 0.5), 0.75, -2.0),
            (1.0, Scale::Pow(sm, -0.5), 1.0, 0.0),
            (0.5, Scale::Pow(sm, -0.25), 0.0, 0.0),
            (3.0, Scale::Mask(mm), 0.0, 0.0),
            (2.0, Scale::Clip(sm, 1.0), 0.5, 0.0),
        ] {
            let om = self.upload(o, b, r, c).unwrap();
            self.affine(om, Some(xm), alpha, scale, beta, gamma).unwrap();
            out.push(self.read(om).unwrap());
        }
        let norms = self.alloc(b, 1, 1).unwrap();
        self.frobenius(xm, norms).unwrap();
        out.push(self.read(norms).unwrap());
        // max|x − I| with a NaN planted in the last matrix.
        let mut xn = x.to_vec();
        *xn.last_mut().unwrap() = f32::NAN;
        let xn = self.upload(&xn, b, r, c).unwrap();
        self.max_dev(xn, norms).unwrap();
        let d = self.read(norms).unwrap();
        assert_eq!(d[b - 1], f32::MAX, "a NaN must count as the largest deviation");
        out.push(d);
        // Scale::Finite with those flags: the matrix holding the NaN keeps its old values, the
        // others take x.
        let om = self.upload(o, b, r, c).unwrap();
        self.affine(om, Some(xm), 1.0, Scale::Finite(norms), 0.0, 0.0).unwrap();
        let f = self.read(om).unwrap();
        let len = r * c;
        assert_eq!(&f[(b - 1) * len..], &o[(b - 1) * len..], "a flagged matrix must keep its values");
        assert_eq!(&f[..(b - 1) * len], &x[..(b - 1) * len], "unflagged matrices take x");
        out.push(f);
        out
    }
}

#[test]
fn gauss_jordan_solve_matches_cpu_twin_and_pivots() {
    let ctx = common::ctx();
    for &(b, n, k) in &[(1, 1, 1), (2, 7, 3), (3, 33, 33), (1, 70, 5)] {
        let mut rng = TestRng::new((b * 100 + n) as u64);
        // Random (non-symmetric) matrices: partial pivoting is exercised, and a zero leading entry
        // forces a row swap at the first column.
        let mut m = rng.normals(b * n * n, 1.0);
        m[0] = 0.0;
        if n == 1 {
            m[0] = 0.5;
        }
        let rhs = rng.normals(b * n * k, 1.0);
        let mut outs = Vec::new();
        let mut gpu = GpuMats::new(&ctx).unwrap();
        let mut cpu = CpuMats::default();
        for ops in [&mut gpu as &mut dyn SolveDyn, &mut cpu] {
            outs.push(ops.solve_case(&m, &rhs, b, n, k));
        }
        let (g, w) = (&outs[0], &outs[1]);
        assert!(g.1.iter().all(|&s| s == 0.0) && w.1.iter().all(|&s| s == 0.0), "no pivot is singular here");
        // The residual ‖M·X − R‖ of the GPU solution, in f64: backward stable to ~ n·ε·‖M‖·‖X‖.
        for z in 0..b {
            let mz = nalgebra::DMatrix::from_fn(n, n, |i, j| m[z * n * n + i * n + j] as f64);
            let xz = nalgebra::DMatrix::from_fn(n, k, |i, j| g.0[z * n * k + i * k + j] as f64);
            let rz = nalgebra::DMatrix::from_fn(n, k, |i, j| rhs[z * n * k + i * k + j] as f64);
            let res = (&mz * &xz - &rz).norm() / (mz.norm() * xz.norm());
            assert!(res <= 20.0 * n as f64 * EPS, "{b}x{n}x{k} matrix {z}: residual {res:e}");
        }
        let r = rel32(&g.0, &w.0);
        assert!(r <= 1e-4, "{b}x{n}x{k}: GPU vs CPU twin {r:e}");
    }
    // A singular matrix is flagged.
    let mut gpu = GpuMats::new(&ctx).unwrap();
    let (_, status) = gpu.solve_case(&[1.0, 2.0, 2.0, 4.0], &[1.0, 1.0], 1, 2, 1);
    assert_eq!(status, vec![1.0]);
}

trait SolveDyn {
    fn solve_case(&mut self, m: &[f32], rhs: &[f32], b: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>);
}

impl<T: MatOps> SolveDyn for T {
    fn solve_case(&mut self, m: &[f32], rhs: &[f32], b: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let mm = self.upload(m, b, n, n).unwrap();
        let rm = self.upload(rhs, b, n, k).unwrap();
        let st = self.alloc(b, 1, 1).unwrap();
        self.solve(mm, rm, st).unwrap();
        (self.read(rm).unwrap(), self.read(st).unwrap())
    }
}

#[test]
fn pade_5_5_coefficients_are_the_papers() {
    let (p, q) = pade_coefficients(&taylor_coefficients(0.5, 10), 5, 5).unwrap();
    let want_p = [1.0, -11.0 / 4.0, 11.0 / 4.0, -77.0 / 64.0, 55.0 / 256.0, -11.0 / 1024.0];
    let want_q = [1.0, -9.0 / 4.0, 7.0 / 4.0, -35.0 / 64.0, 15.0 / 256.0, -1.0 / 1024.0];
    for (g, w) in p.iter().zip(&want_p).chain(q.iter().zip(&want_q)) {
        assert!((g - w).abs() <= 1e-9, "{g} vs {w}");
    }
    let t = taylor_coefficients(0.5, 10);
    let want_t = [1.0, -0.5, -1.0 / 8.0, -1.0 / 16.0, -5.0 / 128.0, -7.0 / 256.0, -21.0 / 1024.0];
    for (g, w) in t.iter().zip(&want_t) {
        assert!((g - w).abs() <= 1e-15);
    }
    let ti = taylor_coefficients(-0.5, 3);
    assert_eq!(ti, vec![1.0, 0.5, 3.0 / 8.0, 5.0 / 16.0]);
}

/// The exact error of a scalar approximant r(x) ≈ (1 − x)^{±1/2} applied through the spectrum:
/// ‖f_r(A) − f(A)‖_F = sqrt(Σ_i e(λ_i)²) with e(λ) = |s^{±1/2}·r(1 − λ/s) − λ^{±1/2}|.
fn truncation_error(a: &[f32], n: usize, inverse: bool, r: impl Fn(f64) -> f64) -> f64 {
    let s = a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let (values, _) = eigen(a, n, 0.0);
    let pw = if inverse { -0.5 } else { 0.5 };
    values.iter().map(|&l| (s.powf(pw) * r(1.0 - l / s) - l.powf(pw)).powi(2)).sum::<f64>().sqrt()
}

fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

fn run_root(ops: &mut impl MatOps, a: &[f32], b: usize, n: usize, method: SqrtMethod, inverse: bool) -> Vec<f32> {
    let am = ops.upload(a, b, n, n).unwrap();
    let y = if inverse { inv_sqrt(ops, am, method) } else { sqrt(ops, am, method) }.unwrap();
    ops.read(y).unwrap()
}

#[test]
fn sqrt_and_inv_sqrt_match_the_oracle_within_each_methods_error() {
    let ctx = common::ctx();
    for &(n, cond) in &[(1, 1.0), (7, 10.0), (33, 10.0), (64, 100.0)] {
        let a = spd(n, cond, 3.0, n as u64);
        for inverse in [false, true] {
            let want = oracle_power(&a, n, if inverse { -0.5 } else { 0.5 }, 0.0);
            let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
            for method in [
                SqrtMethod::NewtonSchulz { iters: 30, tol: None },
                SqrtMethod::Mtp { degree: 10 },
                SqrtMethod::Mtp { degree: 30 },
                SqrtMethod::Mpa { degree: 5 },
                SqrtMethod::Mpa { degree: 3 },
            ] {
                let got = run_root(&mut GpuMats::new(&ctx).unwrap(), &a, 1, n, method, inverse);
                let twin = run_root(&mut CpuMats::default(), &a, 1, n, method, inverse);
                // The polynomial sums amplify rounding by about Σ|coefficients| (cancellation).
                let amp: f64 = match method {
                    SqrtMethod::NewtonSchulz { .. } => 1.0,
                    SqrtMethod::Mtp { degree } => {
                        taylor_coefficients(if inverse { -0.5 } else { 0.5 }, degree).iter().map(|c| c.abs()).sum()
                    }
                    SqrtMethod::Mpa { degree } => {
                        let (p, q) = pade_coefficients(&taylor_coefficients(0.5, 2 * degree), degree, degree).unwrap();
                        p.iter().chain(&q).map(|c| c.abs()).sum()
                    }
                };
                let parity = rel32(&got, &twin);
                let pbound = 100.0 * (n as f64).sqrt() * EPS * amp;
                eprintln!("{method:?} n={n} inv={inverse}: parity {parity:e} (bound {pbound:e})");
                assert!(parity <= pbound, "{method:?} n={n} inv={inverse}: GPU vs CPU {parity:e}");
                // The method's own error (exact for the polynomials, through the spectrum), plus f32
                // rounding: 200·sqrt(n)·ε relative, times sqrt(cond) (the inverse root's sensitivity) and
                // the polynomial sums' amplification. (Padé degrees above 5 lose in f32 what they gain in
                // truncation: P and Q sum alternating coefficients to values near P(1) = 1/1024.)
                let truncation = match method {
                    SqrtMethod::NewtonSchulz { .. } => 0.0,
                    SqrtMethod::Mtp { degree } => {
                        let c = taylor_coefficients(if inverse { -0.5 } else { 0.5 }, degree);
                        truncation_error(&a, n, inverse, |x| poly(&c, x))
                    }
                    SqrtMethod::Mpa { degree } => {
                        let (p, q) = pade_coefficients(&taylor_coefficients(0.5, 2 * degree), degree, degree).unwrap();
                        truncation_error(&a, n, inverse, |x| {
                            if inverse {
                                poly(&q, x) / poly(&p, x)
                            } else {
                                poly(&p, x) / poly(&q, x)
                            }
                        })
                    }
                };
                let err = rel(&got, &want);
                let bound = truncation / norm + 200.0 * (n as f64).sqrt() * EPS * cond.sqrt() * amp;
                assert!(err <= bound, "{method:?} n={n} cond={cond} inv={inverse}: error {err:e} > {bound:e}");
                // The truncation bound is tight: the error is not far below it either (not a vacuous test).
                if truncation / norm > 1e-3 {
                    assert!(err >= 0.5 * truncation / norm, "{method:?}: error {err:e} far below the truncation");
                }
            }
        }
    }
}

#[test]
fn newton_schulz_stays_converged_on_clustered_ill_conditioned_spectra() {
    // A Gram matrix of rank 3 plus a ridge (1e-2 or 1e-3 of its top eigenvalue): three large
    // eigenvalues and 37 equal small ones. Run 30 iterations, well past convergence: with the Y and
    // Z updates mirrored from half-products, the coupled iteration drifted away after converging
    // (4.7e-2 at the 1e-2 ridge, NaN at 1e-3); as full products it stays at f32 accuracy. Bound: the
    // one of the test above, 200·sqrt(n)·ε·sqrt(cond).
    let ctx = common::ctx();
    let n = 40;
    let f = TestRng::new(48).normals(n * 3, 1.0);
    let fm = nalgebra::DMatrix::from_row_slice(n, 3, &f.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let gram = &fm * fm.transpose();
    let top = gram.symmetric_eigenvalues().max();
    for ridge in [1e-2, 1e-3] {
        let a64 = &gram + nalgebra::DMatrix::<f64>::identity(n, n) * (ridge * top);
        let a: Vec<f32> = (0..n * n).map(|i| a64[(i / n, i % n)] as f32).collect();
        let cond = 1.0 / ridge;
        let method = SqrtMethod::NewtonSchulz { iters: 30, tol: None };
        for inverse in [false, true] {
            let want = oracle_power(&a, n, if inverse { -0.5 } else { 0.5 }, 0.0);
            let bound = 200.0 * (n as f64).sqrt() * EPS * cond.sqrt();
            let got = run_root(&mut GpuMats::new(&ctx).unwrap(), &a, 1, n, method, inverse);
            let twin = run_root(&mut CpuMats::default(), &a, 1, n, method, inverse);
            for (who, x) in [("GPU", &got), ("CPU", &twin)] {
                let err = rel(x, &want);
                assert!(err <= bound, "{who} ridge {ridge:e} inv={inverse}: error {err:e} > {bound:e}");
            }
        }
        // The inverse root keeps its mirrored coupled updates: it stops at its tolerance or its growth
        // guard. Held to its own bound (1e-5·sqrt(κ) + 1e-5, as below) on the same spectra, also with
        // tol = 0, which runs it to the guard or max_iters. p = 3 and 6 multiply T's squares (T^3 =
        // T·T², T^6 = T²·T⁴), as Shampoo's roots of rank-3 blocks do.
        for p in [2u32, 3, 4, 6] {
            let want = oracle_power(&a, n, -1.0 / p as f64, 0.0);
            for tol in [1e-6, 0.0] {
                let opts = InvRootOptions { eps: 0.0, tol, ..Default::default() };
                for (who, x) in [
                    ("GPU", {
                        let mut ops = GpuMats::new(&ctx).unwrap();
                        let am = ops.upload(&a, 1, n, n).unwrap();
                        let r = inv_root(&mut ops, am, p, opts).unwrap();
                        ops.read(r.x).unwrap()
                    }),
                    ("CPU", {
                        let mut ops = CpuMats::default();
                        let am = ops.upload(&a, 1, n, n).unwrap();
                        let r = inv_root(&mut ops, am, p, opts).unwrap();
                        ops.read(r.x).unwrap()
                    }),
                ] {
                    let err = rel(&x, &want);
                    let bound = 1e-5 * cond.sqrt() + 1e-5;
                    assert!(err <= bound, "{who} inv_root p={p} tol={tol} ridge {ridge:e}: {err:e} > {bound:e}");
                }
            }
        }
    }
}

#[test]
fn newton_schulz_stops_at_tolerance_and_y_z_are_inverse() {
    let ctx = common::ctx();
    let n = 24;
    let a = spd(n, 10.0, 1.0, 5);
    let mut ops = GpuMats::new(&ctx).unwrap();
    let am = ops.upload(&a, 1, n, n).unwrap();
    let ahat = am;
    let y = sqrt(&mut ops, ahat, SqrtMethod::NewtonSchulz { iters: 50, tol: Some(1e-4) }).unwrap();
    let z = inv_sqrt(&mut ops, ahat, SqrtMethod::NewtonSchulz { iters: 50, tol: Some(1e-4) }).unwrap();
    let (y, z) = (ops.read(y).unwrap(), ops.read(z).unwrap());
    // Stopped at the tolerance, each came from a full product and is returned as its symmetric part:
    // exactly symmetric, like a root that ran all its iterations (whose last product is mirrored).
    let full = sqrt(&mut ops, am, SqrtMethod::NewtonSchulz { iters: 7, tol: None }).unwrap();
    let full = ops.read(full).unwrap();
    for m in [&y, &z, &full] {
        assert!((0..n * n).all(|i| m[i] == m[(i % n) * n + i / n]), "not exactly symmetric");
    }
    // ‖Y·Z − I‖_F: both are polynomials in A, so Y·Z = I up to the stopping tolerance.
    let ym = nalgebra::DMatrix::from_row_slice(n, n, &y.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let zm = nalgebra::DMatrix::from_row_slice(n, n, &z.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let r = (&ym * &zm - nalgebra::DMatrix::<f64>::identity(n, n)).norm();
    assert!(r <= 1e-3, "‖Y·Z − I‖ = {r:e}");
    // ‖Y² − A‖/‖A‖.
    let am = nalgebra::DMatrix::from_row_slice(n, n, &a.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let r2 = (&ym * &ym - &am).norm() / am.norm();
    assert!(r2 <= 1e-3, "‖Y² − A‖/‖A‖ = {r2:e}");
}

#[test]
fn inverse_pth_root_matches_the_oracle_across_conditioning() {
    let ctx = common::ctx();
    let n = 32;
    for &cond in &[10.0, 1e3, 1e6] {
        let a = spd(n, cond, 1.0, 77);
        for p in [2u32, 4, 8] {
            let eps = 1e-6;
            let want = oracle_power(&a, n, -1.0 / p as f64, eps);
            let mut ops = GpuMats::new(&ctx).unwrap();
            let am = ops.upload(&a, 1, n, n).unwrap();
            let r = inv_root(&mut ops, am, p, InvRootOptions { eps: eps as f32, ..Default::default() }).unwrap();
            let got = ops.read(r.x).unwrap();
            let err = rel(&got, &want);
            // M = X^p·G reaches I to a few ε in every case; the error left in X is the rounding of
            // the products amplified by the spectrum's spread, measured to grow like sqrt(κ)·ε·O(10)
            // (κ capped near 1e6 by the ridge). Asserted at 1e-5·sqrt(κ), 10–70× above what lavapipe gives.
            let bound = 1e-5 * cond.sqrt();
            eprintln!("cond {cond:e} p {p}: err {err:e} (M err {:e}, {} iters), bound {bound:e}", r.err[0], r.iters[0]);
            assert!(err <= bound, "cond {cond:e} p {p}: relative error {err:e} > {bound:e}");
            let mut cpu = CpuMats::default();
            let am = cpu.upload(&a, 1, n, n).unwrap();
            let rc = inv_root(&mut cpu, am, p, InvRootOptions { eps: eps as f32, ..Default::default() }).unwrap();
            let twin = cpu.read(rc.x).unwrap();
            assert!(rel(&twin, &want) <= bound, "CPU twin: cond {cond:e} p {p}");
        }
    }
}

#[test]
fn inverse_root_reports_failure_and_takes_relative_ridges() {
    let ctx = common::ctx();
    let n = 16;
    let a = spd(n, 1e3, 1.0, 9);
    let mut ops = GpuMats::new(&ctx).unwrap();
    let am = ops.upload(&a, 1, n, n).unwrap();
    let e = inv_root(&mut ops, am, 4, InvRootOptions { max_iters: 2, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("did not converge"), "{e}");
    for p in [0, 33] {
        let e = inv_root(&mut ops, am, p, InvRootOptions::default()).unwrap_err().to_string();
        assert!(e.contains("from 1 to 32"), "p = {p}: {e}");
    }
    // Relative ridge: eps·λ_max with λ_max from the power iteration.
    let r = inv_root(&mut ops, am, 2, InvRootOptions { eps: 1e-2, eps_relative: true, ..Default::default() }).unwrap();
    let got = ops.read(r.x).unwrap();
    let (values, _) = eigen(&a, n, 0.0);
    let lmax = values.iter().cloned().fold(0.0, f64::max);
    let want = oracle_power(&a, n, -0.5, 1e-2 * lmax);
    let err = rel(&got, &want);
    assert!(err <= 1e-3, "relative-ridge inverse root: {err:e}");
    // n = 1: (a + eps)^(−1/p) directly.
    let one = ops.upload(&[16.0], 1, 1, 1).unwrap();
    let r = inv_root(&mut ops, one, 4, InvRootOptions { eps: 0.0, ..Default::default() }).unwrap();
    assert!((ops.read(r.x).unwrap()[0] - 0.5).abs() < 1e-6);
}

#[test]
fn backward_matches_the_exact_lyapunov_solution_and_finite_differences() {
    let ctx = common::ctx();
    let n = 12;
    let a = spd(n, 4.0, 2.0, 31);
    let mut rng = TestRng::new(8);
    let c0 = rng.normals(n * n, 1.0);
    let c: Vec<f32> = (0..n * n).map(|i| 0.5 * (c0[i] + c0[(i % n) * n + i / n])).collect();
    // The oracle itself against central differences of the f64 forward: ⟨X, E⟩ ≈ (L(A + hE) − L(A − hE))/2h.
    let x_oracle = oracle_sqrt_backward(&a, &c, n);
    let e: Vec<f32> = rng.normals(n * n, 1.0);
    let e: Vec<f32> = (0..n * n).map(|i| 0.5 * (e[i] + e[(i % n) * n + i / n])).collect();
    let loss = |sign: f64, h: f64, power: f64| -> f64 {
        let (values, vectors) = {
            let shifted = nalgebra::DMatrix::from_fn(n, n, |i, j| a[i * n + j] as f64 + sign * h * e[i * n + j] as f64);
            let eig = shifted.symmetric_eigen();
            (eig.eigenvalues.iter().copied().collect::<Vec<_>>(), eig.eigenvectors)
        };
        let y = spectral(&values, &vectors, |l| l.powf(power));
        y.iter().zip(&c).map(|(y, c)| y * *c as f64).sum()
    };
    let h = 1e-5;
    let fd = (loss(1.0, h, 0.5) - loss(-1.0, h, 0.5)) / (2.0 * h);
    let analytic: f64 = x_oracle.iter().zip(&e).map(|(x, e)| x * *e as f64).sum();
    assert!((fd - analytic).abs() <= 1e-6 * analytic.abs().max(1.0), "oracle vs FD: {fd} vs {analytic}");

    // GPU backward (15 sign iterations; the eigenvalues of B = sqrt(Â) are ≥ 0.2 here) vs the oracle.
    let mut ops = GpuMats::new(&ctx).unwrap();
    let am = ops.upload(&a, 1, n, n).unwrap();
    let y = sqrt(&mut ops, am, SqrtMethod::NewtonSchulz { iters: 30, tol: None }).unwrap();
    let cm = ops.upload(&c, 1, n, n).unwrap();
    let x = sqrt_backward(&mut ops, am, y, cm, 15).unwrap();
    let got = ops.read(x).unwrap();
    let err = rel(&got, &x_oracle);
    assert!(err <= 1e-4, "sqrt backward vs exact: {err:e}");
    // With the reference's 8 iterations the error is the sign iteration's truncation, still small here.
    let x8 = sqrt_backward(&mut ops, am, y, cm, 8).unwrap();
    let err8 = rel(&ops.read(x8).unwrap(), &x_oracle);
    assert!(err8 <= 5e-2, "8 iterations: {err8:e}");
    // CPU twin agrees with the GPU.
    let mut cpu = CpuMats::default();
    let am = cpu.upload(&a, 1, n, n).unwrap();
    let y = sqrt(&mut cpu, am, SqrtMethod::NewtonSchulz { iters: 30, tol: None }).unwrap();
    let cm = cpu.upload(&c, 1, n, n).unwrap();
    let xc = sqrt_backward(&mut cpu, am, y, cm, 15).unwrap();
    assert!(rel32(&got, &cpu.read(xc).unwrap()) <= 1e-5);

    // Inverse square root: ⟨X, E⟩ against central differences of L = ⟨C, A^{−1/2}⟩.
    let mut ops = GpuMats::new(&ctx).unwrap();
    let am = ops.upload(&a, 1, n, n).unwrap();
    let z = inv_sqrt(&mut ops, am, SqrtMethod::NewtonSchulz { iters: 30, tol: None }).unwrap();
    let cm = ops.upload(&c, 1, n, n).unwrap();
    let xi = inv_sqrt_backward(&mut ops, z, cm, 15).unwrap();
    let got = ops.read(xi).unwrap();
    let fd = (loss(1.0, h, -0.5) - loss(-1.0, h, -0.5)) / (2.0 * h);
    let analytic: f64 = got.iter().zip(&e).map(|(x, e)| *x as f64 * *e as f64).sum();
    assert!((fd - analytic).abs() <= 1e-3 * fd.abs().max(1.0), "inv_sqrt backward vs FD: {analytic} vs {fd}");
}

#[test]
fn batched_equals_one_by_one() {
    let ctx = common::ctx();
    let n = 20;
    let mats: Vec<Vec<f32>> = (0..4).map(|z| spd(n, 10.0 + 10.0 * z as f64, 1.0 + z as f64, 100 + z as u64)).collect();
    let all = batch(&mats);
    for method in [
        SqrtMethod::NewtonSchulz { iters: 12, tol: None },
        SqrtMethod::Mtp { degree: 10 },
        SqrtMethod::Mpa { degree: 5 },
    ] {
        let together = run_root(&mut GpuMats::new(&ctx).unwrap(), &all, 4, n, method, false);
        for (z, m) in mats.iter().enumerate() {
            let alone = run_root(&mut GpuMats::new(&ctx).unwrap(), m, 1, n, method, false);
            assert_eq!(&together[z * n * n..(z + 1) * n * n], &alone[..], "{method:?} matrix {z}");
        }
    }
    let mut ops = GpuMats::new(&ctx).unwrap();
    let am = ops.upload(&all, 4, n, n).unwrap();
    let r = inv_root(&mut ops, am, 4, InvRootOptions::default()).unwrap();
    let together = ops.read(r.x).unwrap();
    for (z, m) in mats.iter().enumerate() {
        let mut one = GpuMats::new(&ctx).unwrap();
        let mz = one.upload(m, 1, n, n).unwrap();
        let rz = inv_root(&mut one, mz, 4, InvRootOptions::default()).unwrap();
        assert_eq!(rz.iters[0], r.iters[z], "matrix {z} iterations");
        assert_eq!(&together[z * n * n..(z + 1) * n * n], &one.read(rz.x).unwrap()[..], "inv_root matrix {z}");
    }
}

/// grow / copy_batch / write_at / read_at on one backend: the stacking ASGO does, with the values
/// each step leaves (row-major, every matrix of every batch).
fn stack_ops(ops: &mut impl MatOps) -> Vec<Vec<f32>> {
    let seq = |n: usize, k: f32| (0..n).map(|i| k + i as f32).collect::<Vec<f32>>();
    let a = ops.upload(&seq(2 * 3 * 5, 1.0), 2, 3, 5).unwrap();
    let flat = ops.upload(&seq(3 * 15, 100.0), 3, 15, 1).unwrap();
    // Work recorded before the growth must land in what is kept.
    ops.affine(a, None, 0.0, Scale::One, 2.0, 0.0).unwrap();
    let b = ops.upload(&[9.0; 4], 1, 2, 2).unwrap();
    ops.grow(&[a, b], 5).unwrap();
    ops.grow(&[a], 5).unwrap(); // the same length: a no-op
    ops.copy_batch(a, 2, flat, 1, 2).unwrap(); // other shape, same element count
    ops.write_at(a, 4, &seq(15, -7.0)).unwrap();
    let mut out = vec![ops.read(a).unwrap()];
    out.extend((0..5).map(|z| ops.read_at(a, z).unwrap()));
    out.push(ops.read(b).unwrap());
    // Refused: shrinking (also when another of the matrices would grow: all or nothing), out of
    // range, different sizes, the batch onto itself.
    assert!(ops.grow(&[a], 4).is_err());
    let c = ops.alloc(1, 1, 1).unwrap();
    assert!(ops.grow(&[c, a], 4).is_err());
    assert_eq!(ops.shape(c), (1, 1, 1));
    assert!(ops.copy_batch(a, 4, flat, 0, 2).is_err());
    assert!(ops.copy_batch(a, 0, flat, 2, 2).is_err());
    let small = ops.alloc(1, 2, 2).unwrap();
    assert!(ops.copy_batch(small, 0, a, 0, 1).is_err());
    assert!(ops.copy_batch(a, 0, a, 1, 1).is_err());
    assert!(ops.write_at(a, 0, &[1.0; 14]).is_err());
    out.push(ops.read(a).unwrap());
    out
}

#[test]
fn batches_grow_and_copy_matrices_in_place_on_both_backends() {
    let ctx = common::ctx();
    let gpu = stack_ops(&mut GpuMats::new(&ctx).unwrap());
    let cpu = stack_ops(&mut CpuMats::default());
    assert_eq!(gpu, cpu);
    // Worked by hand: the doubled first two matrices, two rows of `flat`, a zero-filled slot
    // overwritten by write_at; the refused calls changed nothing.
    let seq = |n: usize, k: f32| (0..n).map(|i| k + i as f32).collect::<Vec<f32>>();
    let mut want: Vec<f32> = seq(30, 1.0).iter().map(|v| 2.0 * v).collect();
    want.extend(seq(30, 115.0));
    want.extend(seq(15, -7.0));
    assert_eq!(cpu[0], want);
    assert_eq!(cpu[1..6].concat(), want);
    let mut b = vec![9.0; 4];
    b.extend([0.0; 16]);
    assert_eq!(cpu[6], b);
    assert_eq!(cpu[7], want);
}

#[test]
fn bad_inputs_are_errors() {
    let ctx = common::ctx();
    let mut ops = GpuMats::new(&ctx).unwrap();
    let rect = ops.upload(&[1.0; 6], 1, 2, 3).unwrap();
    assert!(sqrt(&mut ops, rect, SqrtMethod::Mpa { degree: 5 }).is_err());
    let zero = ops.upload(&[0.0; 4], 1, 2, 2).unwrap();
    let e = sqrt(&mut ops, zero, SqrtMethod::Mtp { degree: 10 }).unwrap_err();
    assert!(e.to_string().contains("zero"), "{e}");
    let nan = ops.upload(&[1.0, f32::NAN, f32::NAN, 1.0], 1, 2, 2).unwrap();
    let e = inv_sqrt(&mut ops, nan, SqrtMethod::NewtonSchulz { iters: 5, tol: None }).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = inv_root(&mut ops, nan, 2, InvRootOptions::default()).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let spd2 = ops.upload(&[2.0, 0.0, 0.0, 1.0], 1, 2, 2).unwrap();
    assert!(sqrt(&mut ops, spd2, SqrtMethod::Mpa { degree: 0 }).is_err());
    assert!(inv_root(&mut ops, spd2, 2, InvRootOptions { eps: f32::NAN, ..Default::default() }).is_err());
}

#[test]
fn blocked_spd_solve_matches_cpu_twin_and_refuses_indefinite_matrices() {
    use gpuopt::roots::solve_spd;
    let ctx = common::ctx();
    for &(b, n, k) in &[(1, 1, 1), (2, 31, 5), (1, 32, 32), (3, 33, 7), (1, 100, 100)] {
        let m: Vec<f32> = (0..b).flat_map(|z| spd(n, 50.0, 2.0, (n * 10 + z) as u64)).collect();
        let rhs = TestRng::new(n as u64).normals(b * n * k, 1.0);
        let mut outs = Vec::new();
        let mut gpu = GpuMats::new(&ctx).unwrap();
        let mut cpu = CpuMats::default();
        for ops in [&mut gpu as &mut dyn SpdDyn, &mut cpu] {
            outs.push(ops.spd_case(&m, &rhs, b, n, k));
        }
        for z in 0..b {
            let mz = nalgebra::DMatrix::from_fn(n, n, |i, j| m[z * n * n + i * n + j] as f64);
            let xz = nalgebra::DMatrix::from_fn(n, k, |i, j| outs[0][z * n * k + i * k + j] as f64);
            let rz = nalgebra::DMatrix::from_fn(n, k, |i, j| rhs[z * n * k + i * k + j] as f64);
            let res = (&mz * &xz - &rz).norm() / (mz.norm() * xz.norm());
            assert!(res <= 20.0 * n as f64 * EPS, "{b}x{n}x{k} matrix {z}: residual {res:e}");
        }
        let r = rel32(&outs[0], &outs[1]);
        assert!(r <= 1e-4, "{b}x{n}x{k}: GPU vs CPU twin {r:e}");
    }
    let mut gpu = GpuMats::new(&ctx).unwrap();
    let indefinite = gpu.upload(&[1.0, 2.0, 2.0, 1.0], 1, 2, 2).unwrap();
    let rhs = gpu.upload(&[1.0, 1.0], 1, 2, 1).unwrap();
    let e = solve_spd(&mut gpu, indefinite, rhs).unwrap_err();
    assert!(e.to_string().contains("not positive definite"), "{e}");
}

trait SpdDyn {
    fn spd_case(&mut self, m: &[f32], rhs: &[f32], b: usize, n: usize, k: usize) -> Vec<f32>;
}

impl<T: MatOps> SpdDyn for T {
    fn spd_case(&mut self, m: &[f32], rhs: &[f32], b: usize, n: usize, k: usize) -> Vec<f32> {
        let mm = self.upload(m, b, n, n).unwrap();
        let rm = self.upload(rhs, b, n, k).unwrap();
        gpuopt::roots::solve_spd(self, mm, rm).unwrap();
        self.read(rm).unwrap()
    }
}

/// Every method pre-normalises by the Frobenius norm, which the GPU now sums in three ranges: an SPD
/// matrix of 1e-30s or 1e30s has the root of the unscaled one, scaled (the GPU norm of 1e-25s was 0,
/// reported as a zero matrix, while the twin was right).
#[test]
fn roots_at_extreme_scales_follow_the_unscaled_root() {
    let n = 6;
    let a0 = spd(n, 10.0, 1.0, 7);
    let method = SqrtMethod::NewtonSchulz { iters: 30, tol: None };
    let base = run_root(&mut CpuMats::default(), &a0, 1, n, method, false);
    for scale in [1e-30f32, 1e-25, 1e30] {
        let a: Vec<f32> = a0.iter().map(|v| v * scale).collect();
        let want: Vec<f32> = base.iter().map(|v| v * scale.sqrt()).collect();
        let gpu = run_root(&mut GpuMats::new(&common::ctx()).unwrap(), &a, 1, n, method, false);
        let cpu = run_root(&mut CpuMats::default(), &a, 1, n, method, false);
        assert!(rel32(&gpu, &want) <= 1e-5, "{scale:e}: gpu {:e}", rel32(&gpu, &want));
        assert!(rel32(&cpu, &want) <= 1e-5, "{scale:e}: cpu {:e}", rel32(&cpu, &want));
    }
}

/// `copy_window` moves a 3-D box between batches at any offsets (Shampoo's block gather/scatter),
/// the same on both backends and as index arithmetic says; `reshape` keeps the values and refuses
/// another element count; boxes outside their batches are refused.
#[test]
fn copy_window_and_reshape_move_boxes_as_indexed() {
    let ctx = common::ctx();
    let src: Vec<f32> = (0..4 * 5 * 6).map(|v| v as f32).collect();
    let (at, size, dst_at) = ([1, 2, 1], [3, 2, 4], [0, 1, 2]);
    let mut want = vec![0.0f32; 3 * 4 * 7];
    for z in 0..size[0] {
        for i in 0..size[1] {
            for j in 0..size[2] {
                want[(dst_at[0] + z) * 28 + (dst_at[1] + i) * 7 + dst_at[2] + j] =
                    src[(at[0] + z) * 30 + (at[1] + i) * 6 + at[2] + j];
            }
        }
    }
    fn run(ops: &mut impl MatOps, src: &[f32], at: [usize; 3], size: [usize; 3], dst_at: [usize; 3]) -> Vec<f32> {
        // Uploaded flat and reshaped: the values stay in place.
        let s = ops.upload(src, 1, 1, src.len()).unwrap();
        ops.reshape(s, 4, 5, 6).unwrap();
        let d = ops.alloc(3, 4, 7).unwrap();
        ops.copy_window(d, dst_at, s, at, size).unwrap();
        assert!(ops.reshape(d, 3, 4, 6).is_err(), "another element count");
        assert!(ops.copy_window(d, [1, 0, 0], s, at, size).is_err(), "a box past the destination's batch");
        assert!(ops.copy_window(d, dst_at, s, [0, 4, 0], size).is_err(), "a box past the source's rows");
        assert!(ops.copy_window(s, [0, 0, 0], s, at, size).is_err(), "one matrix as both");
        ops.read(d).unwrap()
    }
    assert_eq!(run(&mut CpuMats::default(), &src, at, size, dst_at), want);
    assert_eq!(run(&mut GpuMats::new(&ctx).unwrap(), &src, at, size, dst_at), want);
}

/// `sign` (Shampoo's SQRT_N graft): ±1, and 0 for ±0, on both backends; a size mismatch is refused.
#[test]
fn sign_is_zero_at_zero_on_both_backends() {
    let ctx = common::ctx();
    let x = [-2.0f32, -0.0, 0.0, 3.0, -1e-30, 1e30, f32::MIN_POSITIVE];
    let want = [-1.0f32, 0.0, 0.0, 1.0, -1.0, 1.0, 1.0];
    fn run(ops: &mut impl MatOps, x: &[f32]) -> Vec<f32> {
        let xm = ops.upload(x, 1, 1, x.len()).unwrap();
        let out = ops.alloc(1, 1, x.len()).unwrap();
        ops.sign(xm, out).unwrap();
        let short = ops.alloc(1, 1, x.len() - 1).unwrap();
        assert!(ops.sign(xm, short).is_err());
        ops.read(out).unwrap()
    }
    assert_eq!(run(&mut CpuMats::default(), &x), want);
    assert_eq!(run(&mut GpuMats::new(&ctx).unwrap(), &x), want);
}

/// A subnormal pivot is singular on every device: a GPU may flush it to 0 (singular) or keep it
/// (1/pivot = Inf, a result of Inf and NaN that said "not singular"); the CPU twin agrees.
#[test]
fn subnormal_pivots_are_singular_on_both_backends() {
    let ctx = common::ctx();
    fn flags(ops: &mut impl MatOps) -> (Vec<f32>, Vec<f32>) {
        // Batch of two 2x2 systems: diag(1e-40, 1) (subnormal pivot) and diag(2, 4) (fine).
        let m = ops.upload(&[1e-40, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 4.0], 2, 2, 2).unwrap();
        let rhs = ops.upload(&[1.0, 1.0, 1.0, 1.0], 2, 2, 1).unwrap();
        let status = ops.alloc(2, 1, 1).unwrap();
        ops.solve(m, rhs, status).unwrap();
        let solved = ops.read(status).unwrap();
        let d = ops.upload(&[1e-40, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 4.0], 2, 2, 2).unwrap();
        let out = ops.alloc(2, 2, 2).unwrap();
        let st = ops.alloc(2, 1, 1).unwrap();
        ops.invert_spd_blocks(d, out, st).unwrap();
        (solved, ops.read(st).unwrap())
    }
    let want = (vec![1.0, 0.0], vec![1.0, 0.0]);
    assert_eq!(flags(&mut CpuMats::default()), want);
    assert_eq!(flags(&mut GpuMats::new(&ctx).unwrap()), want);
}
