//! Muon's quintic Newton–Schulz (NS5, ALGORITHMS.md §5.1) and the cubic polar iteration (§5.4) on the
//! GPU: Frobenius norms and the normalising (transposing) copy from `shaders/newton_schulz.wgsl`, every
//! product a GEMM with a fused epilogue from `shaders/gemm.wgsl`. CPU twin:
//! `reference::newton_schulz`.
//!
//! NS5 per step, with X r×c (the wide orientation), batched over b matrices:
//! 1. A ← X·Xᵀ                       one GEMM (op B = T)
//! 2. B ← c·A·A + b·A                one GEMM, addend A
//! 3. X ← B·X + a·X                  one GEMM, addend X (ping-pong buffers)

use super::gemm::{GemmDesc, GemmPlan};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use bytemuck::{Pod, Zeroable};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// Per-matrix partial sums of squares.
pub const FROB_PARTIAL: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "frob_partial", bindings: &[(0, U), (1, R), (2, R), (3, W)] };
/// Per-matrix norms from the partials.
pub const FROB_FINAL: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "frob_final", bindings: &[(0, U), (3, W), (4, W)] };
/// out = x / (norm + eps) or x, transposed or not.
pub const SCALE_COPY: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "scale_copy", bindings: &[(0, U), (1, R), (5, R), (6, W)] };
/// AuON's Σ cosh(γ·v/(‖v‖ + eps))² partial sums (finished by [`FROB_FINAL`]).
pub const COSH_PARTIAL: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "cosh_partial", bindings: &[(0, U), (1, R), (3, W), (5, R)] };
/// [`FROB_PARTIAL`] over vec4s (matrices of a multiple of 4 elements).
pub const FROB_PARTIAL4: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "frob_partial4", bindings: &[(0, U), (7, R), (8, R), (3, W)] };
/// [`COSH_PARTIAL`] over vec4s (matrices of a multiple of 4 elements).
pub const COSH_PARTIAL4: KernelSpec =
    KernelSpec { module: "newton_schulz", entry: "cosh_partial4", bindings: &[(0, U), (7, R), (3, W), (5, R)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[FROB_PARTIAL, FROB_FINAL, SCALE_COPY, COSH_PARTIAL, FROB_PARTIAL4, COSH_PARTIAL4];

/// Muon's quintic coefficients (a, b, c) (KellerJordan/Muon, ALGORITHMS.md §5.1).
pub const NS5_COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
/// [`NS5_COEFFICIENTS`] as configurations hold them (`ns_coefficients`, ALGORITHMS.md §11.1).
pub const NS5_COEFFICIENTS_F64: [f64; 3] = [3.4445, -4.7750, 2.0315];

/// Checks an `ns_coefficients` setting (finite in f32) and returns it as the kernels take it.
pub fn ns_coefficients(c: [f64; 3]) -> Result<(f32, f32, f32)> {
    let f = c.map(|v| v as f32);
    match c.iter().zip(&f).position(|(v, x)| !v.is_finite() || !x.is_finite()) {
        Some(i) => Err(Error::Hyperparameter {
            name: "ns_coefficients".into(),
            value: c[i],
            reason: "must be three numbers finite in f32".into(),
        }),
        None => Ok((f[0], f[1], f[2])),
    }
}
/// The epsilon added to the Frobenius norm before dividing.
pub const NS_EPS: f32 = 1e-7;
const CHUNK: usize = 4096;

/// Uniform of `shaders/newton_schulz.wgsl`. Keep in sync with `struct NsParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct NsParams {
    len: u32,
    batch: u32,
    chunks: u32,
    use_y: u32,
    rows: u32,
    cols: u32,
    transpose: u32,
    use_norm: u32,
    eps: f32,
    gamma: f32,
    _p: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<NsParams>() == 48);

fn uniform(ctx: &Context, p: NsParams) -> wgpu::Buffer {
    let u = ctx.uniform_buffer("newton-schulz params", 48);
    ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&p));
    u
}

/// Frobenius norms of the `batch` matrices of `len` elements in `x` (or of `x − y`) into `norms`.
pub struct FrobeniusPlan {
    partial: BoundKernel,
    finish: BoundKernel,
    /// The partial pass's grid: (x, batch, w) with chunk = x + w·(grid x).
    grid: (u32, u32, u32),
    batch: u32,
    _buffers: Vec<wgpu::Buffer>,
}

