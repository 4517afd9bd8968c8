//! Matrix square roots and inverse roots (ALGORITHMS.md §7): the coupled Newton–Schulz iteration for
//! A^{1/2} and A^{−1/2}, the Matrix Taylor Polynomial (MTP) and Matrix Padé Approximant (MPA) of
//! "Fast Differentiable Matrix Square Root", their backward through the Lyapunov equation, and the
//! coupled Newton iteration for the inverse p-th root that Shampoo uses.
//!
//! Every algorithm is written once, against [`MatOps`]: a handful of batched matrix operations
//! (GEMM with a fused addend, an affine map with a per-matrix scale, Frobenius norms, max|X − I|, a
//! Gauss–Jordan solve). [`crate::kernels::roots::GpuMats`] runs them as WGSL dispatches recorded into
//! one encoder (nothing is read back except the scalars an algorithm branches on);
//! [`crate::reference::roots::CpuMats`] is their CPU twin, op by op. Parity tests hold the GPU ops to
//! the CPU ops; the algorithms themselves are held to an f64 eigendecomposition oracle
//! ([`crate::reference::roots::oracle_power`]), which is independent of both.
//!
//! Inputs are batches [b, n, n] of symmetric positive definite matrices (positive semi-definite with a
//! ridge for [`inv_root`]); the functions do not test symmetry on the device (the caller vouches for it;
//! `gpuopt matfn` checks it on the host).
//!
//! ```
//! use gpuopt::reference::roots::CpuMats;
//! use gpuopt::roots::{sqrt, MatOps, SqrtMethod};
//! # fn main() -> gpuopt::Result<()> {
//! let mut ops = CpuMats::default(); // or GpuMats::new(&Context::new()?) for the GPU
//! let a = ops.upload(&[4.0, 0.0, 0.0, 9.0], 1, 2, 2)?;
//! let y = sqrt(&mut ops, a, SqrtMethod::NewtonSchulz { iters: 20, tol: None })?;
//! let v = ops.read(y)?;
//! assert!((v[0] - 2.0).abs() < 1e-4 && (v[3] - 3.0).abs() < 1e-4);
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;

/// A batch of matrices owned by a [`MatOps`] backend (a handle; the backend holds the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat(pub(crate) usize);

/// The per-matrix factor of [`MatOps::affine`].
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    /// 1.
    One,
    /// s\[z\]^power, with s a \[b\] (or [b, 1, 1]) batch of scalars.
    Pow(Mat, f32),
    /// Writes matrix z only where mask\[z\] ≠ 0 (a per-matrix select); the others keep their values.
    Mask(Mat),
    /// num\[z\] / (den\[z\] + 1e-16) (Shampoo's grafting ratio).
    Ratio(Mat, Mat),
    /// Writes matrix z only where dev\[z\] < f32::MAX, i.e. where [`MatOps::max_dev`] found no NaN or
    /// Inf in it (ASGO's fallback: an identity stays where the root broke down).
    Finite(Mat),
    /// 1 / max(1, s\[z\] / limit) (optax Shampoo's clip_by_scaled_gradient_norm, s a norm).
    Clip(Mat, f32),
}

/// The batched matrix operations the root algorithms are written against.
pub trait MatOps {
    /// A zero-filled batch of `batch` rows×cols matrices.
    fn alloc(&mut self, batch: usize, rows: usize, cols: usize) -> Result<Mat>;
    /// A batch filled from row-major `data`.
    fn upload(&mut self, data: &[f32], batch: usize, rows: usize, cols: usize) -> Result<Mat>;
    /// (batch, rows, cols).
    fn shape(&self, m: Mat) -> (usize, usize, usize);
    /// c ← α·op(a)·op(b) + β·(addend or c) for every matrix of the batch (`desc` gives the sizes;
    /// a or b may hold one matrix that is broadcast, and so may the addend).
    fn gemm(&mut self, desc: GemmDesc, a: Mat, b: Mat, c: Mat, addend: Option<Mat>) -> Result<()>;
    /// out\[z\] ← α·s\[z\]·x\[z\] + β·out\[z\] + γ·I (x = None reads nothing: α is ignored; β = 0 does not
    /// read out).
    fn affine(&mut self, out: Mat, x: Option<Mat>, alpha: f32, scale: Scale, beta: f32, gamma: f32) -> Result<()>;
    /// out\[z\] ← ‖x\[z\]‖_F (out holds `batch` scalars).
    fn frobenius(&mut self, x: Mat, out: Mat) -> Result<()>;
    /// out\[z\] ← max_ij |x\[z\]_ij − I_ij| (NaN counts as +Inf).
    fn max_dev(&mut self, x: Mat, out: Mat) -> Result<()>;
    /// rhs\[z\] ← m\[z\]⁻¹·rhs\[z\] by Gauss–Jordan elimination with partial pivoting (m is overwritten);
    /// status\[z\] ← 1 where a pivot was zero, subnormal or not finite, else 0.
    fn solve(&mut self, m: Mat, rhs: Mat, status: Mat) -> Result<()>;
    /// acc ← decay·acc + weight·g², out ← g/(sqrt(acc) + eps), elementwise (AdaGrad / RMSProp grafting).
    fn graft(&mut self, acc: Mat, g: Mat, out: Mat, decay: f32, weight: f32, eps: f32) -> Result<()>;
    /// out ← sign(x) elementwise (+1, −1, or 0 for ±0; Shampoo's SQRT_N graft); x and out of one size.
    /// A GPU may flush a subnormal x to zero (WGSL allows it) and give 0 where the CPU twin gives ±1.
    fn sign(&mut self, x: Mat, out: Mat) -> Result<()>;
    /// out\[z\] ← x\[z\]ᵀ for every matrix of the batch (x batch × rows × cols, out batch × cols × rows,
    /// different batches; the batch within [`MatOps::max_batch`]).
    fn transpose(&mut self, x: Mat, out: Mat) -> Result<()>;
    /// Copies the h×w window at (row, col) `src_at` of every matrix of `src` (or of its one matrix,
    /// broadcast) to `dst_at` of the matching matrix of `dst`.
    fn copy_region(
        &mut self,
        dst: Mat,
        dst_at: (usize, usize),
        src: Mat,
        src_at: (usize, usize),
        h: usize,
        w: usize,
    ) -> Result<()>;
    /// Copies the box of `size` = [matrices, rows, cols] at `src_at` = [matrix, row, col] of `src` to
    /// `dst_at` of `dst` (a block of a k-D tensor: tensor and block reshaped so that the batch, rows
    /// and cols are their last three dimensions). Both boxes must lie inside their batches, and
    /// `size[0]` within [`MatOps::max_batch`].
    fn copy_window(
        &mut self,
        dst: Mat,
        dst_at: [usize; 3],
        src: Mat,
        src_at: [usize; 3],
        size: [usize; 3],
    ) -> Result<()>;
    /// Gives `m` the shape [batch, rows, cols] of the same element count (its row-major values are
    /// unchanged; work recorded before keeps the old shape).
    fn reshape(&mut self, m: Mat, batch: usize, rows: usize, cols: usize) -> Result<()>;
    /// out\[z\] ← d\[z\]⁻¹ for a batch of h×h blocks (h ≤ 32) of symmetric positive definite matrices, by
    /// Gauss–Jordan without pivoting; status\[z\] ← 1 where a pivot was not a positive normal f32.
    fn invert_spd_blocks(&mut self, d: Mat, out: Mat, status: Mat) -> Result<()>;
    /// out ← uniform draws in [0, 1) from the library's Philox generator (seed, sample 0, tensor 0,
    /// element index i), ALGORITHMS.md §11.4's power-iteration start before the map to [−1, 1).
    fn fill_uniform(&mut self, out: Mat, seed: u64) -> Result<()>;
    /// The batch's values, row-major (runs everything recorded so far).
    fn read(&mut self, m: Mat) -> Result<Vec<f32>>;
    /// Overwrites `dst` with row-major `data` (its element count) through a scratch upload, released
    /// at once; work recorded earlier reads the old values.
    fn write(&mut self, dst: Mat, data: &[f32]) -> Result<()> {
        let (b, r, c) = self.shape(dst);
        let mark = self.mark();
        let res = self.upload(data, b, r, c).and_then(|up| self.affine(dst, Some(up), 1.0, Scale::One, 0.0, 0.0));
        self.release(mark);
        res
    }
    /// Copies `count` whole matrices, dst\[dst_z + i\] ← src\[src_z + i\] (the two hold matrices of
    /// the same element count and are different batches), in order with the work recorded before.
    fn copy_batch(&mut self, dst: Mat, dst_z: usize, src: Mat, src_z: usize, count: usize) -> Result<()>;
    /// Grows each of `mats` to `batch` matrices under the same handles: the first ones keep their
    /// values (work recorded earlier still sees the old storage, which is freed at the next submit),
    /// the new ones are zero; matrices already that long are left alone. All or nothing: on an
    /// error (a batch that would shrink, no memory) none has changed.
    fn grow(&mut self, mats: &[Mat], batch: usize) -> Result<()>;
    /// The most f32 elements one batch may hold (the GPU's largest storage binding).
    fn max_elements(&self) -> usize {
        usize::MAX
    }
    /// The most matrices one batch may hold (the GPU's workgroups per grid dimension: the
    /// operations put the batch index there; by default 65,535, the GEMM's batch limit, which the
    /// CPU twin shares).
    fn max_batch(&self) -> usize {
        65_535
    }
    /// Overwrites matrix `z` of `dst` with row-major `data` (one matrix's elements), as
    /// [`MatOps::write`] does for a whole batch.
    fn write_at(&mut self, dst: Mat, z: usize, data: &[f32]) -> Result<()> {
        let (_, r, c) = self.shape(dst);
        let mark = self.mark();
        let res = self.upload(data, 1, r, c).and_then(|up| self.copy_batch(dst, z, up, 0, 1));
        self.release(mark);
        res
    }
    /// Matrix `z` of `m`, row-major (runs everything recorded so far).
    fn read_at(&mut self, m: Mat, z: usize) -> Result<Vec<f32>> {
        let (_, r, c) = self.shape(m);
        let mark = self.mark();
        let res = self.alloc(1, r, c).and_then(|one| {
            self.copy_batch(one, 0, m, z, 1)?;
            self.read(one)
        });
        self.release(mark);
        res
    }
    /// Submits the work recorded so far without waiting for it (a no-op on the CPU).
    fn submit(&mut self) {}
    /// A mark of the matrices allocated so far, for [`MatOps::release`].
    fn mark(&self) -> usize;
    /// Frees every matrix allocated after `mark` (their handles become invalid); work already
    /// recorded that uses them still runs. The algorithms release their scratch matrices this way,
    /// so a long-lived backend (Shampoo's) does not grow.
    fn release(&mut self, mark: usize);
}

