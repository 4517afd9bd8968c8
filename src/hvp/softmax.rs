//! Multinomial (softmax) regression with its exact Hessian-vector product on the GPU
//! (ALGORITHMS.md §6.2 (c)): W is d×K, logits Z = X·W, P = row-softmax(Z), and
//! f(W) = −(1/n)·Σ_i log P_{i,y_i} + (λ/2)·‖W‖², ∇f = (1/n)·Xᵀ(P − Y) + λ·W,
//! H·V = (1/n)·Xᵀ·R + λ·V with U = X·V and R_ik = P_ik·(U_ik − Σ_j P_ij·U_ij).
//! Every product is a GEMM; the row-wise parts are `shaders/softmax.wgsl`.

use super::HessianVectorProduct;
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::kernels::gemm::{GemmDesc, GemmPlan};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// P and P − Y from the logits.
pub const SOFTMAX_ROWS: KernelSpec =
    KernelSpec { module: "softmax", entry: "softmax_rows", bindings: &[(0, U), (1, R), (2, R), (3, W), (4, W)] };
/// R from P and U.
pub const SOFTMAX_HVP_ROWS: KernelSpec =
    KernelSpec { module: "softmax", entry: "softmax_hvp_rows", bindings: &[(0, U), (5, R), (6, R), (7, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[SOFTMAX_ROWS, SOFTMAX_HVP_ROWS];

/// A softmax-regression model on the GPU: data X (n×d), labels, weights W (d×K), ridge λ.
pub struct SoftmaxRegression {
    ctx: Context,
    n: usize,
    d: usize,
    k: usize,
    lambda: f32,
    x: Tensor,
    w: Tensor,
    /// The logits, written by `logits` and read by `rows`.
    _z: Tensor,
    p: Tensor,
    pmy: Tensor,
    u: Tensor,
    r: Tensor,
    labels: Vec<u32>,
    logits: GemmPlan,
    rows: BoundKernel,
    _buffers: Vec<wgpu::Buffer>,
}

impl SoftmaxRegression {
    /// `x` is n×d row-major, `labels` in 0..k, weights start at zero.
    pub fn new(ctx: &Context, x: &[f32], labels: &[u32], n: usize, d: usize, k: usize, lambda: f32) -> Result<Self> {
        if x.len() != n * d || labels.len() != n {
            return Err(Error::Shape {
                what: "softmax regression data".into(),
                expected: vec![n, d],
                got: vec![x.len(), labels.len()],
            });
        }
        if n == 0 || d == 0 || k < 2 || labels.iter().any(|&l| l as usize >= k) || !lambda.is_finite() || lambda < 0.0 {
            return Err(Error::Invalid(format!(
                "softmax regression needs n >= 1 examples, d >= 1 features, k >= 2 classes, labels < k and a \
                 finite lambda >= 0 (n = {n}, d = {d}, k = {k}, lambda = {lambda})"
            )));
        }
        // One invocation per row walks the k classes three times (softmax_rows).
        // (+8: the loops' own bookkeeping: at 3k = 65,535 llvmpipe cut the last class short.)
        ctx.info().check_loop(3 * k as u64 + 8, &format!("softmax regression rows over {k} classes"))?;
        let x_t = Tensor::from_slice(ctx, x, &[n, d])?;
        let w = Tensor::zeros(ctx, &[d, k])?;
        let z = Tensor::zeros(ctx, &[n, k])?;
        let p = Tensor::zeros(ctx, &[n, k])?;
        let pmy = Tensor::zeros(ctx, &[n, k])?;
        let u = Tensor::zeros(ctx, &[n, k])?;
        let r = Tensor::zeros(ctx, &[n, k])?;
        let lab = ctx.storage_buffer("labels", 4 * n as u64)?;
        ctx.queue().write_buffer(&lab, 0, bytemuck::cast_slice(labels));
        let uni = ctx.uniform_buffer("softmax params", 16);
        ctx.queue().write_buffer(&uni, 0, bytemuck::cast_slice(&[n as u32, k as u32, 0, 0]));
        let logits = GemmPlan::new(ctx, GemmDesc::new(n, k, d), &x_t, &w, &z)?;
        let rows = ctx.bind(&SOFTMAX_ROWS, &[&uni, z.buffer(), &lab, p.buffer(), pmy.buffer()])?;
        Ok(SoftmaxRegression {
            ctx: ctx.clone(),
            n,
            d,
            k,
            lambda,
            x: x_t,
            w,
            _z: z,
            p,
            pmy,
            u,
            r,
            labels: labels.to_vec(),
            logits,
            rows,
            _buffers: vec![lab, uni],
        })
    }

    /// Sets W (d×K row-major) and recomputes P: every later product is at this point.
    pub fn set_weights(&mut self, w: &[f32]) -> Result<()> {
        self.w.write(&self.ctx, w)?;
        let mut enc = self.ctx.encoder("softmax forward");
        let mut pass = crate::gpu::compute_pass(&mut enc, "softmax forward");
        self.logits.record(&mut pass);
        self.rows.record(&self.ctx, &mut pass, (self.n as u32).div_ceil(WORKGROUP_SIZE));
        drop(pass);
        self.ctx.submit(enc);
        Ok(())
    }

    /// The loss and its gradient (d×K) at the current weights.
    pub fn loss_and_grad(&mut self) -> Result<(f32, Vec<f32>)> {
        let (n, k) = (self.n, self.k);
        let grad = Tensor::zeros(&self.ctx, &[self.d, k])?;
        let desc = GemmDesc { trans_a: true, alpha: 1.0 / n as f32, beta: self.lambda, ..GemmDesc::new(self.d, k, n) };
        let plan = GemmPlan::with_addend(&self.ctx, desc, &self.x, &self.pmy, &grad, &self.w)?;
        let mut enc = self.ctx.encoder("softmax gradient");
        let mut pass = crate::gpu::compute_pass(&mut enc, "softmax gradient");
        plan.record(&mut pass);
        drop(pass);
        self.ctx.submit(enc);
        let p = self.p.to_vec(&self.ctx)?;
        let w = self.w.to_vec(&self.ctx)?;
        let nll: f64 =
            (0..n).map(|i| -(p[i * k + self.labels[i] as usize].max(f32::MIN_POSITIVE) as f64).ln()).sum::<f64>()
                / n as f64;
        let ridge = 0.5 * self.lambda as f64 * w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        Ok(((nll + ridge) as f32, grad.to_vec(&self.ctx)?))
    }
}

impl HessianVectorProduct for SoftmaxRegression {
    fn len(&self) -> usize {
        self.d * self.k
    }

    fn hvp(&mut self, ctx: &Context, v: &Tensor, out: &Tensor) -> Result<()> {
        let (n, d, k) = (self.n, self.d, self.k);
        let uni = ctx.uniform_buffer("softmax params", 16);
        ctx.queue().write_buffer(&uni, 0, bytemuck::cast_slice(&[n as u32, k as u32, 0, 0]));
        let xv = GemmPlan::new(ctx, GemmDesc::new(n, k, d), &self.x, v, &self.u)?;
        let rows = ctx.bind(&SOFTMAX_HVP_ROWS, &[&uni, self.p.buffer(), self.u.buffer(), self.r.buffer()])?;
        let desc = GemmDesc { trans_a: true, alpha: 1.0 / n as f32, beta: self.lambda, ..GemmDesc::new(d, k, n) };
        let back = GemmPlan::with_addend(ctx, desc, &self.x, &self.r, out, v)?;
        let mut enc = ctx.encoder("softmax hvp");
        let mut pass = crate::gpu::compute_pass(&mut enc, "softmax hvp");
        ctx.scoped("softmax hvp", || {
            xv.record(&mut pass);
            rows.record(ctx, &mut pass, (n as u32).div_ceil(WORKGROUP_SIZE));
            back.record(&mut pass);
        })?;
        drop(pass);
        ctx.submit(enc);
        Ok(())
    }
}

/// The exact H·v on the host in f64 (the oracle of the tests).
pub fn softmax_hvp_f64(x: &[f32], w: &[f32], v: &[f32], (n, d, k): (usize, usize, usize), lambda: f64) -> Vec<f64> {
    let mut out = vec![0.0f64; d * k];
    for i in 0..n {
        let z: Vec<f64> = (0..k).map(|c| (0..d).map(|a| x[i * d + a] as f64 * w[a * k + c] as f64).sum()).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|v| v / s).collect();
        let u: Vec<f64> = (0..k).map(|c| (0..d).map(|a| x[i * d + a] as f64 * v[a * k + c] as f64).sum()).collect();
        let pu: f64 = (0..k).map(|c| p[c] * u[c]).sum();
        for a in 0..d {
            for c in 0..k {
                out[a * k + c] += x[i * d + a] as f64 * p[c] * (u[c] - pu) / n as f64;
            }
        }
    }
    for (o, vi) in out.iter_mut().zip(v) {
        *o += lambda * *vi as f64;
    }
    out
}