impl FrobeniusPlan {
    /// Binds the two passes (the partial sums over vec4s where a matrix has a multiple of 4
    /// elements).
    pub fn new(ctx: &Context, x: &Tensor, y: Option<&Tensor>, batch: usize, norms: &Tensor) -> Result<Self> {
        let extra = NsParams { use_y: y.is_some() as u32, ..Default::default() };
        let spec = if by_vec4(x, batch) { &FROB_PARTIAL4 } else { &FROB_PARTIAL };
        Self::build(ctx, x, batch, extra, norms, |u, partials| {
            ctx.bind(spec, &[u, x.buffer(), y.unwrap_or(x).buffer(), partials])
        })
    }

    /// sqrt(Σ cosh(s·x)²) of each matrix into `out` (AuON's (5.5.8) before the division by sqrt(N)),
    /// with s = γ/(norms\[z\] + 1e-7) where `norms` (‖x‖_F per matrix) is given, else s = γ.
    pub fn cosh(
        ctx: &Context,
        x: &Tensor,
        norms: Option<&Tensor>,
        gamma: f32,
        batch: usize,
        out: &Tensor,
    ) -> Result<Self> {
        let extra = NsParams { eps: NS_EPS, gamma, use_norm: norms.is_some() as u32, ..Default::default() };
        let spec = if by_vec4(x, batch) { &COSH_PARTIAL4 } else { &COSH_PARTIAL };
        // Without norms the binding is never read; x (read-only too) fills it.
        let norms = norms.unwrap_or(x);
        Self::build(ctx, x, batch, extra, out, |u, partials| ctx.bind(spec, &[u, x.buffer(), partials, norms.buffer()]))
    }

    /// The shared part: the uniform (len, batch, chunks over `extra`), the partials buffer, the
    /// first pass bound by `partial`, and `frob_final` into `out`.
    fn build(
        ctx: &Context,
        x: &Tensor,
        batch: usize,
        extra: NsParams,
        out: &Tensor,
        partial: impl FnOnce(&wgpu::Buffer, &wgpu::Buffer) -> Result<BoundKernel>,
    ) -> Result<Self> {
        let len = x.len() / batch.max(1);
        let chunks = len.div_ceil(CHUNK).max(1);
        let u = uniform(ctx, NsParams { len: len as u32, batch: batch as u32, chunks: chunks as u32, ..extra });
        let partials = ctx.storage_buffer("norm partials", 16 * (chunks * batch) as u64)?;
        let partial = partial(&u, &partials)?;
        let finish = ctx.bind(&FROB_FINAL, &[&u, &partials, out.buffer()])?;
        let grid = chunk_grid(ctx, chunks, batch);
        Ok(FrobeniusPlan { partial, finish, grid, batch: batch as u32, _buffers: vec![u, partials] })
    }

    /// Records both passes; returns 2.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        self.partial.record_3d(pass, self.grid) + self.finish.record_3d(pass, (self.batch, 1, 1))
    }
}

/// Whether the partial passes over `batch` matrices held in `x` walk vec4s: each matrix a
/// multiple of 4 elements, so no vec4 straddles two.
fn by_vec4(x: &Tensor, batch: usize) -> bool {
    (x.len() / batch.max(1)).is_multiple_of(4)
}

/// The grid of a per-matrix partial-sum pass over `chunks` chunks of each of `batch` matrices:
/// (x, batch, w), chunk = x + w·(grid x), so one matrix may have more chunks than a grid dimension
/// holds workgroups (the shaders return early past the last).
pub(crate) fn chunk_grid(ctx: &Context, chunks: usize, batch: usize) -> (u32, u32, u32) {
    let x = (chunks as u32).min(ctx.max_workgroups_per_dim()).max(1);
    (x, batch as u32, (chunks as u32).div_ceil(x))
}

/// `out[z] = x[z]·s` with s = 1/(norms\[z\] + eps) (`norms` given with its eps) or 1, transposing
/// rows×cols matrices if asked.
pub struct ScaleCopyPlan {
    bound: BoundKernel,
    grid: (u32, u32, u32),
    _uniform: wgpu::Buffer,
}

impl ScaleCopyPlan {
    /// Binds the copy of `batch` rows×cols matrices.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &Context,
        x: &Tensor,
        norms: Option<(&Tensor, f32)>,
        out: &Tensor,
        batch: usize,
        rows: usize,
        cols: usize,
        transpose: bool,
    ) -> Result<Self> {
        let len = rows * cols;
        let u = uniform(
            ctx,
            NsParams {
                len: len as u32,
                batch: batch as u32,
                rows: rows as u32,
                cols: cols as u32,
                transpose: transpose as u32,
                use_norm: norms.is_some() as u32,
                eps: norms.map_or(0.0, |n| n.1),
                ..Default::default()
            },
        );
        let n = norms.map_or(ctx.unused_binding(), |(n, _)| n.buffer());
        let bound = ctx.bind(&SCALE_COPY, &[&u, x.buffer(), n, out.buffer()])?;
        let (gx, gy) = ctx.grid((len as u32).div_ceil(WORKGROUP_SIZE));
        Ok(ScaleCopyPlan { bound, grid: (gx, gy, batch as u32), _uniform: u })
    }

    /// Records the copy; returns 1.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        self.bound.record_3d(pass, self.grid)
    }
}