/// How [`sqrt`] and [`inv_sqrt`] compute the root (ALGORITHMS.md §11.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SqrtMethod {
    /// The coupled Newton–Schulz iteration (§7.5): `iters` iterations, or fewer once
    /// ‖I − Z·Y‖_F ≤ `tol` (tested before each iteration, which costs a readback).
    NewtonSchulz {
        /// Iterations (iSQRT-COV's default is 5).
        iters: usize,
        /// Optional early stop.
        tol: Option<f32>,
    },
    /// The Taylor polynomial of the given degree (§7.2; default 10).
    Mtp {
        /// K.
        degree: usize,
    },
    /// The diagonal Padé approximant [N/N] (§7.3; default 5).
    Mpa {
        /// N.
        degree: usize,
    },
}

/// Options of [`inv_root`] (ALGORITHMS.md §7.6, §11.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvRootOptions {
    /// The ridge added to A (absolute, or times λ_max with `eps_relative`).
    pub eps: f32,
    /// Scale the ridge by λ_max from a power iteration (ComputePower / distributed Shampoo).
    pub eps_relative: bool,
    /// Iteration cap.
    pub max_iters: usize,
    /// Stop once max|M − I| ≤ tol.
    pub tol: f32,
}

impl Default for InvRootOptions {
    fn default() -> Self {
        InvRootOptions { eps: 1e-6, eps_relative: false, max_iters: 100, tol: 1e-6 }
    }
}

/// The result of [`inv_root`].
#[derive(Clone, Debug)]
pub struct InvRoot {
    /// X ≈ (A + ridge·I)^{−1/p}, per matrix the last iterate accepted.
    pub x: Mat,
    /// max|M − I| of the accepted iterate, per matrix (the achieved error).
    pub err: Vec<f32>,
    /// Accepted iterations, per matrix.
    pub iters: Vec<usize>,
}

/// Where [`inv_root`] reports failure: Shampoo's `inverse_failure_threshold` (§7.7.2).
pub const INV_ROOT_FAILURE: f32 = 0.1;

/// Coefficients c_0..c_K of the Taylor series of (1 − x)^r about 0 (r = ½: sqrt; r = −½: inverse
/// sqrt), in f64: c_k = c_{k−1}·(k − 1 − r)/k.
///
/// ```
/// assert_eq!(gpuopt::roots::taylor_coefficients(0.5, 3), vec![1.0, -0.5, -0.125, -0.0625]);
/// ```
pub fn taylor_coefficients(r: f64, degree: usize) -> Vec<f64> {
    let mut c = vec![1.0];
    for k in 1..=degree {
        let prev = c[k - 1];
        c.push(prev * (k as f64 - 1.0 - r) / k as f64);
    }
    c
}

/// The [M/N] Padé approximant P/Q (q_0 = 1) of the series `a` (at least M + N + 1 terms), by the rule
/// of ALGORITHMS.md §11.4, solved in f64 (nalgebra LU).
///
/// ```
/// use gpuopt::roots::{pade_coefficients, taylor_coefficients};
/// let (p, q) = pade_coefficients(&taylor_coefficients(0.5, 10), 5, 5)?;
/// assert!((p[1] + 11.0 / 4.0).abs() < 1e-12 && (q[5] + 1.0 / 1024.0).abs() < 1e-12); // the paper's
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn pade_coefficients(a: &[f64], m: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() < m + n + 1 {
        return Err(Error::Invalid(format!("Padé [{m}/{n}] needs {} Taylor terms, got {}", m + n + 1, a.len())));
    }
    let at = |i: isize| if i < 0 { 0.0 } else { a[i as usize] };
    // Σ_{j=1..N} q_j·a_{k−j} = −a_k for k = M+1 … M+N.
    let lhs = nalgebra::DMatrix::from_fn(n, n, |r, c| at((m + 1 + r) as isize - (c + 1) as isize));
    let rhs = nalgebra::DVector::from_fn(n, |r, _| -a[m + 1 + r]);
    let q_tail =
        lhs.lu().solve(&rhs).ok_or_else(|| Error::Invalid(format!("Padé [{m}/{n}]: the system is singular")))?;
    let mut q = vec![1.0];
    q.extend(q_tail.iter());
    let p = (0..=m).map(|k| (0..=k.min(n)).map(|j| q[j] * a[k - j]).sum()).collect();
    Ok((p, q))
}

