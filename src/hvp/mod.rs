//! Hessian-vector products without autodiff (ALGORITHMS.md §6.2) and Hutchinson's diagonal estimate
//! over any of them (§6.1, §11.5).
//!
//! Implement [`HessianVectorProduct`] for a model; two providers ship here: [`DenseQuadratic`]
//! (½xᵀAx, H = A, one GEMM per product) and [`FiniteDifference`] (central differences of any
//! gradient function, with ε chosen as §6.2 recommends).

pub mod softmax;

use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::kernels::hutchinson::{check_symmetric, HUTCHINSON_ACCUMULATE, HUTCHINSON_FINISH};
use crate::kernels::random::{fill, Draw};
use crate::{Context, Tensor};

/// H·v for a model with `len()` parameters; vectors are GPU tensors of that many elements.
pub trait HessianVectorProduct {
    /// Number of parameters.
    fn len(&self) -> usize;
    /// True when there are no parameters.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// out ← H·v (the work may be submitted; it must be complete before later submissions read `out`,
    /// which queue order guarantees).
    fn hvp(&mut self, ctx: &Context, v: &Tensor, out: &Tensor) -> Result<()>;
}

/// f(x) = ½·xᵀAx with A symmetric: H·v = A·v.
///
/// ```
/// use gpuopt::hvp::{hutchinson_estimate, DenseQuadratic};
/// # let ctx = gpuopt::Context::new()?;
/// // A diagonal Hessian: Hutchinson's estimate is exact with one Rademacher sample.
/// let mut q = DenseQuadratic::new(&ctx, &[2.0, 0.0, 0.0, 5.0], 2)?;
/// assert_eq!(hutchinson_estimate(&ctx, &mut q, 1, 42, 0)?, vec![2.0, 5.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub struct DenseQuadratic {
    a: Tensor,
    n: usize,
}

impl DenseQuadratic {
    /// Uploads a symmetric n×n matrix (checked).
    pub fn new(ctx: &Context, a: &[f32], n: usize) -> Result<Self> {
        check_symmetric(a, n)?;
        Ok(DenseQuadratic { a: Tensor::from_slice(ctx, a, &[n, n])?, n })
    }
}

impl HessianVectorProduct for DenseQuadratic {
    fn len(&self) -> usize {
        self.n
    }

    fn hvp(&mut self, ctx: &Context, v: &Tensor, out: &Tensor) -> Result<()> {
        crate::kernels::gemm::gemm(ctx, GemmDesc::new(self.n, 1, self.n), &self.a, v, out)
    }
}

/// Central finite differences of a gradient function at `w`: H·v ≈ (∇f(w + εv) − ∇f(w − εv)) / 2ε
/// (6.2.1), with ε = u^{1/3}·(1 + ‖w‖_∞)/‖v‖_∞ and u = 2⁻²⁴ unless set. The gradient runs on the host
/// (it is the user's model); v and the result travel through the GPU tensors.
///
/// ```
/// use gpuopt::hvp::FiniteDifference;
/// // f(w) = w₀³ + w₀·w₁: H = [[6w₀, 1], [1, 0]]; at w = (1, 2), H·(1, 0) = (6, 1).
/// let grad = |w: &[f32], g: &mut [f32]| {
///     g[0] = 3.0 * w[0] * w[0] + w[1];
///     g[1] = w[0];
///     Ok(())
/// };
/// let mut fd = FiniteDifference::new(vec![1.0, 2.0], grad, None);
/// let hv = fd.hvp_host(&[1.0, 0.0])?;
/// assert!((hv[0] - 6.0).abs() < 1e-2 && (hv[1] - 1.0).abs() < 1e-3);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub struct FiniteDifference<F: FnMut(&[f32], &mut [f32]) -> Result<()>> {
    w: Vec<f32>,
    grad: F,
    eps: Option<f32>,
}

/// ε of a central difference in f32 at `w` along `v` (ALGORITHMS.md §6.2).
pub fn central_difference_eps(w: &[f32], v: &[f32]) -> f32 {
    let u_cbrt = (2.0f64.powi(-24)).cbrt();
    let w_inf = w.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
    let v_inf = v.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
    // A tiny v makes the quotient pass f32's range; ε·v then still fits.
    ((u_cbrt * (1.0 + w_inf) / v_inf) as f32).min(f32::MAX)
}

impl<F: FnMut(&[f32], &mut [f32]) -> Result<()>> FiniteDifference<F> {
    /// At the point `w`, with `grad(w, out)` writing ∇f(w); `eps` overrides the recommended ε.
    pub fn new(w: Vec<f32>, grad: F, eps: Option<f32>) -> Self {
        FiniteDifference { w, grad, eps }
    }

