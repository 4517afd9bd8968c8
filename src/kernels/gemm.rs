//! `shaders/gemm.wgsl`: C = α·op(A)·op(B) + β·C for op ∈ {N, T}, any m, n, k, batched; and
//! `shaders/fma_peak.wgsl`, the arithmetic baseline of the GEMM benchmarks. CPU twin:
//! `reference::gemm`.

use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// The GEMM kernel.
pub const GEMM_F32: KernelSpec =
    KernelSpec { module: "gemm", entry: "gemm_f32", bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R)] };
/// The FMA-throughput kernel.
pub const FMA_PEAK: KernelSpec = KernelSpec { module: "fma_peak", entry: "fma_peak", bindings: &[(0, U), (1, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[GEMM_F32, FMA_PEAK];

/// Output tile edge of one workgroup (keep in sync with `TILE` in the shader).
pub const TILE: u32 = 64;

/// Uniform of `gemm_f32`. Keep in sync with `struct GemmParams` in `shaders/gemm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GemmParams {
    /// Rows of op(A) and C.
    pub m: u32,
    /// Columns of op(B) and C.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// Matrices in the batch.
    pub batch: u32,
    /// Row stride of stored A.
    pub lda: u32,
    /// Row stride of stored B.
    pub ldb: u32,
    /// Row stride of C.
    pub ldc: u32,
    /// 1 when A is stored transposed (k×m).
    pub trans_a: u32,
    /// Elements between consecutive A matrices (0 broadcasts one A).
    pub stride_a: u32,
    /// Elements between consecutive B matrices (0 broadcasts one B).
    pub stride_b: u32,
    /// Elements between consecutive C matrices.
    pub stride_c: u32,
    /// 1 when B is stored transposed (n×k).
    pub trans_b: u32,
    /// α.
    pub alpha: f32,
    /// β (0: the addend is not read).
    pub beta: f32,
    /// 0: the addend is C; 1: the separate `d` binding.
    pub d_mode: u32,
    /// Elements between consecutive D matrices.
    pub stride_d: u32,
    /// 1: compute the upper triangle of tiles and mirror it (C symmetric).
    pub symmetric: u32,
    /// Padding to 80 bytes.
    pub _p: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 80);

/// A GEMM problem: C[z] = α·op(A[z])·op(B[z]) + β·C[z] for z < batch, all matrices dense row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmDesc {
    /// Rows of op(A) and C.
    pub m: usize,
    /// Columns of op(B) and C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Number of matrices.
    pub batch: usize,
    /// A is stored k×m.
    pub trans_a: bool,
    /// B is stored n×k.
    pub trans_b: bool,
    /// α.
    pub alpha: f32,
    /// β.
    pub beta: f32,
    /// The result is symmetric (X·Xᵀ, or A·Aᵀ with a symmetric addend): compute half, mirror it.
    /// The caller vouches for the symmetry; m must equal n.
    pub symmetric: bool,
}

impl GemmDesc {
    /// The Gram product C = X·Xᵀ of an m×k matrix X (half the FLOPs of the full product).
    pub fn gram(m: usize, k: usize) -> Self {
        GemmDesc { trans_b: true, symmetric: true, ..GemmDesc::new(m, m, k) }
    }

    /// C = op(A)·op(B) for one matrix.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        GemmDesc { m, n, k, batch: 1, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, symmetric: false }
    }

    /// FLOPs (a multiply-add counts 2).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch) as f64
    }

    fn params(&self, a_len: usize, b_len: usize) -> GemmParams {
        let (m, n, k) = (self.m as u32, self.n as u32, self.k as u32);
        let a_one = self.m * self.k;
        let b_one = self.k * self.n;
        GemmParams {
            m,
            n,
            k,
            batch: self.batch as u32,
            lda: if self.trans_a { m } else { k },
            ldb: if self.trans_b { k } else { n },
            ldc: n,
            trans_a: self.trans_a as u32,
            stride_a: if a_len == a_one && self.batch > 1 { 0 } else { a_one as u32 },
            stride_b: if b_len == b_one && self.batch > 1 { 0 } else { b_one as u32 },
            stride_c: (self.m * self.n) as u32,
            trans_b: self.trans_b as u32,
            alpha: self.alpha,
            beta: self.beta,
            d_mode: 0,
            stride_d: 0,
            symmetric: self.symmetric as u32,
            _p: [0; 3],
        }
    }

    /// Checks the tensors' element counts: A and B hold `batch` matrices or one (broadcast), C `batch`.
    pub fn check(&self, a: usize, b: usize, c: usize) -> Result<()> {
        let ok = |len: usize, one: usize| len == one * self.batch || (len == one && self.batch >= 1);
        let shape_err = |what: &str, one: usize, got: usize| Error::Shape {
            what: format!("gemm {what} (m={}, n={}, k={}, batch={})", self.m, self.n, self.k, self.batch),
            expected: vec![self.batch, one],
            got: vec![got],
        };
        if self.batch == 0 || self.batch > 65_535 {
            return Err(Error::Invalid(format!("gemm batch {} must be in 1..=65535", self.batch)));
        }
        if !ok(a, self.m * self.k) {
            return Err(shape_err("A", self.m * self.k, a));
        }
        if !ok(b, self.k * self.n) {
            return Err(shape_err("B", self.k * self.n, b));
        }
        if c != self.m * self.n * self.batch {
            return Err(shape_err("C", self.m * self.n, c));
        }
        if self.symmetric && self.m != self.n {
            return Err(Error::Invalid(format!("a symmetric gemm needs m = n, got {}x{}", self.m, self.n)));
        }
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(Error::Invalid("gemm alpha and beta must be finite".into()));
        }
        Ok(())
    }
}

