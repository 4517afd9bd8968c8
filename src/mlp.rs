//! A one-hidden-layer perceptron (d → hidden (ReLU) → k, softmax cross-entropy) trained on the GPU:
//! forward and backward are GEMMs (`shaders/gemm.wgsl`) plus the row kernels of `shaders/mlp.wgsl` and
//! `shaders/softmax.wgsl`. It backs `examples/train_digits.rs`; [`reference_loss_and_grads`] is its CPU
//! twin in f64, which `tests/mlp.rs` holds it to.
//!
//! ```text
//! Z1 = X·W1;  H = relu(Z1 + b1);  Z2 = H·W2 + b2;  P = softmax(Z2);  f = −(1/n)·Σ_i log P[i, y_i]
//! D2 = (P − Y)/n;  ∇W2 = Hᵀ·D2;  ∇b2 = Σ_i D2;  D1 = (D2·W2ᵀ) ⊙ [H > 0];  ∇W1 = Xᵀ·D1;  ∇b1 = Σ_i D1
//! ```

use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::hvp::softmax::SOFTMAX_ROWS;
use crate::kernels::gemm::{GemmDesc, GemmPlan};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// out = max(z + b, 0).
pub const BIAS_RELU: KernelSpec =
    KernelSpec { module: "mlp", entry: "bias_relu", bindings: &[(0, U), (1, R), (2, R), (3, W)] };
/// out = z + b.
pub const BIAS_ADD: KernelSpec =
    KernelSpec { module: "mlp", entry: "bias_add", bindings: &[(0, U), (1, R), (2, R), (3, W)] };
/// out = z·\[h > 0\].
pub const RELU_BACKWARD: KernelSpec =
    KernelSpec { module: "mlp", entry: "relu_backward", bindings: &[(0, U), (1, R), (3, W), (4, R)] };