/// Checks that [`MatOps::grow`] shrinks none of `mats`.
pub(crate) fn check_grow(ops: &impl MatOps, mats: &[Mat], batch: usize) -> Result<()> {
    match mats.iter().map(|&m| ops.shape(m).0).find(|&b| b > batch) {
        Some(b) => Err(Error::Invalid(format!("grow from {b} to {batch} matrices (it only grows)"))),
        None => Ok(()),
    }
}

/// The checks of [`MatOps::copy_window`] (boxes inside their batches, distinct matrices, a batch
/// the grid holds); true when the box is empty (nothing to copy).
pub(crate) fn check_copy_window(
    ops: &impl MatOps,
    (dst, dst_at): (Mat, [usize; 3]),
    (src, src_at): (Mat, [usize; 3]),
    size: [usize; 3],
) -> Result<bool> {
    let (d, s) = (ops.shape(dst), ops.shape(src));
    let inside = |at: [usize; 3], (b, r, c): (usize, usize, usize)| {
        at[0] + size[0] <= b && at[1] + size[1] <= r && at[2] + size[2] <= c
    };
    if dst == src || !inside(dst_at, d) || !inside(src_at, s) || size[0] > ops.max_batch() {
        return Err(Error::Invalid(format!(
            "copy_window of {size:?} from {src_at:?} of {s:?} to {dst_at:?} of {d:?} (distinct matrices, boxes \
             inside them, at most {} matrices)",
            ops.max_batch()
        )));
    }
    Ok(size.contains(&0))
}

/// Checks that `x` and `out` hold the same number of elements (an elementwise operation's operands).
pub(crate) fn check_same_size(ops: &impl MatOps, x: Mat, out: Mat, what: &str) -> Result<()> {
    let ((b, r, c), (ob, or, oc)) = (ops.shape(x), ops.shape(out));
    if b * r * c != ob * or * oc {
        return Err(Error::Shape { what: format!("{what} output"), expected: vec![b, r, c], got: vec![ob, or, oc] });
    }
    Ok(())
}

/// The checks of [`MatOps::transpose`]: out is batch × cols × rows, a different matrix, and the batch
/// fits one grid dimension. Returns x's (batch, rows, cols).
pub(crate) fn check_transpose(ops: &impl MatOps, x: Mat, out: Mat) -> Result<(usize, usize, usize)> {
    let (b, r, c) = ops.shape(x);
    if ops.shape(out) != (b, c, r) || x == out {
        let (ob, or, oc) = ops.shape(out);
        return Err(Error::Shape {
            what: "transpose output (another matrix)".into(),
            expected: vec![b, c, r],
            got: vec![ob, or, oc],
        });
    }
    if b > ops.max_batch() {
        return Err(Error::Invalid(format!("transpose of {b} matrices: more than this backend's {}", ops.max_batch())));
    }
    Ok((b, r, c))
}

/// The check of [`MatOps::reshape`]: the same element count.
pub(crate) fn check_reshape(ops: &impl MatOps, m: Mat, shape: (usize, usize, usize)) -> Result<()> {
    let (b, r, c) = ops.shape(m);
    if b * r * c != shape.0 * shape.1 * shape.2 {
        return Err(Error::Shape {
            what: "reshape (same element count)".into(),
            expected: vec![b, r, c],
            got: vec![shape.0, shape.1, shape.2],
        });
    }
    Ok(())
}

/// Checks [`MatOps::copy_batch`]'s arguments; returns the elements of one matrix.
pub(crate) fn check_copy_batch(
    ops: &impl MatOps,
    (dst, dst_z): (Mat, usize),
    (src, src_z): (Mat, usize),
    count: usize,
) -> Result<usize> {
    let ((db, dr, dc), (sb, sr, sc)) = (ops.shape(dst), ops.shape(src));
    if dst == src || dr * dc != sr * sc || dst_z + count > db || src_z + count > sb {
        return Err(Error::Invalid(format!(
            "copy_batch of {count} matrices from {src_z} of [{sb}, {sr}, {sc}] to {dst_z} of [{db}, {dr}, {dc}] \
             (distinct batches, equal matrix sizes, in range)"
        )));
    }
    Ok(dr * dc)
}

fn square(ops: &impl MatOps, a: Mat, what: &str) -> Result<(usize, usize)> {
    let (b, r, c) = ops.shape(a);
    if r != c || b == 0 || r == 0 {
        return Err(Error::Shape {
            what: format!("{what} (square, non-empty)"),
            expected: vec![b, r, r],
            got: vec![b, r, c],
        });
    }
    Ok((b, r))
}

/// out ← α·a·b + β·addend for square n×n batches (a or b may be one broadcast matrix).
fn mm(ops: &mut impl MatOps, out: Mat, a: Mat, b: Mat, alpha: f32, addend: Option<(Mat, f32)>) -> Result<()> {
    product(ops, out, a, b, alpha, addend, false)
}

/// [`mm`] for a product known to be symmetric — a·b with a and b symmetric polynomials in the same
/// matrix (so they commute), plus a symmetric addend: the half-product GEMM computes the tiles on and
/// above the diagonal and mirrors them (half the FLOPs, and the result exactly symmetric, which the
/// iterations' f32 drift would otherwise lose, ALGORITHMS.md §7.5). Not for the updates of a coupled
/// pair (Y·T, T·Z of Newton–Schulz and Polar Express): mirroring there breaks the coupling, and the
/// iterates drift away after converging on ill-conditioned input (see [`coupled_newton_schulz`]).
fn mm_sym(ops: &mut impl MatOps, out: Mat, a: Mat, b: Mat, alpha: f32, addend: Option<(Mat, f32)>) -> Result<()> {
    product(ops, out, a, b, alpha, addend, true)
}

fn product(
    ops: &mut impl MatOps,
    out: Mat,
    a: Mat,
    b: Mat,
    alpha: f32,
    addend: Option<(Mat, f32)>,
    symmetric: bool,
) -> Result<()> {
    let (batch, n, _) = ops.shape(out);
    let desc = GemmDesc { batch, alpha, beta: addend.map_or(0.0, |d| d.1), symmetric, ..GemmDesc::new(n, n, n) };
    ops.gemm(desc, a, b, out, addend.map(|d| d.0))
}

/// An error naming `name` unless `v` is finite and ≥ 0.
fn finite_nonneg(name: &str, v: f32) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::Hyperparameter {
            name: name.into(),
            value: v as f64,
            reason: "must be finite and >= 0".into(),
        });
    }
    Ok(())
}

/// One identity matrix (broadcast as a GEMM addend).
fn identity(ops: &mut impl MatOps, batch: usize, n: usize) -> Result<Mat> {
    let i = ops.alloc(batch, n, n)?;
    ops.affine(i, None, 0.0, Scale::One, 0.0, 1.0)?;
    Ok(i)
}

