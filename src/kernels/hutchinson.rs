//! Hutchinson's Hessian-diagonal estimate for an explicit symmetric matrix (the dense quadratic
//! ½xᵀAx, whose Hessian is A): Rademacher probes from Philox (`shaders/random.wgsl`), the products
//! A·Z in one GEMM, and the per-element average in `shaders/hutchinson.wgsl`. CPU twin:
//! `reference::hutchinson`.

use super::gemm::{GemmDesc, GemmPlan};
use super::random::{RandomParams, RADEMACHER_SAMPLES};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// The averaging pass.
pub const HUTCHINSON_DIAG: KernelSpec =
    KernelSpec { module: "hutchinson", entry: "hutchinson_diag", bindings: &[(0, U), (1, R), (2, R), (3, W)] };
/// acc += z ⊙ (H·z) for one sample.
pub const HUTCHINSON_ACCUMULATE: KernelSpec =
    KernelSpec { module: "hutchinson", entry: "hutchinson_accumulate", bindings: &[(0, U), (1, R), (2, R), (4, W)] };
/// acc /= N.
pub const HUTCHINSON_FINISH: KernelSpec =
    KernelSpec { module: "hutchinson", entry: "hutchinson_finish", bindings: &[(0, U), (4, W)] };
/// Mean of |d| over blocks of consecutive elements (AdaHessian's spatial averaging).
pub const BLOCK_AVERAGE: KernelSpec =
    KernelSpec { module: "hutchinson", entry: "block_average", bindings: &[(0, U), (3, W), (4, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[HUTCHINSON_DIAG, HUTCHINSON_ACCUMULATE, HUTCHINSON_FINISH, BLOCK_AVERAGE];

/// How a tensor's Hessian-diagonal estimate is averaged (ALGORITHMS.md §6.1; all are blocks of
/// consecutive row-major elements, so one kernel serves every layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlockLayout {
    /// No averaging (the estimate as it is, signed).
    #[default]
    None,
    /// The official image-classification AdaHessian: 4-D conv kernels [o, i, kh, kw] averaged over
    /// (kh, kw); other ranks not averaged (but taken in absolute value).
    Spatial,
    /// Whole rows of the last dimension (`instruction/adahessian.py` for 2-D tensors).
    Rows,
    /// Consecutive blocks of this many elements (fairseq's `block_length`).
    Length(usize),
}

impl BlockLayout {
    /// The block length for a tensor of this shape (`None` → no averaging).
    pub fn block_len(&self, shape: &[usize]) -> Option<usize> {
        match *self {
            BlockLayout::None => None,
            BlockLayout::Spatial if shape.len() == 4 => Some(shape[2] * shape[3]),
            BlockLayout::Spatial => Some(1),
            BlockLayout::Rows => Some(*shape.last().unwrap_or(&1)),
            BlockLayout::Length(b) => Some(b),
        }
    }
}

/// out_i = mean |d_j| over the `block`-element block holding i (GPU); `out` and `d` have n elements.
///
/// ```
/// # let ctx = gpuopt::Context::new()?;
/// let d = gpuopt::Tensor::from_slice(&ctx, &[1.0, -3.0, 2.0, 4.0], &[4])?;
/// let out = gpuopt::Tensor::zeros(&ctx, &[4])?;
/// gpuopt::kernels::hutchinson::block_average(&ctx, &d, 2, &out)?;
/// assert_eq!(out.to_vec(&ctx)?, vec![2.0, 2.0, 3.0, 3.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn block_average(ctx: &Context, d: &Tensor, block: usize, out: &Tensor) -> Result<()> {
    let n = d.len();
    if block == 0 || out.len() != n {
        return Err(Error::Invalid(format!("block_average: block {block} must be >= 1 and out must hold {n} values")));
    }
    if n == 0 {
        return Ok(());
    }
    // Each element sums its whole block (block_average in shaders/hutchinson.wgsl).
    ctx.info().check_loop(block.min(n) as u64 + 8, &format!("block_average over blocks of {block}"))?;
    let u = ctx.uniform_buffer("block average params", 16);
    ctx.queue().write_buffer(&u, 0, bytemuck::cast_slice(&[n as u32, block.min(n) as u32, 0, 0]));
    let bound = ctx.bind(&BLOCK_AVERAGE, &[&u, out.buffer(), d.buffer()])?;
    let mut enc = ctx.encoder("block average");
    let mut pass = crate::gpu::compute_pass(&mut enc, "block average");
    bound.record(ctx, &mut pass, (n as u32).div_ceil(WORKGROUP_SIZE));
    drop(pass);
    ctx.submit(enc);
    Ok(())
}

/// Checks that `a` is a finite, square, symmetric matrix (to a relative 1e-6 of its largest entry).
pub fn check_symmetric(a: &[f32], n: usize) -> Result<()> {
    if a.len() != n * n {
        return Err(Error::Shape { what: "hutchinson matrix".into(), expected: vec![n, n], got: vec![a.len()] });
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("the matrix holds NaN or Inf".into()));
    }
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for i in 0..n {
        for j in i + 1..n {
            if (a[i * n + j] - a[j * n + i]).abs() > 1e-6 * scale {
                return Err(Error::Invalid(format!("the matrix is not symmetric at ({i}, {j})")));
            }
        }
    }
    Ok(())
}