    /// H·v on the host.
    pub fn hvp_host(&mut self, v: &[f32]) -> Result<Vec<f32>> {
        if v.len() != self.w.len() {
            return Err(Error::Shape {
                what: "finite-difference direction".into(),
                expected: vec![self.w.len()],
                got: vec![v.len()],
            });
        }
        if let Some(e) = self.eps.filter(|e| !(e.is_finite() && *e > 0.0)) {
            return Err(Error::Hyperparameter {
                name: "eps".into(),
                value: e as f64,
                reason: "the finite-difference step must be finite and > 0".into(),
            });
        }
        // H·0 = 0, without dividing 0 by 0 (and without two gradient evaluations).
        if v.iter().all(|&x| x == 0.0) {
            return Ok(vec![0.0; v.len()]);
        }
        // With the recommended ε, the difference is taken along v/‖v‖_∞ and scaled back (H is
        // linear): the same step w ± ε·v in exact arithmetic, and ε stays finite for a tiny v (for
        // v = 1e-38·e₁ it overflowed, and 2ε with it, giving 0 for H·v).
        let (scale, unit): (f32, Vec<f32>) = match self.eps {
            Some(_) => (1.0, v.to_vec()),
            None => {
                let s = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                (s, v.iter().map(|x| x / s).collect())
            }
        };
        let eps = self.eps.unwrap_or_else(|| central_difference_eps(&self.w, &unit));
        let plus: Vec<f32> = self.w.iter().zip(&unit).map(|(w, v)| w + eps * v).collect();
        let minus: Vec<f32> = self.w.iter().zip(&unit).map(|(w, v)| w - eps * v).collect();
        let (mut gp, mut gm) = (vec![0.0; v.len()], vec![0.0; v.len()]);
        (self.grad)(&plus, &mut gp)?;
        (self.grad)(&minus, &mut gm)?;
        Ok(gp.iter().zip(&gm).map(|(a, b)| (a - b) / (2.0 * eps) * scale).collect())
    }
}

impl<F: FnMut(&[f32], &mut [f32]) -> Result<()>> HessianVectorProduct for FiniteDifference<F> {
    fn len(&self) -> usize {
        self.w.len()
    }

    fn hvp(&mut self, ctx: &Context, v: &Tensor, out: &Tensor) -> Result<()> {
        let hv = self.hvp_host(&v.to_vec(ctx)?)?;
        out.write(ctx, &hv)
    }
}

/// Hutchinson's estimate diag(H) ≈ (1/N)·Σ_k z_k ⊙ (H·z_k) over any product, with the library's
/// Rademacher probes (sample k = 0 … N−1, `tensor_id`), summed in sample order in f32 on the GPU.
pub fn hutchinson_estimate(
    ctx: &Context,
    h: &mut dyn HessianVectorProduct,
    samples: usize,
    seed: u64,
    tensor_id: u32,
) -> Result<Vec<f32>> {
    hutchinson_estimate_averaged(ctx, h, samples, seed, tensor_id, None)
}

/// [`hutchinson_estimate`] followed, with `Some(block)`, by AdaHessian's block averaging of |diag| over
/// consecutive blocks of `block` elements (see [`crate::kernels::hutchinson::BlockLayout`] for the
/// layouts of the references), on the GPU before the readback.
pub fn hutchinson_estimate_averaged(
    ctx: &Context,
    h: &mut dyn HessianVectorProduct,
    samples: usize,
    seed: u64,
    tensor_id: u32,
    block: Option<usize>,
) -> Result<Vec<f32>> {
    let n = h.len();
    if samples == 0 {
        return Err(Error::Invalid("samples must be at least 1".into()));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let z = Tensor::zeros(ctx, &[n])?;
    let hz = Tensor::zeros(ctx, &[n])?;
    let acc = Tensor::zeros(ctx, &[n])?;
    let u = ctx.uniform_buffer("hutchinson params", 16);
    ctx.queue().write_buffer(&u, 0, bytemuck::cast_slice(&[n as u32, samples as u32, 0, 0]));
    let accumulate = ctx.bind(&HUTCHINSON_ACCUMULATE, &[&u, z.buffer(), hz.buffer(), acc.buffer()])?;
    let finish = ctx.bind(&HUTCHINSON_FINISH, &[&u, acc.buffer()])?;
    let wg = (n as u32).div_ceil(crate::gpu::WORKGROUP_SIZE);
    for k in 0..samples {
        fill(ctx, &z, Draw::Rademacher, seed, k as u32, tensor_id, 0)?;
        h.hvp(ctx, &z, &hz)?;
        let mut enc = ctx.encoder("hutchinson accumulate");
        let mut pass = crate::gpu::compute_pass(&mut enc, "hutchinson accumulate");
        accumulate.record(ctx, &mut pass, wg);
        drop(pass);
        ctx.submit(enc);
    }
    let mut enc = ctx.encoder("hutchinson finish");
    let mut pass = crate::gpu::compute_pass(&mut enc, "hutchinson finish");
    finish.record(ctx, &mut pass, wg);
    drop(pass);
    ctx.submit(enc);
    match block {
        None => acc.to_vec(ctx),
        Some(b) => {
            crate::kernels::hutchinson::block_average(ctx, &acc, b, &hz)?;
            hz.to_vec(ctx)
        }
    }
}