/// ‖x[z]‖_F per matrix, read back and checked: an error naming `what` and the matrix when one is not
/// finite (NaN or Inf in the input, or a norm past f32's range), is zero (`zero` says what that means
/// for the caller), or is so small that dividing by it overflows (a subnormal norm: Â = A/s would
/// hold Inf, and the result NaN).
fn checked_norms(ops: &mut impl MatOps, x: Mat, what: &str, zero: &str) -> Result<Mat> {
    let norms = ops.alloc(ops.shape(x).0, 1, 1)?;
    ops.frobenius(x, norms)?;
    for (z, v) in ops.read(norms)?.into_iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "{what}: matrix {z} holds NaN or Inf, or its Frobenius norm overflows f32 (> 3.4e38)"
            )));
        }
        if v <= 0.0 {
            return Err(Error::Invalid(format!("{what}: matrix {z} {zero}")));
        }
        if !(1.0 / v).is_finite() {
            return Err(Error::Invalid(format!(
                "{what}: matrix {z} has Frobenius norm {v:e}, below what f32 can divide by (its reciprocal \
                 overflows); scale the input up"
            )));
        }
    }
    Ok(norms)
}

/// Per-matrix Frobenius norms s (read back and checked: every s must be finite and positive) and
/// Â = A / s (§7.1).
fn normalise(ops: &mut impl MatOps, a: Mat, what: &str) -> Result<(Mat, Mat)> {
    let (b, n) = square(ops, a, what)?;
    let s = checked_norms(ops, a, what, "is zero (not positive definite)")?;
    let ahat = ops.alloc(b, n, n)?;
    ops.affine(ahat, Some(a), 1.0, Scale::Pow(s, -1.0), 0.0, 0.0)?;
    Ok((s, ahat))
}

/// A^{1/2} of each SPD matrix of the batch `a` ([b, n, n]).
pub fn sqrt(ops: &mut impl MatOps, a: Mat, method: SqrtMethod) -> Result<Mat> {
    root(ops, a, method, false)
}

/// A^{−1/2} of each SPD matrix of the batch `a` ([b, n, n]).
pub fn inv_sqrt(ops: &mut impl MatOps, a: Mat, method: SqrtMethod) -> Result<Mat> {
    root(ops, a, method, true)
}

fn root(ops: &mut impl MatOps, a: Mat, method: SqrtMethod, inverse: bool) -> Result<Mat> {
    let what = if inverse { "inv_sqrt" } else { "sqrt" };
    let shape = square(ops, a, what)?;
    into_new(ops, shape, |ops, out| root_into(ops, a, method, inverse, out))
}

/// A new [b, n, n] result that `fill` writes; every matrix `fill` allocates is released afterwards,
/// on error too.
fn into_new<O: MatOps>(
    ops: &mut O,
    (b, n): (usize, usize),
    fill: impl FnOnce(&mut O, Mat) -> Result<()>,
) -> Result<Mat> {
    let out = ops.alloc(b, n, n)?;
    let mark = ops.mark();
    let r = fill(ops, out);
    ops.release(mark);
    r.map(|_| out)
}

fn root_into(ops: &mut impl MatOps, a: Mat, method: SqrtMethod, inverse: bool, out: Mat) -> Result<()> {
    let what = if inverse { "inv_sqrt" } else { "sqrt" };
    let (s, ahat) = normalise(ops, a, what)?;
    let y = match method {
        SqrtMethod::NewtonSchulz { iters, tol } => coupled_newton_schulz(ops, ahat, iters, tol, inverse)?.0,
        SqrtMethod::Mtp { degree } => taylor(ops, ahat, degree, inverse)?,
        SqrtMethod::Mpa { degree } => pade(ops, ahat, degree, inverse)?,
    };
    // (7.1.3): sqrt(A) = sqrt(s)·sqrt(Â); A^{−1/2} = Â^{−1/2}/sqrt(s).
    ops.affine(out, Some(y), 1.0, Scale::Pow(s, if inverse { -0.5 } else { 0.5 }), 0.0, 0.0)
}

/// (7.5.1)–(7.5.3) on a normalised batch: Y → Â^{1/2}, Z → Â^{−1/2}; returns the one asked for and the
/// iterations run. The last iteration computes only that one (as iSQRT-COV does).
pub fn coupled_newton_schulz(
    ops: &mut impl MatOps,
    ahat: Mat,
    iters: usize,
    tol: Option<f32>,
    inverse: bool,
) -> Result<(Mat, usize)> {
    let (b, n) = square(ops, ahat, "coupled Newton-Schulz")?;
    let ident = identity(ops, 1, n)?;
    // Y_0 is a copy: the ping-pong would otherwise write into the caller's Â.
    let mut y = [ops.alloc(b, n, n)?, ops.alloc(b, n, n)?];
    ops.affine(y[0], Some(ahat), 1.0, Scale::One, 0.0, 0.0)?;
    let mut z = [identity(ops, b, n)?, ops.alloc(b, n, n)?];
    let t = ops.alloc(b, n, n)?;
    let (residual, norms) = (ops.alloc(b, n, n)?, ops.alloc(b, 1, 1)?);
    let mut done = 0;
    for k in 0..iters {
        // T = ½(3I − Z·Y), one GEMM with the identity as addend.
        mm_sym(ops, t, z[0], y[0], -0.5, Some((ident, 1.5)))?;
        if let Some(tol) = tol {
            // I − Z·Y = 2(T − I).
            ops.affine(residual, Some(t), 2.0, Scale::One, 0.0, -2.0)?;
            ops.frobenius(residual, norms)?;
            if ops.read(norms)?.iter().all(|&r| r <= tol) {
                break;
            }
        }
        let last = k + 1 == iters;
        // Y·T and T·Z as full products: mirrored from half-products (symmetric in exact arithmetic),
        // they broke the coupling's self-correction and the iterates drifted away once converged
        // (tests/roots.rs, clustered spectra). T itself stays a half-product, and so does the last
        // update, which nothing feeds back on: the root comes out exactly symmetric.
        if !last || !inverse {
            product(ops, y[1], y[0], t, 1.0, None, last)?;
            y.swap(0, 1);
        }
        if !last || inverse {
            product(ops, z[1], t, z[0], 1.0, None, last)?;
            z.swap(0, 1);
        }
        done = k + 1;
    }
    let root = if inverse { z[0] } else { y[0] };
    if done == 0 || done == iters {
        return Ok((root, done));
    }
    // Stopped at the tolerance: the iterate came from a full product; return its symmetric part.
    let sym = ops.alloc(b, n, n)?;
    symmetric_part(ops, root, sym)?;
    Ok((sym, done))
}

/// out ← ½(x + xᵀ) per matrix: xᵀ·I (exact: one non-zero product per element) with x as the
/// addend, one rounding of a commutative sum, so (i, j) and (j, i) agree bit for bit. A full
/// product: the half-product would need a symmetric addend.
fn symmetric_part(ops: &mut impl MatOps, x: Mat, out: Mat) -> Result<()> {
    let (batch, n, _) = ops.shape(x);
    let ident = identity(ops, 1, n)?;
    let desc = GemmDesc { batch, alpha: 0.5, beta: 0.5, trans_a: true, ..GemmDesc::new(n, n, n) };
    ops.gemm(desc, x, ident, out, Some(x))
}

/// The Polar Express coefficients (a, b, c) of ASGO's inverse square root, as ALGORITHMS.md §5.7
/// lists them (infinity-stars/ASGO, `optimizers/utils/matrix_decom.py`), before the safety factor.
/// The last triple, (15/8, −5/4, 3/8), is the Taylor polynomial of x^{−1/2} about 1 to second order;
/// it repeats for every later iteration.
pub const POLAR_EXPRESS: [(f64, f64, f64); 8] = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
];