/// out_j = scale·Σ_i z_ij.
pub const COLUMN_SUM: KernelSpec =
    KernelSpec { module: "mlp", entry: "column_sum", bindings: &[(0, U), (1, R), (3, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[BIAS_RELU, BIAS_ADD, RELU_BACKWARD, COLUMN_SUM];

/// Parameter shapes: W1 [d, hidden], b1 \[hidden\], W2 [hidden, k], b2 \[k\].
pub fn param_shapes(d: usize, hidden: usize, k: usize) -> [Vec<usize>; 4] {
    [vec![d, hidden], vec![hidden], vec![hidden, k], vec![k]]
}

/// The network on one data set, with every buffer and dispatch planned once.
///
/// ```
/// use gpuopt::mlp::Mlp;
/// # let ctx = gpuopt::Context::new()?;
/// let x = [0.0, 1.0, 1.0, 0.0]; // two samples, two features
/// let mut mlp = Mlp::new(&ctx, &x, &[0, 1], 2, 3, 2)?;
/// let (loss, grads) = mlp.loss_and_grads()?; // zero parameters: uniform predictions
/// assert!((loss - 2f32.ln()).abs() < 1e-6 && grads[0].len() == 6);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub struct Mlp {
    ctx: Context,
    n: usize,
    k: usize,
    labels: Vec<u32>,
    params: [Tensor; 4],
    grads: [Tensor; 4],
    p: Tensor,
    forward: Vec<Step>,
    backward: Vec<Step>,
    _keep: Vec<Tensor>,
    _buffers: Vec<wgpu::Buffer>,
}

enum Step {
    Gemm(GemmPlan),
    Rows(BoundKernel, u32),
}

impl Mlp {
    /// `x` is n×d row-major, labels in 0..k; parameters start at zero (set them with [`Mlp::set_params`]).
    pub fn new(ctx: &Context, x: &[f32], labels: &[u32], d: usize, hidden: usize, k: usize) -> Result<Self> {
        let n = labels.len();
        if x.len() != n * d || n == 0 || hidden == 0 || k < 2 || labels.iter().any(|&l| l as usize >= k) {
            return Err(Error::Invalid(format!(
                "mlp: x must be n×d ({n}×{d}, got {} values), hidden ≥ 1, k ≥ 2, labels < k",
                x.len()
            )));
        }
        // One invocation per column sums the batch's n rows (column_sum), one per row walks the k
        // classes three times (softmax_rows): within the adapter's loop budget, or refused.
        // (+8: the loops' own bookkeeping; softmax rows failed at 3k = 65,535 on llvmpipe, not 65,532.)
        ctx.info().check_loop(n as u64 + 8, &format!("mlp: bias gradients summed over a batch of {n} rows"))?;
        ctx.info().check_loop(3 * k as u64 + 8, &format!("mlp: softmax rows over {k} classes"))?;
        let t = |shape: &[usize]| Tensor::zeros(ctx, shape);
        let xt = Tensor::from_slice(ctx, x, &[n, d])?;
        let shapes = param_shapes(d, hidden, k);
        let params = [t(&shapes[0])?, t(&shapes[1])?, t(&shapes[2])?, t(&shapes[3])?];
        let grads = [t(&shapes[0])?, t(&shapes[1])?, t(&shapes[2])?, t(&shapes[3])?];
        let (z1, h1, z2raw, z2, p, pmy, dh, dz1) = (
            t(&[n, hidden])?,
            t(&[n, hidden])?,
            t(&[n, k])?,
            t(&[n, k])?,
            t(&[n, k])?,
            t(&[n, k])?,
            t(&[n, hidden])?,
            t(&[n, hidden])?,
        );
        let lab = ctx.storage_buffer("mlp labels", 4 * n as u64)?;
        ctx.queue().write_buffer(&lab, 0, bytemuck::cast_slice(labels));
        let uniform = |rows: usize, cols: usize, scale: f32| {
            let u = ctx.uniform_buffer("mlp params", 16);
            let words = [rows as u32, cols as u32, scale.to_bits(), 0];
            ctx.queue().write_buffer(&u, 0, bytemuck::cast_slice(&words));
            u
        };
        let (u_h, u_k, u_sm) = (uniform(n, hidden, 1.0), uniform(n, k, 1.0), uniform(n, k, 0.0));
        let (u_b2, u_b1) = (uniform(n, k, 1.0 / n as f32), uniform(n, hidden, 1.0));
        let wg = |len: usize| (len as u32).div_ceil(WORKGROUP_SIZE);
        let inv_n = 1.0 / n as f32;
        let forward = vec![
            Step::Gemm(GemmPlan::new(ctx, GemmDesc::new(n, hidden, d), &xt, &params[0], &z1)?),
            Step::Rows(ctx.bind(&BIAS_RELU, &[&u_h, z1.buffer(), params[1].buffer(), h1.buffer()])?, wg(n * hidden)),
            Step::Gemm(GemmPlan::new(ctx, GemmDesc::new(n, k, hidden), &h1, &params[2], &z2raw)?),
            Step::Rows(ctx.bind(&BIAS_ADD, &[&u_k, z2raw.buffer(), params[3].buffer(), z2.buffer()])?, wg(n * k)),
            Step::Rows(ctx.bind(&SOFTMAX_ROWS, &[&u_sm, z2.buffer(), &lab, p.buffer(), pmy.buffer()])?, wg(n)),
        ];
        let backward = vec![
            // ∇W2 = Hᵀ·(P − Y)/n, ∇b2 = Σ_i (P − Y)/n.
            Step::Gemm(GemmPlan::new(
                ctx,
                GemmDesc { trans_a: true, alpha: inv_n, ..GemmDesc::new(hidden, k, n) },
                &h1,
                &pmy,
                &grads[2],
            )?),
            Step::Rows(ctx.bind(&COLUMN_SUM, &[&u_b2, pmy.buffer(), grads[3].buffer()])?, wg(k)),
            // D1 = ((P − Y)/n · W2ᵀ) ⊙ [H > 0].
            Step::Gemm(GemmPlan::new(
                ctx,
                GemmDesc { trans_b: true, alpha: inv_n, ..GemmDesc::new(n, hidden, k) },
                &pmy,
                &params[2],
                &dh,
            )?),
            Step::Rows(ctx.bind(&RELU_BACKWARD, &[&u_h, dh.buffer(), dz1.buffer(), h1.buffer()])?, wg(n * hidden)),
            Step::Gemm(GemmPlan::new(
                ctx,
                GemmDesc { trans_a: true, ..GemmDesc::new(d, hidden, n) },
                &xt,
                &dz1,
                &grads[0],
            )?),
            Step::Rows(ctx.bind(&COLUMN_SUM, &[&u_b1, dz1.buffer(), grads[1].buffer()])?, wg(hidden)),
        ];
        Ok(Mlp {
            ctx: ctx.clone(),
            n,
            k,
            labels: labels.to_vec(),
            params,
            grads,
            p,
            forward,
            backward,
            _keep: vec![xt, z1, h1, z2raw, z2, pmy, dh, dz1],
            _buffers: vec![lab, u_h, u_k, u_sm, u_b2, u_b1],
        })
    }

    /// Writes W1, b1, W2, b2 (row-major, the shapes of [`param_shapes`]).
    pub fn set_params(&mut self, params: &[&[f32]]) -> Result<()> {
        if params.len() != 4 {
            return Err(Error::Invalid(format!("mlp: 4 parameter tensors, got {}", params.len())));
        }
        for (t, p) in self.params.iter().zip(params) {
            t.write(&self.ctx, p)?;
        }
        Ok(())
    }

    fn run(&self, steps: &[Step], label: &str) -> Result<()> {
        let mut enc = self.ctx.encoder(label);
        let mut pass = crate::gpu::compute_pass(&mut enc, label);
        self.ctx.scoped(label, || {
            for s in steps {
                match s {
                    Step::Gemm(g) => {
                        g.record(&mut pass);
                    }
                    Step::Rows(b, wg) => {
                        b.record(&self.ctx, &mut pass, *wg);
                    }
                }
            }
        })?;
        drop(pass);
        self.ctx.submit(enc);
        Ok(())
    }

    /// Mean cross-entropy and accuracy on this data set at the current parameters.
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        self.run(&self.forward, "mlp forward")?;
        let p = self.p.to_vec(&self.ctx)?;
        let k = self.k;
        let (mut nll, mut correct) = (0.0f64, 0usize);
        for (i, &y) in self.labels.iter().enumerate() {
            let row = &p[i * k..(i + 1) * k];
            nll -= (row[y as usize].max(f32::MIN_POSITIVE) as f64).ln();
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            correct += (best == y as usize) as usize;
        }
        Ok(((nll / self.n as f64) as f32, correct as f32 / self.n as f32))
    }

    /// The loss and the gradients of W1, b1, W2, b2 at the current parameters.
    pub fn loss_and_grads(&mut self) -> Result<(f32, [Vec<f32>; 4])> {
        let (loss, _) = self.evaluate()?;
        self.run(&self.backward, "mlp backward")?;
        let g = |i: usize| self.grads[i].to_vec(&self.ctx);
        Ok((loss, [g(0)?, g(1)?, g(2)?, g(3)?]))
    }
}

/// The CPU twin in f64: (loss, [∇W1, ∇b1, ∇W2, ∇b2]).
pub fn reference_loss_and_grads(
    x: &[f32],
    labels: &[u32],
    (d, hidden, k): (usize, usize, usize),
    params: &[&[f32]],
) -> (f64, [Vec<f64>; 4]) {
    let n = labels.len();
    let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (w1, b1, w2, b2) = (f(params[0]), f(params[1]), f(params[2]), f(params[3]));
    let mut h = vec![0.0; n * hidden];
    for i in 0..n {
        for j in 0..hidden {
            let z: f64 = (0..d).map(|l| x[i * d + l] as f64 * w1[l * hidden + j]).sum::<f64>() + b1[j];
            h[i * hidden + j] = z.max(0.0);
        }
    }
    let mut d2 = vec![0.0; n * k];
    let mut loss = 0.0;
    for i in 0..n {
        let z: Vec<f64> =
            (0..k).map(|j| (0..hidden).map(|l| h[i * hidden + l] * w2[l * k + j]).sum::<f64>() + b2[j]).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        for j in 0..k {
            let p = (z[j] - m).exp() / s;
            d2[i * k + j] = (p - if j == labels[i] as usize { 1.0 } else { 0.0 }) / n as f64;
        }
        loss -= (z[labels[i] as usize] - m) - s.ln();
    }
    loss /= n as f64;
    let mut gw2 = vec![0.0; hidden * k];
    let mut gb2 = vec![0.0; k];
    let mut d1 = vec![0.0; n * hidden];
    for i in 0..n {
        for j in 0..k {
            gb2[j] += d2[i * k + j];
            for l in 0..hidden {
                gw2[l * k + j] += h[i * hidden + l] * d2[i * k + j];
                if h[i * hidden + l] > 0.0 {
                    d1[i * hidden + l] += d2[i * k + j] * w2[l * k + j];
                }
            }
        }
    }
    let mut gw1 = vec![0.0; d * hidden];
    let mut gb1 = vec![0.0; hidden];
    for i in 0..n {
        for l in 0..hidden {
            gb1[l] += d1[i * hidden + l];
            for a in 0..d {
                gw1[a * hidden + l] += x[i * d + a] as f64 * d1[i * hidden + l];
            }
        }
    }
    (loss, [gw1, gb1, gw2, gb2])
}