/// diag ≈ (1/N)·Σ_k z_k ⊙ (A·z_k) with N = `samples` Rademacher probes under `seed` (tensor id 0).
///
/// ```
/// # let ctx = gpuopt::Context::new()?;
/// // ALGORITHMS.md §6.1's worked example: A = [[2, 1], [1, 3]], N = 3, S = 7 → [5/3, 8/3].
/// let a = gpuopt::Tensor::from_slice(&ctx, &[2.0, 1.0, 1.0, 3.0], &[2, 2])?;
/// let d = gpuopt::kernels::hutchinson::hutchinson_diag(&ctx, &a, 3, 7)?;
/// assert!((d[0] - 5.0 / 3.0).abs() < 1e-6 && (d[1] - 8.0 / 3.0).abs() < 1e-6);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn hutchinson_diag(ctx: &Context, a: &Tensor, samples: usize, seed: u64) -> Result<Vec<f32>> {
    let n = match a.shape() {
        [r, c] if r == c => *r,
        other => {
            return Err(Error::Shape {
                what: "hutchinson matrix (square)".into(),
                expected: vec![0, 0],
                got: other.to_vec(),
            })
        }
    };
    if samples == 0 || samples > u32::MAX as usize {
        return Err(Error::Invalid(format!("samples = {samples}: must be from 1 to 2^32 - 1")));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let z = Tensor::zeros(ctx, &[samples, n])?;
    let hz = Tensor::zeros(ctx, &[n, samples])?;
    let diag = Tensor::zeros(ctx, &[n])?;
    let rp = RandomParams {
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        sample: 0,
        tensor_id: 0,
        len: n as u32,
        offset_lo: 0,
        offset_hi: 0,
        samples: samples as u32,
    };
    let ru = ctx.uniform_buffer("hutchinson draws", 32);
    ctx.queue().write_buffer(&ru, 0, bytemuck::bytes_of(&rp));
    let draws = ctx.bind(&RADEMACHER_SAMPLES, &[&ru, z.buffer()])?;
    // HZ (n × N) = A (n × n) · Zᵀ, Z stored N × n.
    let product = GemmPlan::new(ctx, GemmDesc { trans_b: true, ..GemmDesc::new(n, samples, n) }, a, &z, &hz)?;
    // The per-element sum over samples, in as many dispatches as the adapter's loop budget needs
    // (AdapterSummary::loop_limit: llvmpipe stops longer loops short), each carrying the sum on.
    let chunk = ctx.info().loop_limit.map_or(samples, |l| usize::try_from(l / 2).unwrap_or(usize::MAX)).max(1);
    let mut averages = Vec::new();
    for k0 in (0..samples).step_by(chunk) {
        let hu = ctx.uniform_buffer("hutchinson params", 16);
        let k1 = (k0 + chunk).min(samples);
        ctx.queue().write_buffer(&hu, 0, bytemuck::cast_slice(&[n as u32, samples as u32, k0 as u32, k1 as u32]));
        averages.push((ctx.bind(&HUTCHINSON_DIAG, &[&hu, z.buffer(), hz.buffer(), diag.buffer()])?, hu));
    }
    let mut enc = ctx.encoder("hutchinson");
    let mut pass = crate::gpu::compute_pass(&mut enc, "hutchinson");
    ctx.scoped("hutchinson", || {
        draws.record(ctx, &mut pass, ((n * samples) as u32).div_ceil(WORKGROUP_SIZE));
        product.record(&mut pass);
        for (average, _) in &averages {
            average.record(ctx, &mut pass, (n as u32).div_ceil(WORKGROUP_SIZE));
        }
    })?;
    drop(pass);
    ctx.submit(enc);
    diag.to_vec(ctx)
}