/// The (a, b, c) of Polar Express iteration `k` (from 0), in f32: every triple but the last divided
/// by (1.01, 1.01³, 1.01⁵) in f64 (the reference's safety factor), the last repeated.
pub fn polar_express_coefficients(k: usize) -> (f32, f32, f32) {
    let last = POLAR_EXPRESS.len() - 1;
    let (a, b, c) = POLAR_EXPRESS[k.min(last)];
    let f = if k < last { 1.01f64 } else { 1.0 };
    ((a / f) as f32, (b / f.powi(3)) as f32, (c / f.powi(5)) as f32)
}

/// V^{−1/2} of each symmetric positive semi-definite matrix of the batch `v` ([b, r, r]) by ASGO's
/// coupled Polar Express iteration (ALGORITHMS.md §5.7.3), `steps` iterations:
///
/// ```text
/// s ← 1.01·‖V + eps·I‖_F;  Y ← V/s;  Z ← I               (eps enters only through s)
/// per iteration (a, b, c):  T ← Z·Y;  B ← b·T + c·T²;  Y ← a·Y + Y·B;  Z ← a·Z + B·Z
/// result Z/√s
/// ```
///
/// T and T² run as half-products (symmetric, so B is exactly symmetric); the updates of Y and Z run
/// as full products except the last (so P is exactly symmetric): mirrored as well, they made the
/// iteration diverge on nearly singular V (a
/// 40×40 Gram matrix of rank 3 plus a ridge 1e-5 of its top eigenvalue went to NaN), while this mix
/// lands closer to the f64 iteration than four plain f32 products (2.6e-4 against 1.0e-3 relative
/// there; examples in tests/asgo.rs). The first iteration skips Z·Y (Z = I) and the last skips Y:
/// 4·steps − 3 products. Nothing is read back and nothing is checked: eigenvalues far below s/100
/// are not converged after 10 iterations (Z grows by the product of the a's there), and V = 0 with
/// eps = 0 gives NaN — the caller decides (ASGO falls back to I, with [`Scale::Finite`]).
///
/// ```
/// use gpuopt::reference::roots::CpuMats;
/// use gpuopt::roots::{inv_sqrt_polar_express, MatOps};
/// let mut ops = CpuMats::default();
/// let v = ops.upload(&[4.0, 0.0, 0.0, 1.0], 1, 2, 2)?;
/// let root = inv_sqrt_polar_express(&mut ops, v, 0.0, 10)?;
/// let p = ops.read(root)?; // ≈ diag(1/2, 1)
/// assert!((p[0] - 0.5).abs() < 1e-4 && (p[3] - 1.0).abs() < 1e-4 && p[1] == 0.0);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn inv_sqrt_polar_express(ops: &mut impl MatOps, v: Mat, eps: f32, steps: usize) -> Result<Mat> {
    let (b, n) = square(ops, v, "polar express inverse square root")?;
    finite_nonneg("eps", eps)?;
    into_new(ops, (b, n), |ops, out| polar_express_into(ops, v, eps, steps, out))
}

fn polar_express_into(ops: &mut impl MatOps, v: Mat, eps: f32, steps: usize, out: Mat) -> Result<()> {
    let (b, n, _) = ops.shape(v);
    let shifted = ops.alloc(b, n, n)?;
    ops.affine(shifted, Some(v), 1.0, Scale::One, 0.0, eps)?;
    let (norm, s) = (ops.alloc(b, 1, 1)?, ops.alloc(b, 1, 1)?);
    ops.frobenius(shifted, norm)?;
    ops.affine(s, Some(norm), 1.01, Scale::One, 0.0, 0.0)?;
    // `shifted` is free again: the second buffer of Y's ping-pong.
    let mut y = [ops.alloc(b, n, n)?, shifted];
    ops.affine(y[0], Some(v), 1.0, Scale::Pow(s, -1.0), 0.0, 0.0)?;
    let mut z = [identity(ops, b, n)?, ops.alloc(b, n, n)?];
    let (t, bm) = (ops.alloc(b, n, n)?, ops.alloc(b, n, n)?);
    for k in 0..steps {
        let (ca, cb, cc) = polar_express_coefficients(k);
        let first = k == 0;
        // T = Z·Y and B = b·T + c·T² (half-products); Y ← a·Y + Y·B, Z ← a·Z + B·Z (full).
        let tk = if first {
            y[0]
        } else {
            mm_sym(ops, t, z[0], y[0], 1.0, None)?;
            t
        };
        mm_sym(ops, bm, tk, tk, cc, Some((tk, cb)))?;
        if k + 1 < steps {
            mm(ops, y[1], y[0], bm, 1.0, Some((y[0], ca)))?;
            y.swap(0, 1);
        }
        if first {
            ops.affine(z[1], Some(bm), 1.0, Scale::One, 0.0, ca)?;
        } else if k + 1 == steps {
            // The last update feeds nothing back: mirrored, P comes out exactly symmetric. As
            // (B + a·I)·Z, since the half-product needs a symmetric addend and Z is not exactly one.
            ops.affine(bm, None, 0.0, Scale::One, 1.0, ca)?;
            mm_sym(ops, z[1], bm, z[0], 1.0, None)?;
        } else {
            mm(ops, z[1], bm, z[0], 1.0, Some((z[0], ca)))?;
        }
        z.swap(0, 1);
    }
    ops.affine(out, Some(z[0]), 1.0, Scale::Pow(s, -0.5), 0.0, 0.0)
}

/// (7.2.1) on a normalised batch by Horner's rule: K − 1 products for degree K.
fn taylor(ops: &mut impl MatOps, ahat: Mat, degree: usize, inverse: bool) -> Result<Mat> {
    let (b, n) = square(ops, ahat, "mtp")?;
    let c = taylor_coefficients(if inverse { -0.5 } else { 0.5 }, degree);
    let x = ops.alloc(b, n, n)?;
    ops.affine(x, Some(ahat), -1.0, Scale::One, 0.0, 1.0)?;
    let mut p = [ops.alloc(b, n, n)?, ops.alloc(b, n, n)?];
    if degree == 0 {
        ops.affine(p[0], None, 0.0, Scale::One, 0.0, c[0] as f32)?;
        return Ok(p[0]);
    }
    let ident = identity(ops, 1, n)?;
    ops.affine(p[0], Some(x), c[degree] as f32, Scale::One, 0.0, c[degree - 1] as f32)?;
    for k in (0..degree - 1).rev() {
        mm_sym(ops, p[1], x, p[0], 1.0, Some((ident, c[k] as f32)))?;
        p.swap(0, 1);
    }
    Ok(p[0])
}