/// A GEMM bound to its tensors, ready to record (build once, record many times).
pub struct GemmPlan {
    bound: Option<BoundKernel>,
    grid: (u32, u32, u32),
    _uniform: wgpu::Buffer,
    desc: GemmDesc,
}

impl GemmPlan {
    /// Validates shapes and binds `c ← α·op(a)·op(b) + β·c`.
    pub fn new(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Self> {
        Self::build(ctx, desc, a, b, c, None)
    }

    /// Validates shapes and binds `c ← α·op(a)·op(b) + β·d` with `d` of C's shape (one matrix,
    /// broadcast, or `batch`), a fused epilogue in the same dispatch.
    pub fn with_addend(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor, d: &Tensor) -> Result<Self> {
        Self::build(ctx, desc, a, b, c, Some(d))
    }

    fn build(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor, d: Option<&Tensor>) -> Result<Self> {
        desc.check(a.len(), b.len(), c.len())?;
        let mut params = desc.params(a.len(), b.len());
        let one = desc.m * desc.n;
        if let Some(d) = d {
            if d.len() != one && d.len() != one * desc.batch {
                return Err(Error::Shape {
                    what: "gemm addend D".into(),
                    expected: vec![desc.batch, desc.m, desc.n],
                    got: d.shape().to_vec(),
                });
            }
            params.d_mode = 1;
            params.stride_d = if d.len() == one && desc.batch > 1 { 0 } else { one as u32 };
        }
        let uniform = ctx.uniform_buffer("gemm params", 80);
        ctx.queue().write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        // Without an addend the `d` binding still needs a buffer; it is never read (d_mode = 0).
        let dummy;
        let d_buf = match d {
            Some(d) => d.buffer(),
            None => {
                dummy = ctx.storage_buffer("gemm unused addend", 16)?;
                &dummy
            }
        };
        let bound = if desc.m == 0 || desc.n == 0 {
            None
        } else {
            Some(ctx.bind(&GEMM_F32, &[&uniform, a.buffer(), b.buffer(), c.buffer(), d_buf])?)
        };
        let grid = ((desc.n as u32).div_ceil(TILE), (desc.m as u32).div_ceil(TILE), desc.batch as u32);
        Ok(GemmPlan { bound, grid, _uniform: uniform, desc })
    }

    /// The problem.
    pub fn desc(&self) -> &GemmDesc {
        &self.desc
    }

    /// Records the dispatch; returns the number of dispatches (0 for an empty C).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> usize {
        let Some(bound) = &self.bound else { return 0 };
        if self.grid.0 > 65_535 || self.grid.1 > 65_535 {
            // Checked in `new` through the tensor-size limits long before this could happen.
            log::error!("gemm grid {:?} exceeds 65,535", self.grid);
        }
        bound.record_3d(encoder, self.grid)
    }
}

/// Runs one GEMM now (records, submits); convenience for tests and one-off products.
///
/// ```
/// use gpuopt::kernels::gemm::{gemm, GemmDesc};
/// # let ctx = gpuopt::Context::new()?;
/// let a = gpuopt::Tensor::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// let c = gpuopt::Tensor::zeros(&ctx, &[2, 2])?;
/// gemm(&ctx, GemmDesc { trans_b: true, ..GemmDesc::new(2, 2, 2) }, &a, &a, &c)?; // C = A·Aᵀ
/// assert_eq!(c.to_vec(&ctx)?, vec![5.0, 11.0, 11.0, 25.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn gemm(ctx: &Context, desc: GemmDesc, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    let plan = GemmPlan::new(ctx, desc, a, b, c)?;
    let mut enc = ctx.encoder("gemm");
    ctx.scoped("gemm", || plan.record(&mut enc))?;
    ctx.submit(enc);
    Ok(())
}

/// The FMA-throughput kernel: `invocations` invocations of `iters` iterations.
pub struct FmaPeak {
    bound: BoundKernel,
    workgroups: u32,
    _buffers: [wgpu::Buffer; 2],
    /// FLOPs per dispatch.
    pub flops: f64,
}

impl FmaPeak {
    /// Binds the kernel for `workgroups` × 256 invocations of `iters` iterations.
    pub fn new(ctx: &Context, workgroups: u32, iters: u32) -> Result<Self> {
        let uniform = ctx.uniform_buffer("fma params", 16);
        ctx.queue().write_buffer(&uniform, 0, bytemuck::cast_slice(&[iters, 0u32, 0, 0]));
        let out = ctx.storage_buffer("fma out", 16 * 256 * workgroups as u64)?;
        let bound = ctx.bind(&FMA_PEAK, &[&uniform, &out])?;
        let flops = workgroups as f64 * 256.0 * iters as f64 * 8.0 * 4.0 * 2.0;
        Ok(FmaPeak { bound, workgroups, _buffers: [uniform, out], flops })
    }

    /// Records one dispatch.
    pub fn record(&self, ctx: &Context, encoder: &mut wgpu::CommandEncoder) {
        self.bound.record(ctx, encoder, self.workgroups);
    }
}