/// Shape of a batch of matrices: [m, n] or [b, m, n].
pub fn batch_shape(shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [m, n] => Ok((1, m, n)),
        [b, m, n] => Ok((b, m, n)),
        _ => Err(Error::Invalid(format!("a matrix input is [m, n] or [b, m, n], got shape {shape:?}"))),
    }
}

/// NS5 over a batch, planned once (buffers, bind groups), recordable many times.
///
/// One pass writes X₀ = G/(‖G‖_F + ε) per matrix (transposed into the wide orientation when G is
/// tall) before the first product. The normalisation used to be fused into the first step's two
/// products (A₀ = s²·G·Gᵀ with s = 1/(‖G‖ + ε) applied in the epilogue), but the epilogue scales
/// the accumulated product: G·Gᵀ overflowed f32 for entries past ~1.8e19 (a finite exploding
/// gradient made Muon's parameters NaN on the GPU while the CPU twin was fine), and underflowed
/// for tiny ones. Scaling inside every kernel's operand loads (tiles, split-K slices, packed
/// panels) would keep the fusion; the pass costs ~0.1% of NS5 on a GPU (one read and one write of
/// G against 15 products).
pub struct Ns5Plan {
    norm: FrobeniusPlan,
    normalize: ScaleCopyPlan,
    steps: usize,
    gram: [GemmPlan; 2],
    poly: GemmPlan,
    update: [GemmPlan; 2],
    finish: Option<ScaleCopyPlan>,
    out: usize,
    xs: [Tensor; 2],
    result: Option<Tensor>,
    _work: Vec<Tensor>,
}

impl Ns5Plan {
    /// Plans NS5 with `steps` steps and coefficients (a, b, c) for `g` of shape [m, n] or [b, m, n].
    pub fn new(ctx: &Context, g: &Tensor, steps: usize, (ca, cb, cc): (f32, f32, f32)) -> Result<Self> {
        let (b, m, n) = batch_shape(g.shape())?;
        if b == 0 || m == 0 || n == 0 {
            return Err(Error::Invalid(format!("newton_schulz5 needs a non-empty input, got shape {:?}", g.shape())));
        }
        let transpose = m > n;
        let (r, c) = if transpose { (n, m) } else { (m, n) };
        let norms = Tensor::zeros(ctx, &[b])?;
        let norm = FrobeniusPlan::new(ctx, g, None, b, &norms)?;
        let xs = [Tensor::zeros(ctx, &[b, r, c])?, Tensor::zeros(ctx, &[b, r, c])?];
        let a_mat = Tensor::zeros(ctx, &[b, r, r])?;
        let b_mat = Tensor::zeros(ctx, &[b, r, r])?;
        // X·Xᵀ and c·A·A + b·A are symmetric: half-products (upper tiles, mirrored).
        let gram_desc = GemmDesc { batch: b, ..GemmDesc::gram(r, c) };
        let up = GemmDesc { batch: b, alpha: 1.0, beta: ca, ..GemmDesc::new(r, c, r) };
        let normalize = ScaleCopyPlan::new(ctx, g, Some((&norms, NS_EPS)), &xs[0], b, m, n, transpose)?;
        let gram = [
            GemmPlan::new(ctx, gram_desc, &xs[0], &xs[0], &a_mat)?,
            GemmPlan::new(ctx, gram_desc, &xs[1], &xs[1], &a_mat)?,
        ];
        // A is symmetric bit for bit (the Gram product mirrors its upper triangle), so A·A = A·Aᵀ
        // exactly; read as A·A (both operands as stored), it is an NN product for every kernel.
        // (Unlike A·Aᵀ it is never split-K: only Gram products are, under GPUOPT_GEMM_SPLIT_K=auto.)
        let poly = GemmPlan::with_addend(
            ctx,
            GemmDesc { batch: b, alpha: cc, beta: cb, symmetric: true, ..GemmDesc::new(r, r, r) },
            &a_mat,
            &a_mat,
            &b_mat,
            &a_mat,
        )?;
        let update = [
            GemmPlan::with_addend(ctx, up, &b_mat, &xs[0], &xs[1], &xs[0])?,
            GemmPlan::with_addend(ctx, up, &b_mat, &xs[1], &xs[0], &xs[1])?,
        ];
        let out = steps % 2;
        let (finish, result) = if transpose {
            let y = Tensor::zeros(ctx, g.shape())?;
            (Some(ScaleCopyPlan::new(ctx, &xs[out], None, &y, b, r, c, true)?), Some(y))
        } else {
            (None, None)
        };
        Ok(Ns5Plan {
            norm,
            normalize,
            steps,
            gram,
            poly,
            update,
            finish,
            out,
            xs,
            result,
            _work: vec![norms, a_mat, b_mat],
        })
    }