/// (7.3.1)–(7.3.3) on a normalised batch: powers of X = I − Â, P and Q by accumulation, one solve.
fn pade(ops: &mut impl MatOps, ahat: Mat, degree: usize, inverse: bool) -> Result<Mat> {
    let (b, n) = square(ops, ahat, "mpa")?;
    if degree == 0 {
        return Err(Error::Invalid("mpa degree must be at least 1".into()));
    }
    let (pc, qc) = pade_coefficients(&taylor_coefficients(0.5, 2 * degree), degree, degree)?;
    let mut powers = vec![ops.alloc(b, n, n)?];
    ops.affine(powers[0], Some(ahat), -1.0, Scale::One, 0.0, 1.0)?;
    for _ in 1..degree {
        let next = ops.alloc(b, n, n)?;
        let last = *powers.last().unwrap();
        mm_sym(ops, next, powers[0], last, 1.0, None)?;
        powers.push(next);
    }
    let combine = |ops: &mut _, coef: &[f64]| -> Result<Mat> {
        let out = MatOps::alloc(ops, b, n, n)?;
        MatOps::affine(ops, out, Some(powers[0]), coef[1] as f32, Scale::One, 0.0, coef[0] as f32)?;
        for (k, &xk) in powers.iter().enumerate().skip(1) {
            MatOps::affine(ops, out, Some(xk), coef[k + 1] as f32, Scale::One, 1.0, 0.0)?;
        }
        Ok(out)
    };
    let p = combine(ops, &pc)?;
    let q = combine(ops, &qc)?;
    // sqrt: Q·Y = P; inverse: P·Y = Q. Both P(x), Q(x) > 0 on [0, 1], so neither is singular in exact
    // arithmetic; a flagged pivot means the f32 polynomial lost that to rounding (high degrees, where
    // the monomial terms cancel) or the input was not SPD (callers that checked it know which).
    let (m, rhs) = if inverse { (p, q) } else { (q, p) };
    solve_spd(ops, m, rhs).map_err(|e| {
        let what = if inverse { "numerator P" } else { "denominator Q" };
        let e = match e {
            Error::Invalid(s) => s,
            other => other.to_string(),
        };
        Error::Invalid(format!(
            "mpa [{degree}/{degree}]: the Padé {what} is not positive definite in f32 ({e}); a lower degree, or a non-SPD input"
        ))
    })?;
    Ok(rhs)
}

/// Panel width of [`solve_spd`] (the largest block `invert_spd_blocks` takes).
pub const SPD_PANEL: usize = 32;

/// rhs ← m⁻¹·rhs for a batch of symmetric positive definite m ([b, n, n]; rhs [b, n, k]) by blocked
/// Gauss–Jordan elimination without pivoting on [m | rhs], in panels of 32 columns: invert the panel's
/// diagonal block (one workgroup per matrix), scale the panel's block row by it (a small GEMM), and
/// eliminate the panel's columns from every row with one rank-32 GEMM update. About 2n²(n + k) FLOPs,
/// nearly all in GEMMs, and six dispatches per panel, instead of n column steps of memory-bound
/// passes ([`MatOps::solve`], which pivots and suits general matrices). Pivoting is not needed: the
/// diagonal blocks of an SPD matrix's Schur complements are SPD. A block whose pivots are not
/// positive is an error.
///
/// ```
/// use gpuopt::reference::roots::CpuMats;
/// use gpuopt::roots::{solve_spd, MatOps};
/// let mut ops = CpuMats::default();
/// let m = ops.upload(&[4.0, 1.0, 1.0, 3.0], 1, 2, 2)?;
/// let rhs = ops.upload(&[1.0, 2.0], 1, 2, 1)?;
/// solve_spd(&mut ops, m, rhs)?;
/// let x = ops.read(rhs)?; // [1/11, 7/11]
/// assert!((x[0] - 1.0 / 11.0).abs() < 1e-6 && (x[1] - 7.0 / 11.0).abs() < 1e-6);
/// let indefinite = ops.upload(&[1.0, 2.0, 2.0, 1.0], 1, 2, 2)?;
/// assert!(solve_spd(&mut ops, indefinite, rhs).is_err());
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn solve_spd(ops: &mut impl MatOps, m: Mat, rhs: Mat) -> Result<()> {
    let (b, n) = square(ops, m, "solve_spd")?;
    let (rb, rn, k) = ops.shape(rhs);
    if rb != b || rn != n {
        return Err(Error::Shape { what: "solve_spd rhs".into(), expected: vec![b, n, k], got: vec![rb, rn, k] });
    }
    let mark = ops.mark();
    let r = solve_spd_scratch(ops, m, rhs, (b, n, k));
    ops.release(mark);
    r
}

fn solve_spd_scratch(ops: &mut impl MatOps, m: Mat, rhs: Mat, (b, n, k): (usize, usize, usize)) -> Result<()> {
    let w = n + k;
    let aug = ops.alloc(b, n, w)?;
    ops.copy_region(aug, (0, 0), m, (0, 0), n, n)?;
    ops.copy_region(aug, (0, n), rhs, (0, 0), n, k)?;
    let (status, bad) = (ops.alloc(b, 1, 1)?, ops.alloc(b, 1, 1)?);
    // Work buffers per panel height (every panel is 32 high but the last).
    let mut work: Vec<(usize, [Mat; 5])> = Vec::new();
    for r0 in (0..n).step_by(SPD_PANEL) {
        let h = SPD_PANEL.min(n - r0);
        let [d, dinv, row, scaled, col] = match work.iter().find(|(wh, _)| *wh == h) {
            Some((_, bufs)) => *bufs,
            None => {
                let bufs = [
                    ops.alloc(b, h, h)?,
                    ops.alloc(b, h, h)?,
                    ops.alloc(b, h, w)?,
                    ops.alloc(b, h, w)?,
                    ops.alloc(b, n, h)?,
                ];
                work.push((h, bufs));
                bufs
            }
        };
        ops.copy_region(d, (0, 0), aug, (r0, r0), h, h)?;
        ops.invert_spd_blocks(d, dinv, status)?;
        ops.copy_region(row, (0, 0), aug, (r0, 0), h, w)?;
        ops.gemm(GemmDesc { batch: b, ..GemmDesc::new(h, w, h) }, dinv, row, scaled, None)?;
        ops.copy_region(col, (0, 0), aug, (0, r0), n, h)?;
        // aug ← aug − col·scaled zeroes the panel's columns outside its rows, and turns its own rows
        // into row − D·D⁻¹·row = 0, which the scaled rows then replace.
        ops.gemm(GemmDesc { batch: b, alpha: -1.0, beta: 1.0, ..GemmDesc::new(n, w, h) }, col, scaled, aug, Some(aug))?;
        ops.copy_region(aug, (r0, 0), scaled, (0, 0), h, w)?;
        // Count the panels with a bad pivot (read once at the end).
        ops.affine(bad, Some(status), 1.0, Scale::One, 1.0, 0.0)?;
    }
    // Check before writing the result, so a refused system leaves rhs as it was.
    if let Some(z) = ops.read(bad)?.iter().position(|&s| s != 0.0) {
        return Err(Error::Invalid(format!(
            "solve_spd: matrix {z} is not positive definite (a pivot was not positive)"
        )));
    }
    ops.copy_region(rhs, (0, 0), aug, (0, n), n, k)
}

/// λ_max of each matrix by power iteration from ALGORITHMS.md §11.4's deterministic start: at most 100
/// iterations, stopping when every Rayleigh quotient changes by less than 1e-6.
pub fn power_iteration(ops: &mut impl MatOps, g: Mat) -> Result<Vec<f32>> {
    let (b, n) = square(ops, g, "power iteration")?;
    let start = ops.alloc(1, n, 1)?;
    ops.fill_uniform(start, 1729)?;
    // v0 = 2u − 1 (the affine map's identity term only reaches (0, 0) of an n×1 matrix, so the −1
    // comes from a second pass over a vector of −1).
    let v0 = ops.upload(&vec![-1.0; n], 1, n, 1)?;
    ops.affine(v0, Some(start), 2.0, Scale::One, 1.0, 0.0)?;
    let (v, w, norms, lambda) = (ops.alloc(b, n, 1)?, ops.alloc(b, n, 1)?, ops.alloc(b, 1, 1)?, ops.alloc(b, 1, 1)?);
    let gv = |desc_b| GemmDesc { batch: desc_b, ..GemmDesc::new(n, 1, n) };
    // v = G·v0 / ‖G·v0‖ (v0 broadcast), then v ← G·v / ‖G·v‖ with λ = vᵀ·G·v.
    ops.gemm(gv(b), g, v0, w, None)?;
    let mut previous: Option<Vec<f32>> = None;
    for _ in 0..100 {
        ops.frobenius(w, norms)?;
        ops.affine(v, Some(w), 1.0, Scale::Pow(norms, -1.0), 0.0, 0.0)?;
        ops.gemm(gv(b), g, v, w, None)?;
        ops.gemm(GemmDesc { batch: b, trans_a: true, ..GemmDesc::new(1, 1, n) }, v, w, lambda, None)?;
        let now = ops.read(lambda)?;
        if now.iter().any(|l| !l.is_finite()) {
            return Err(Error::Invalid("power iteration: the matrix holds NaN or Inf".into()));
        }
        if let Some(p) = &previous {
            if p.iter().zip(&now).all(|(a, b)| (a - b).abs() < 1e-6) {
                return Ok(now);
            }
        }
        previous = Some(now);
    }
    Ok(previous.unwrap_or_default())
}

/// (A + ridge·I)^{−1/p} of each matrix of the batch by the coupled Newton iteration (§7.6) with the
/// 1.2 error-growth guard; p is an integer from 1 to 32 (T^p by repeated squaring, multiplying the
/// squares of p's set bits: a power of two is squarings alone, as ComputePower). Returns
/// the accepted iterates and their errors; an error when any matrix ends with max|M − I| above
/// [`INV_ROOT_FAILURE`] or not finite (never a silent NaN).
///
/// ```
/// use gpuopt::reference::roots::CpuMats;
/// use gpuopt::roots::{inv_root, InvRootOptions, MatOps};
/// let mut ops = CpuMats::default();
/// let a = ops.upload(&[16.0, 0.0, 0.0, 81.0], 1, 2, 2)?;
/// let r = inv_root(&mut ops, a, 4, InvRootOptions { eps: 0.0, ..Default::default() })?;
/// let x = ops.read(r.x)?; // A^(-1/4) = diag(1/2, 1/3)
/// assert!((x[0] - 0.5).abs() < 1e-5 && (x[3] - 1.0 / 3.0).abs() < 1e-5 && r.err[0] <= 1e-5);
/// // Two iterations are not enough: an error, not a half-converged matrix.
/// assert!(inv_root(&mut ops, a, 4, InvRootOptions { eps: 0.0, max_iters: 2, ..Default::default() }).is_err());
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn inv_root(ops: &mut impl MatOps, a: Mat, p: u32, opts: InvRootOptions) -> Result<InvRoot> {
    let r = inv_root_unchecked(ops, a, p, opts)?;
    if let Some(z) = r.err.iter().position(|e| e.is_nan() || *e > INV_ROOT_FAILURE) {
        return Err(Error::Invalid(format!(
            "inv_root did not converge for matrix {z}: max|M - I| = {:e} after {} iterations (needs <= {INV_ROOT_FAILURE}); \
             a larger eps may help",
            r.err[z], r.iters[z]
        )));
    }
    Ok(r)
}

/// [`inv_root`] without the final failure check (Shampoo keeps its old root on failure instead).
pub fn inv_root_unchecked(ops: &mut impl MatOps, a: Mat, p: u32, opts: InvRootOptions) -> Result<InvRoot> {
    let (b, n) = square(ops, a, "inv_root")?;
    if !(1..=32).contains(&p) {
        return Err(Error::Hyperparameter { name: "p".into(), value: p as f64, reason: "must be from 1 to 32".into() });
    }
    finite_nonneg("eps", opts.eps)?;
    finite_nonneg("tol", opts.tol)?;
    // The result first; every scratch matrix after the mark is released on the way out.
    let best = ops.alloc(b, n, n)?;
    let mark = ops.mark();
    let r = inv_root_into(ops, a, p, opts, best);
    ops.release(mark);
    let (err, iters) = r?;
    Ok(InvRoot { x: best, err, iters })
}

fn inv_root_into(
    ops: &mut impl MatOps,
    a: Mat,
    p: u32,
    opts: InvRootOptions,
    best: Mat,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let (b, n, _) = ops.shape(a);
    let pf = p as f32;
    let ident_b = identity(ops, b, n)?;
    // G = A + ridge·I.
    let g = ops.alloc(b, n, n)?;
    ops.affine(g, Some(a), 1.0, Scale::One, 0.0, 0.0)?;
    if opts.eps_relative {
        // A zero matrix has λ_max = 0 and so a zero relative ridge (and the power iteration would
        // divide 0 by 0): said here, in those terms.
        let zero = "is zero, and so is its relative ridge eps·λ_max (give an absolute eps)";
        checked_norms(ops, a, "inv_root", zero)?;
        let lmax = power_iteration(ops, a)?;
        let ridges: Vec<f32> = lmax.iter().map(|l| opts.eps * l.max(0.0)).collect();
        let ridge = ops.upload(&ridges, b, 1, 1)?;
        ops.affine(g, Some(ident_b), 1.0, Scale::Pow(ridge, 1.0), 1.0, 0.0)?;
    } else {
        ops.affine(g, None, 0.0, Scale::One, 1.0, opts.eps)?;
    }
    let norms = checked_norms(ops, g, "inv_root", "plus the ridge is zero (give eps > 0)")?;
    if n == 1 {
        // A scalar: (a + ridge)^{−1/p} directly (the reference's identity is a quirk, §11.4).
        let gv = ops.read(g)?;
        if let Some(z) = gv.iter().position(|&v| v.is_nan() || v <= 0.0) {
            return Err(Error::Invalid(format!("inv_root: the 1x1 matrix {z} plus the ridge is not positive")));
        }
        let xs: Vec<f32> = gv.iter().map(|&v| (v as f64).powf(-1.0 / p as f64) as f32).collect();
        let x = ops.upload(&xs, b, 1, 1)?;
        ops.affine(best, Some(x), 1.0, Scale::One, 0.0, 0.0)?;
        return Ok((vec![0.0; b], vec![0; b]));
    }
    // z = (1 + p)/(2‖G‖_F);  X_0 = z^{1/p}·I;  M_0 = z·G.
    let half = (1.0 + pf) / 2.0;
    let mut x = [ops.alloc(b, n, n)?, ops.alloc(b, n, n)?];
    let mut m = [ops.alloc(b, n, n)?, ops.alloc(b, n, n)?];
    ops.affine(x[0], Some(ident_b), half.powf(1.0 / pf), Scale::Pow(norms, -1.0 / pf), 0.0, 0.0)?;
    ops.affine(m[0], Some(g), half, Scale::Pow(norms, -1.0), 0.0, 0.0)?;
    ops.affine(best, Some(x[0]), 1.0, Scale::One, 0.0, 0.0)?;
    let errs = ops.alloc(b, 1, 1)?;
    ops.max_dev(m[0], errs)?;
    let mut err = ops.read(errs)?;
    let mut iters = vec![0usize; b];
    let mut active: Vec<bool> = err.iter().map(|&e| e > opts.tol).collect();
    let t = ops.alloc(b, n, n)?;
    // T^(2^i) for i = 1 ..= log2(p), and two buffers for the products of the set bits' squares.
    let top = 31 - p.leading_zeros();
    let squares: Vec<Mat> = (0..top).map(|_| ops.alloc(b, n, n)).collect::<Result<_>>()?;
    let products: Vec<Mat> =
        (0..(p.count_ones() > 1) as usize * 2).map(|_| ops.alloc(b, n, n)).collect::<Result<_>>()?;
    let mask = ops.alloc(b, 1, 1)?;
    for _ in 0..opts.max_iters {
        if !active.iter().any(|&a| a) {
            break;
        }
        // T = (1 + 1/p)·I − M/p;  X' = X·T;  M' = T^p·M.
        ops.affine(t, Some(m[0]), -1.0 / pf, Scale::One, 0.0, 1.0 + 1.0 / pf)?;
        mm_sym(ops, x[1], x[0], t, 1.0, None)?;
        // T^p: the powers of T commute, so every product is a symmetric half-product.
        let (mut tp, mut tpow, mut next) = (t, None, 0);
        for bit in 0..=top {
            if bit > 0 {
                let sq = squares[bit as usize - 1];
                mm_sym(ops, sq, tp, tp, 1.0, None)?;
                tp = sq;
            }
            if p >> bit & 1 == 1 {
                tpow = Some(match tpow {
                    None => tp,
                    Some(so_far) => {
                        let out = products[next];
                        next ^= 1;
                        mm_sym(ops, out, so_far, tp, 1.0, None)?;
                        out
                    }
                });
            }
        }
        let tpow = tpow.expect("p >= 1 has a set bit");
        mm_sym(ops, m[1], tpow, m[0], 1.0, None)?;
        ops.max_dev(m[1], errs)?;
        let now = ops.read(errs)?;
        let mut accept = vec![0.0f32; b];
        for z in 0..b {
            if !active[z] {
                continue;
            }
            if now[z].is_nan() || now[z] > 1.2 * err[z] {
                active[z] = false; // growing (or NaN): keep the previous X
                continue;
            }
            accept[z] = 1.0;
            err[z] = now[z];
            iters[z] += 1;
            if now[z] <= opts.tol {
                active[z] = false;
            }
        }
        let mask_data = ops.upload(&accept, b, 1, 1)?;
        ops.affine(mask, Some(mask_data), 1.0, Scale::One, 0.0, 0.0)?;
        ops.affine(best, Some(x[1]), 1.0, Scale::Mask(mask), 0.0, 0.0)?;
        x.swap(0, 1);
        m.swap(0, 1);
    }
    Ok((err, iters))
}