    /// Records the whole chain; returns the number of dispatches.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let mut n = self.norm.record(pass) + self.normalize.record(pass);
        for s in 0..self.steps {
            let i = s % 2;
            n += self.gram[i].record(pass) + self.poly.record(pass) + self.update[i].record(pass);
        }
        if let Some(f) = &self.finish {
            n += f.record(pass);
        }
        n
    }

    /// The output tensor (the input's shape), valid after the recorded work ran.
    pub fn output(&self) -> &Tensor {
        self.result.as_ref().unwrap_or(&self.xs[self.out])
    }
}

/// Runs NS5 on `g` ([m, n] or [b, m, n]) and returns the result with `g`'s shape.
///
/// ```
/// # let ctx = gpuopt::Context::new()?;
/// // A diagonal input: NS5 maps each singular value into Muon's band around 1.
/// let g = gpuopt::Tensor::from_slice(&ctx, &[3.0, 0.0, 0.0, 0.5], &[2, 2])?;
/// let o = gpuopt::kernels::newton_schulz::newton_schulz5(&ctx, &g, 5)?;
/// assert!(o[0] > 0.6 && o[0] < 1.2 && o[3] > 0.6 && o[3] < 1.2 && o[1].abs() < 1e-6);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn newton_schulz5(ctx: &Context, g: &Tensor, steps: usize) -> Result<Vec<f32>> {
    newton_schulz5_with(ctx, g, steps, NS5_COEFFICIENTS)
}

/// [`newton_schulz5`] with the quintic's (a, b, c) given (`ns_coefficients`).
pub fn newton_schulz5_with(ctx: &Context, g: &Tensor, steps: usize, coefficients: (f32, f32, f32)) -> Result<Vec<f32>> {
    if steps >= 100 {
        return Err(Error::Invalid(format!("newton_schulz5 steps = {steps}: at most 99 (torch.optim.Muon's bound)")));
    }
    let plan = Ns5Plan::new(ctx, g, steps, coefficients)?;
    let mut enc = ctx.encoder("newton_schulz5");
    let mut pass = crate::gpu::compute_pass(&mut enc, "newton_schulz5");
    ctx.scoped("newton_schulz5", || plan.record(&mut pass))?;
    drop(pass);
    ctx.submit(enc);
    plan.output().to_vec(ctx)
}

/// The polar iteration's result.
#[derive(Clone, Debug)]
pub struct Polar {
    /// The polar factor, the input's shape.
    pub q: Vec<f32>,
    /// Iterations run.
    pub iters: usize,
    /// The last ‖X_k − X_{k−1}‖_F.
    pub last_change: f32,
}

/// The stopping rule of ALGORITHMS.md §11.4: converged at δ ≤ 1e-6·√r, or at the f32 floor
/// (δ ≤ 1e-4·√r and no longer decreasing).
pub fn polar_converged(delta: f32, previous: f32, r: usize) -> bool {
    let s = (r as f32).sqrt();
    delta <= 1e-6 * s || (delta <= 1e-4 * s && delta >= previous)
}

/// The polar iteration starts from X/‖X‖_F: a zero norm has no polar factor, and one outside f32's
/// normal range (a matrix whose norm overflows, or one of subnormal entries) would scale X to zeros
/// (whose iteration "converges" to Q = 0) or by an infinite reciprocal. Shared with the CPU twin.
pub fn check_polar_norm(norm: f32) -> Result<()> {
    if norm == 0.0 {
        return Err(Error::Invalid("polar of a zero matrix is undefined".into()));
    }
    if !norm.is_normal() {
        return Err(Error::Invalid(format!(
            "polar: the matrix's Frobenius norm ({norm:e}) is outside f32's normal range (about 1.2e-38 to \
             3.4e38); scale the input"
        )));
    }
    Ok(())
}