/// The Lyapunov solve of §7.4 by the matrix-sign iteration: given B (eigenvalues in (0, 1]) and C',
/// runs `iters` iterations and returns ½·C'_final, the X with B·X + X·B = C'.
fn lyapunov_sign(ops: &mut impl MatOps, b0: Mat, c0: Mat, iters: usize) -> Result<Mat> {
    let (batch, n) = square(ops, b0, "lyapunov")?;
    let mut bm = [b0, ops.alloc(batch, n, n)?];
    let mut cm = [c0, ops.alloc(batch, n, n)?];
    let (b2, e1, e2, w) =
        (ops.alloc(batch, n, n)?, ops.alloc(batch, n, n)?, ops.alloc(batch, n, n)?, ops.alloc(batch, n, n)?);
    for _ in 0..iters {
        // B2 = B·B;  C' ← ½(C'(3I − B2) − B2·C' + B·C'·B);  B ← ½·B·(3I − B2); six GEMMs with fused addends.
        mm_sym(ops, b2, bm[0], bm[0], 1.0, None)?;
        mm(ops, e1, cm[0], b2, -0.5, Some((cm[0], 1.5)))?;
        mm(ops, e2, b2, cm[0], -0.5, Some((e1, 1.0)))?;
        mm(ops, w, cm[0], bm[0], 1.0, None)?;
        mm(ops, cm[1], bm[0], w, 0.5, Some((e2, 1.0)))?;
        mm_sym(ops, bm[1], bm[0], b2, -0.5, Some((bm[0], 1.5)))?;
        bm.swap(0, 1);
        cm.swap(0, 1);
    }
    let out = ops.alloc(batch, n, n)?;
    ops.affine(out, Some(cm[0]), 0.5, Scale::One, 0.0, 0.0)?;
    Ok(out)
}

/// ∂L/∂A for Y = A^{1/2} (§7.4, `MPA_Lya`): solves Y·X + X·Y = ∂L/∂Y by `iters` sign iterations (the
/// reference uses 8) on B = Y/sqrt(s), C' = ∂L/∂Y / sqrt(s), s = ‖A‖_F.
///
/// ```
/// use gpuopt::reference::roots::CpuMats;
/// use gpuopt::roots::{sqrt, sqrt_backward, MatOps, SqrtMethod};
/// let mut ops = CpuMats::default();
/// // A = diag(4, 9): Y = diag(2, 3), and for C = I the solution of Y·X + X·Y = C is diag(1/4, 1/6).
/// let a = ops.upload(&[4.0, 0.0, 0.0, 9.0], 1, 2, 2)?;
/// let y = sqrt(&mut ops, a, SqrtMethod::NewtonSchulz { iters: 20, tol: None })?;
/// let c = ops.upload(&[1.0, 0.0, 0.0, 1.0], 1, 2, 2)?;
/// let dx = sqrt_backward(&mut ops, a, y, c, 15)?;
/// let x = ops.read(dx)?;
/// assert!((x[0] - 0.25).abs() < 1e-4 && (x[3] - 1.0 / 6.0).abs() < 1e-4);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn sqrt_backward(ops: &mut impl MatOps, a: Mat, y: Mat, grad: Mat, iters: usize) -> Result<Mat> {
    let (b, n) = square(ops, a, "sqrt backward")?;
    let s = ops.alloc(b, 1, 1)?;
    ops.frobenius(a, s)?;
    let (bm, cm) = (ops.alloc(b, n, n)?, ops.alloc(b, n, n)?);
    ops.affine(bm, Some(y), 1.0, Scale::Pow(s, -0.5), 0.0, 0.0)?;
    ops.affine(cm, Some(grad), 1.0, Scale::Pow(s, -0.5), 0.0, 0.0)?;
    lyapunov_sign(ops, bm, cm, iters)
}

/// ∂L/∂A for Y = A^{−1/2} (§7.4, `MPA_Lya_Inv`): C = −A⁻¹·G·A⁻¹ with A⁻¹ = Y², then the same sign
/// iteration on B = Y/‖Y‖_F, C' = C/‖Y‖_F.
pub fn inv_sqrt_backward(ops: &mut impl MatOps, y: Mat, grad: Mat, iters: usize) -> Result<Mat> {
    let (b, n) = square(ops, y, "inv_sqrt backward")?;
    let (y2, t1, c) = (ops.alloc(b, n, n)?, ops.alloc(b, n, n)?, ops.alloc(b, n, n)?);
    mm_sym(ops, y2, y, y, 1.0, None)?;
    mm(ops, t1, y2, grad, 1.0, None)?;
    mm(ops, c, t1, y2, -1.0, None)?;
    let s = ops.alloc(b, 1, 1)?;
    ops.frobenius(y, s)?;
    let (bm, cm) = (ops.alloc(b, n, n)?, ops.alloc(b, n, n)?);
    ops.affine(bm, Some(y), 1.0, Scale::Pow(s, -1.0), 0.0, 0.0)?;
    ops.affine(cm, Some(c), 1.0, Scale::Pow(s, -1.0), 0.0, 0.0)?;
    lyapunov_sign(ops, bm, cm, iters)
}