/// The cubic Newton–Schulz polar iteration (§5.4) on an m×n matrix; an error when it has not
/// converged after `max_iters` (never a silent result).
///
/// ```
/// # let ctx = gpuopt::Context::new()?;
/// let a = gpuopt::Tensor::from_slice(&ctx, &[2.0, 0.0, 0.0, -3.0], &[2, 2])?;
/// let p = gpuopt::kernels::newton_schulz::polar(&ctx, &a, 100)?;
/// assert!((p.q[0] - 1.0).abs() < 1e-5 && (p.q[3] + 1.0).abs() < 1e-5);
/// assert!(gpuopt::kernels::newton_schulz::polar(&ctx, &a, 1).is_err()); // did not converge: an error
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn polar(ctx: &Context, a: &Tensor, max_iters: usize) -> Result<Polar> {
    let (b, m, n) = batch_shape(a.shape())?;
    if b != 1 || a.shape().len() != 2 {
        return Err(Error::Invalid("polar takes one [m, n] matrix".into()));
    }
    if m == 0 || n == 0 {
        return Err(Error::Invalid(format!("polar needs a non-empty matrix, got {m}x{n}")));
    }
    let transpose = m > n;
    let (r, c) = if transpose { (n, m) } else { (m, n) };
    let norms = Tensor::zeros(ctx, &[1])?;
    let mut enc = ctx.encoder("polar norm");
    let mut pass = crate::gpu::compute_pass(&mut enc, "polar norm");
    FrobeniusPlan::new(ctx, a, None, 1, &norms)?.record(&mut pass);
    drop(pass);
    ctx.submit(enc);
    check_polar_norm(norms.to_vec(ctx)?[0])?;
    let xs = [Tensor::zeros(ctx, &[r, c])?, Tensor::zeros(ctx, &[r, c])?];
    let gram_out = Tensor::zeros(ctx, &[r, r])?;
    let delta = Tensor::zeros(ctx, &[1])?;
    // (5.4.1): X/‖X‖_F, no ε (which would swamp the norm of a matrix of tiny entries).
    let normalize = ScaleCopyPlan::new(ctx, a, Some((&norms, 0.0)), &xs[0], 1, m, n, transpose)?;
    let gram_desc = GemmDesc::gram(r, c);
    let step_desc = GemmDesc { alpha: -0.5, beta: 1.5, ..GemmDesc::new(r, c, r) };
    let plans = [
        (
            GemmPlan::new(ctx, gram_desc, &xs[0], &xs[0], &gram_out)?,
            GemmPlan::with_addend(ctx, step_desc, &gram_out, &xs[0], &xs[1], &xs[0])?,
            FrobeniusPlan::new(ctx, &xs[1], Some(&xs[0]), 1, &delta)?,
        ),
        (
            GemmPlan::new(ctx, gram_desc, &xs[1], &xs[1], &gram_out)?,
            GemmPlan::with_addend(ctx, step_desc, &gram_out, &xs[1], &xs[0], &xs[1])?,
            FrobeniusPlan::new(ctx, &xs[0], Some(&xs[1]), 1, &delta)?,
        ),
    ];
    let mut enc = ctx.encoder("polar normalise");
    let mut pass = crate::gpu::compute_pass(&mut enc, "polar normalise");
    normalize.record(&mut pass);
    drop(pass);
    ctx.submit(enc);
    let mut previous = f32::INFINITY;
    for k in 0..max_iters {
        let (gram, step, diff) = &plans[k % 2];
        let mut enc = ctx.encoder("polar step");
        let mut pass = crate::gpu::compute_pass(&mut enc, "polar step");
        gram.record(&mut pass);
        step.record(&mut pass);
        diff.record(&mut pass);
        drop(pass);
        ctx.submit(enc);
        let d = delta.to_vec(ctx)?[0];
        if !d.is_finite() {
            return Err(Error::Invalid(format!("polar diverged at iteration {}", k + 1)));
        }
        if polar_converged(d, previous, r) {
            let x = &xs[(k + 1) % 2];
            let q = if transpose {
                let y = Tensor::zeros(ctx, &[m, n])?;
                let mut enc = ctx.encoder("polar transpose");
                let mut pass = crate::gpu::compute_pass(&mut enc, "polar transpose");
                ScaleCopyPlan::new(ctx, x, None, &y, 1, r, c, true)?.record(&mut pass);
                drop(pass);
                ctx.submit(enc);
                y.to_vec(ctx)?
            } else {
                x.to_vec(ctx)?
            };
            return Ok(Polar { q, iters: k + 1, last_change: d });
        }
        previous = d;
    }
    Err(Error::Invalid(format!(
        "polar did not converge in {max_iters} iterations (last change {previous:e}, needs <= {:e})",
        1e-6 * (r as f32).sqrt()
    )))
}
