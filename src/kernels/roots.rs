//! `shaders/roots.wgsl` and [`GpuMats`], the GPU backend of [`crate::roots::MatOps`]: every operation
//! records its dispatches into one pending compute pass (ended only for a buffer copy), whose encoder
//! is submitted only when a value is read back (or data must be written in order). CPU twin: `reference::roots::CpuMats`.

use super::gemm::{GemmDesc, GemmPlan};
use super::newton_schulz::{chunk_grid, FrobeniusPlan};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::roots::{
    check_copy_batch, check_copy_window, check_grow, check_reshape, check_same_size, Mat, MatOps, Scale,
};
use bytemuck::{Pod, Zeroable};
use std::any::Any;
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// out ← α·s·x + β·out + γ·I.
pub const AFFINE: KernelSpec =
    KernelSpec { module: "roots", entry: "affine", bindings: &[(0, U), (1, R), (2, R), (3, W), (8, R)] };
/// acc ← decay·acc + weight·g²;  out ← g/(sqrt(acc) + eps).
pub const GRAFT: KernelSpec =
    KernelSpec { module: "roots", entry: "graft", bindings: &[(0, U), (1, R), (3, W), (9, W)] };
/// out ← sign(x).
pub const SIGN: KernelSpec = KernelSpec { module: "roots", entry: "sign_of", bindings: &[(0, U), (1, R), (3, W)] };
/// out\[z\] ← x\[z\]ᵀ.
pub const TRANSPOSE: KernelSpec =
    KernelSpec { module: "roots", entry: "transpose_of", bindings: &[(0, U), (1, R), (3, W)] };
/// Copies an h×w window between row-major matrices with their own leading dimensions and offsets.
pub const COPY_REGION: KernelSpec =
    KernelSpec { module: "roots", entry: "copy_region", bindings: &[(0, U), (1, R), (3, W)] };
/// Partial max|x − I| per chunk.
pub const MAXDEV_PARTIAL: KernelSpec =
    KernelSpec { module: "roots", entry: "maxdev_partial", bindings: &[(0, U), (1, R), (7, W)] };
/// max|x − I| per matrix from the partials.
pub const MAXDEV_FINAL: KernelSpec =
    KernelSpec { module: "roots", entry: "maxdev_final", bindings: &[(0, U), (3, W), (7, W)] };
/// Gauss–Jordan pivot search, row swap and scaling for one column.
pub const GJ_PIVOT: KernelSpec =
    KernelSpec { module: "roots", entry: "gj_pivot", bindings: &[(0, U), (4, W), (5, W), (6, W)] };
/// Gauss–Jordan elimination of one column.
pub const GJ_ELIMINATE: KernelSpec =
    KernelSpec { module: "roots", entry: "gj_eliminate", bindings: &[(0, U), (4, W), (5, W), (6, W)] };
/// The inverse of small diagonal blocks of SPD matrices, one workgroup each.
pub const SPD_BLOCK_INVERSE: KernelSpec =
    KernelSpec { module: "roots", entry: "spd_block_inverse", bindings: &[(0, U), (1, R), (3, W), (7, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[
    AFFINE,
    MAXDEV_PARTIAL,
    MAXDEV_FINAL,
    GJ_PIVOT,
    GJ_ELIMINATE,
    GRAFT,
    SIGN,
    TRANSPOSE,
    COPY_REGION,
    SPD_BLOCK_INVERSE,
];

/// The largest block `spd_block_inverse` inverts (its workgroup array is 32 × 64).
pub const SPD_BLOCK: usize = 32;

const CHUNK: usize = 4096;

/// Uniform of `shaders/roots.wgsl`. Keep in sync with `struct RootParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct RootParams {
    rows: u32,
    cols: u32,
    batch: u32,
    mode: u32,
    alpha: f32,
    beta: f32,
    gamma: f32,
    power: f32,
    col: u32,
    rhs: u32,
    chunks: u32,
    eps: f32,
    src_ld: u32,
    src_off: u32,
    dst_ld: u32,
    dst_off: u32,
}
const _: () = assert!(std::mem::size_of::<RootParams>() == 64);

/// The GPU backend of [`MatOps`]: batches of matrices as [`Tensor`]s, operations recorded lazily.
///
/// ```
/// use gpuopt::kernels::roots::GpuMats;
/// use gpuopt::roots::{inv_sqrt, MatOps, SqrtMethod};
/// # let ctx = gpuopt::Context::new()?;
/// let mut ops = GpuMats::new(&ctx)?;
/// // Two SPD matrices in one batch: one chain of dispatches for both.
/// let a = ops.upload(&[4.0, 0.0, 0.0, 1.0, 9.0, 0.0, 0.0, 16.0], 2, 2, 2)?;
/// let z = inv_sqrt(&mut ops, a, SqrtMethod::NewtonSchulz { iters: 30, tol: None })?;
/// let v = ops.read(z)?;
/// assert!((v[0] - 0.5).abs() < 1e-5 && (v[7] - 0.25).abs() < 1e-5);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub struct GpuMats {
    ctx: Context,
    mats: Vec<(Tensor, (usize, usize, usize))>,
    /// The compute pass open on `enc`: consecutive operations share it (ended before a copy).
    /// Declared before `enc`, so that it is dropped (ended) first.
    pass: Option<wgpu::ComputePass<'static>>,
    enc: Option<wgpu::CommandEncoder>,
    keep: Vec<Box<dyn Any>>,
    dispatches: usize,
    copies: usize,
}

impl GpuMats {
    /// One `copy_region` dispatch over a box of `size` = [matrices, rows, cols]: matrix z of the box
    /// reads `src` from z·src_stride + src_off (stride 0 broadcasts one matrix) and writes `dst` from
    /// z·(dst's matrix size) + dst_off, rows at each one's own leading dimension.
    fn copy_box(
        &mut self,
        dst: Mat,
        dst_off: usize,
        src: Mat,
        src_off: usize,
        src_stride: usize,
        size: [usize; 3],
    ) -> Result<()> {
        let ((_, dr, dl), (_, _, sl)) = (self.shape(dst), self.shape(src));
        let u = self.uniform(RootParams {
            rows: size[1] as u32,
            cols: size[2] as u32,
            batch: size[0] as u32,
            col: src_stride as u32,
            rhs: (dr * dl) as u32,
            src_ld: sl as u32,
            src_off: src_off as u32,
            dst_ld: dl as u32,
            dst_off: dst_off as u32,
            ..Default::default()
        });
        let bound = self.ctx.bind(&COPY_REGION, &[&u, self.buf(src), self.buf(dst)])?;
        let grid = (size[2].div_ceil(16) as u32, size[1].div_ceil(16) as u32, size[0] as u32);
        self.dispatches += bound.record_3d(self.pass(), grid);
        self.keep.push(Box::new((u, bound)));
        Ok(())
    }

    /// A backend on `ctx`.
    pub fn new(ctx: &Context) -> Result<Self> {
        Ok(GpuMats {
            ctx: ctx.clone(),
            mats: Vec::new(),
            enc: None,
            pass: None,
            keep: Vec::new(),
            dispatches: 0,
            copies: 0,
        })
    }

    /// Takes ownership of a [b, rows, cols] (or [rows, cols]) tensor.
    pub fn adopt(&mut self, t: Tensor) -> Result<Mat> {
        let dims = match *t.shape() {
            [r, c] => (1, r, c),
            [b, r, c] => (b, r, c),
            _ => {
                return Err(Error::Shape {
                    what: "matrix batch (expected [n, n] or [b, n, n])".into(),
                    expected: vec![0, 0],
                    got: t.shape().to_vec(),
                })
            }
        };
        self.mats.push((t, dims));
        Ok(Mat(self.mats.len() - 1))
    }

    /// The tensor behind a handle (valid once [`GpuMats::flush`] has run the recorded work).
    pub fn tensor(&self, m: Mat) -> &Tensor {
        &self.mats[m.0].0
    }

    /// Submits the recorded work.
    pub fn flush(&mut self) {
        if let Some(enc) = self.take_encoder() {
            self.ctx.submit(enc);
        }
        self.keep.clear();
    }

    /// The pending encoder, its pass ended, ready to submit.
    fn take_encoder(&mut self) -> Option<wgpu::CommandEncoder> {
        self.pass = None;
        self.enc.take()
    }

    /// Dispatches recorded so far (a test and benchmark hook).
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// Buffer copies recorded so far (`copy_batch` and `grow`; a test hook).
    pub fn copies(&self) -> usize {
        self.copies
    }

    fn buf(&self, m: Mat) -> &wgpu::Buffer {
        self.mats[m.0].0.buffer()
    }

    fn uniform(&mut self, p: RootParams) -> wgpu::Buffer {
        let u = self.ctx.uniform_buffer("roots params", 64);
        self.ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&p));
        u
    }

    /// One dispatch of an elementwise kernel: its uniform `p`, then `mats` bound in order (None: the
    /// context's unused binding), `count` invocations per matrix (WORKGROUP_SIZE per workgroup, over a
    /// 2-D grid) and `batch` matrices along z.
    fn dispatch(
        &mut self,
        spec: &KernelSpec,
        p: RootParams,
        mats: &[Option<Mat>],
        count: usize,
        batch: usize,
    ) -> Result<()> {
        let u = self.uniform(p);
        let bound = {
            let mut buffers = vec![&u];
            buffers.extend(mats.iter().map(|m| m.map_or(self.ctx.unused_binding(), |m| self.buf(m))));
            self.ctx.bind(spec, &buffers)?
        };
        let (gx, gy) = self.ctx.grid((count as u32).div_ceil(WORKGROUP_SIZE));
        self.dispatches += bound.record_3d(self.pass(), (gx, gy, batch as u32));
        self.keep.push(Box::new((u, bound)));
        Ok(())
    }

    /// The pending compute pass (opened on the pending encoder when there is none).
    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let (ctx, enc) = (&self.ctx, &mut self.enc);
        self.pass.get_or_insert_with(|| {
            crate::gpu::compute_pass(enc.get_or_insert_with(|| ctx.encoder("roots")), "roots").forget_lifetime()
        })
    }
}

/// Records a copy of `bytes` bytes from (buffer, offset) `src` to `dst` into the pending encoder
/// `enc`, ending the open `pass` first (a copy cannot be recorded inside one). A free function over
/// GpuMats' fields, so that `src` and `dst` may be borrowed from its matrices.
fn record_copy(
    ctx: &Context,
    (enc, pass): (&mut Option<wgpu::CommandEncoder>, &mut Option<wgpu::ComputePass<'static>>),
    (src, src_at): (&wgpu::Buffer, u64),
    (dst, dst_at): (&wgpu::Buffer, u64),
    bytes: u64,
) {
    *pass = None;
    enc.get_or_insert_with(|| ctx.encoder("roots")).copy_buffer_to_buffer(src, src_at, dst, dst_at, Some(bytes));
}

impl MatOps for GpuMats {
    fn alloc(&mut self, batch: usize, rows: usize, cols: usize) -> Result<Mat> {
        let t = Tensor::zeros(&self.ctx, &[batch, rows, cols])?;
        self.adopt(t)
    }

    fn upload(&mut self, data: &[f32], batch: usize, rows: usize, cols: usize) -> Result<Mat> {
        // A new buffer: its staged write lands before the pending work runs, which never reads it earlier.
        let t = Tensor::from_slice(&self.ctx, data, &[batch, rows, cols])?;
        self.adopt(t)
    }

    fn shape(&self, m: Mat) -> (usize, usize, usize) {
        self.mats[m.0].1
    }

    fn gemm(&mut self, desc: GemmDesc, a: Mat, b: Mat, c: Mat, addend: Option<Mat>) -> Result<()> {
        let plan = {
            let t = |m: Mat| &self.mats[m.0].0;
            match addend {
                // The addend is C itself: the plain plan reads C (binding it twice would conflict).
                Some(d) if d == c => GemmPlan::new(&self.ctx, desc, t(a), t(b), t(c))?,
                Some(d) => GemmPlan::with_addend(&self.ctx, desc, t(a), t(b), t(c), t(d))?,
                None => GemmPlan::new(&self.ctx, desc, t(a), t(b), t(c))?,
            }
        };
        self.dispatches += plan.record(self.pass());
        self.keep.push(Box::new(plan));
        Ok(())
    }

    fn affine(&mut self, out: Mat, x: Option<Mat>, alpha: f32, scale: Scale, beta: f32, gamma: f32) -> Result<()> {
        let (batch, rows, cols) = self.shape(out);
        if let Some(x) = x {
            if self.shape(x) != (batch, rows, cols) {
                return Err(Error::Shape {
                    what: "affine x".into(),
                    expected: vec![batch, rows, cols],
                    got: vec![self.shape(x).0, self.shape(x).1, self.shape(x).2],
                });
            }
        }
        let (mode, power, scales, den) = match scale {
            Scale::One => (0, 0.0, None, None),
            Scale::Pow(s, p) => (1, p, Some(s), None),
            Scale::Mask(s) => (2, 0.0, Some(s), None),
            Scale::Ratio(s, d) => (3, 0.0, Some(s), Some(d)),
            Scale::Finite(s) => (4, 0.0, Some(s), None),
            Scale::Clip(s, limit) => (5, limit, Some(s), None),
        };
        let alpha = if x.is_some() { alpha } else { 0.0 };
        let p = RootParams {
            rows: rows as u32,
            cols: cols as u32,
            batch: batch as u32,
            mode,
            alpha,
            beta,
            gamma,
            power,
            ..Default::default()
        };
        self.dispatch(&AFFINE, p, &[x, scales, Some(out), den], rows * cols, batch)
    }

    fn frobenius(&mut self, x: Mat, out: Mat) -> Result<()> {
        let batch = self.shape(x).0;
        let plan = FrobeniusPlan::new(&self.ctx, self.tensor(x), None, batch, self.tensor(out))?;
        self.dispatches += plan.record(self.pass());
        self.keep.push(Box::new(plan));
        Ok(())
    }

    fn max_dev(&mut self, x: Mat, out: Mat) -> Result<()> {
        let (batch, rows, cols) = self.shape(x);
        let chunks = (rows * cols).div_ceil(CHUNK).max(1);
        let u = self.uniform(RootParams {
            rows: rows as u32,
            cols: cols as u32,
            batch: batch as u32,
            chunks: chunks as u32,
            ..Default::default()
        });
        let partials = self.ctx.storage_buffer("maxdev partials", 4 * (chunks * batch) as u64)?;
        let first = self.ctx.bind(&MAXDEV_PARTIAL, &[&u, self.buf(x), &partials])?;
        let second = self.ctx.bind(&MAXDEV_FINAL, &[&u, self.buf(out), &partials])?;
        let grid = chunk_grid(&self.ctx, chunks, batch);
        let pass = self.pass();
        self.dispatches += first.record_3d(pass, grid) + second.record_3d(pass, (batch as u32, 1, 1));
        self.keep.push(Box::new((u, partials, first, second)));
        Ok(())
    }

    fn solve(&mut self, m: Mat, rhs: Mat, status: Mat) -> Result<()> {
        let (batch, n, n2) = self.shape(m);
        let (rb, rn, k) = self.shape(rhs);
        if n != n2 || rb != batch || rn != n || self.shape(status).0 != batch {
            return Err(Error::Shape {
                what: "solve (m [b, n, n], rhs [b, n, k], status [b])".into(),
                expected: vec![batch, n, n],
                got: vec![rb, rn, k],
            });
        }
        // factors[z·n + i]: the column's elimination factors; factors[b·n + z]: the singular flag.
        let factors = self.ctx.storage_buffer("gauss-jordan factors", 4 * (batch * n + batch) as u64)?;
        let grid = ((n + k).div_ceil(16) as u32, n.div_ceil(16) as u32, batch as u32);
        for j in 0..n {
            let u = self.uniform(RootParams {
                rows: n as u32,
                cols: n as u32,
                batch: batch as u32,
                col: j as u32,
                rhs: k as u32,
                ..Default::default()
            });
            let buffers = [&u, self.buf(m), self.buf(rhs), &factors];
            let pivot = self.ctx.bind(&GJ_PIVOT, &buffers)?;
            let eliminate = self.ctx.bind(&GJ_ELIMINATE, &buffers)?;
            // Columns before j are finished: the elimination grid starts at column j.
            let cols_left = (n - j + k).div_ceil(16) as u32;
            let pass = self.pass();
            self.dispatches += pivot.record_3d(pass, (batch as u32, 1, 1))
                + eliminate.record_3d(pass, (cols_left.min(grid.0), grid.1, grid.2));
            self.keep.push(Box::new((u, pivot, eliminate)));
        }
        let status = self.mats[status.0].0.buffer();
        let pending = (&mut self.enc, &mut self.pass);
        record_copy(&self.ctx, pending, (&factors, 4 * (batch * n) as u64), (status, 0), 4 * batch as u64);
        self.keep.push(Box::new(factors));
        Ok(())
    }

    fn graft(&mut self, acc: Mat, g: Mat, out: Mat, decay: f32, weight: f32, eps: f32) -> Result<()> {
        let (b, r, c) = self.shape(g);
        let p = RootParams {
            rows: r as u32,
            cols: c as u32,
            batch: b as u32,
            alpha: weight,
            beta: decay,
            eps,
            ..Default::default()
        };
        self.dispatch(&GRAFT, p, &[Some(g), Some(out), Some(acc)], b * r * c, 1)
    }

    fn sign(&mut self, x: Mat, out: Mat) -> Result<()> {
        check_same_size(self, x, out, "sign")?;
        let (b, r, c) = self.shape(x);
        let p = RootParams { rows: r as u32, cols: c as u32, batch: b as u32, ..Default::default() };
        self.dispatch(&SIGN, p, &[Some(x), Some(out)], b * r * c, 1)
    }

    fn transpose(&mut self, x: Mat, out: Mat) -> Result<()> {
        let (b, r, c) = crate::roots::check_transpose(self, x, out)?;
        let p = RootParams { rows: r as u32, cols: c as u32, batch: b as u32, ..Default::default() };
        self.dispatch(&TRANSPOSE, p, &[Some(x), Some(out)], r * c, b)
    }

    fn copy_region(
        &mut self,
        dst: Mat,
        dst_at: (usize, usize),
        src: Mat,
        src_at: (usize, usize),
        h: usize,
        w: usize,
    ) -> Result<()> {
        let ((db, _, dl), (sb, sr, sl)) = (self.shape(dst), self.shape(src));
        // One source matrix is broadcast (stride 0) to every destination matrix.
        let src_stride = if sb == 1 { 0 } else { sr * sl };
        self.copy_box(dst, dst_at.0 * dl + dst_at.1, src, src_at.0 * sl + src_at.1, src_stride, [db, h, w])
    }

    fn copy_window(
        &mut self,
        dst: Mat,
        dst_at: [usize; 3],
        src: Mat,
        src_at: [usize; 3],
        size: [usize; 3],
    ) -> Result<()> {
        if check_copy_window(self, (dst, dst_at), (src, src_at), size)? {
            return Ok(());
        }
        let ((_, dr, dl), (_, sr, sl)) = (self.shape(dst), self.shape(src));
        let offset = |at: [usize; 3], r: usize, l: usize| at[0] * r * l + at[1] * l + at[2];
        self.copy_box(dst, offset(dst_at, dr, dl), src, offset(src_at, sr, sl), sr * sl, size)
    }

    fn reshape(&mut self, m: Mat, batch: usize, rows: usize, cols: usize) -> Result<()> {
        check_reshape(self, m, (batch, rows, cols))?;
        self.mats[m.0].1 = (batch, rows, cols);
        Ok(())
    }

    fn invert_spd_blocks(&mut self, d: Mat, out: Mat, status: Mat) -> Result<()> {
        let (b, h, _) = self.shape(d);
        if h > SPD_BLOCK {
            return Err(Error::Invalid(format!("invert_spd_blocks takes blocks of at most {SPD_BLOCK}, got {h}")));
        }
        let u = self.uniform(RootParams { rows: h as u32, cols: h as u32, batch: b as u32, ..Default::default() });
        let bound = self.ctx.bind(&SPD_BLOCK_INVERSE, &[&u, self.buf(d), self.buf(out), self.buf(status)])?;
        self.dispatches += bound.record_3d(self.pass(), (b as u32, 1, 1));
        self.keep.push(Box::new((u, bound)));
        Ok(())
    }

    fn fill_uniform(&mut self, out: Mat, seed: u64) -> Result<()> {
        // `fill` submits on its own: run what is pending first so the order holds.
        self.flush();
        super::random::fill(&self.ctx, self.tensor(out), super::random::Draw::Uniform, seed, 0, 0, 0)
    }

    fn submit(&mut self) {
        self.flush();
    }

    fn copy_batch(&mut self, dst: Mat, dst_z: usize, src: Mat, src_z: usize, count: usize) -> Result<()> {
        let bytes = 4 * check_copy_batch(self, (dst, dst_z), (src, src_z), count)? as u64;
        if bytes * count as u64 > 0 {
            let (s, d) = (self.mats[src.0].0.buffer(), self.mats[dst.0].0.buffer());
            let pending = (&mut self.enc, &mut self.pass);
            record_copy(&self.ctx, pending, (s, src_z as u64 * bytes), (d, dst_z as u64 * bytes), count as u64 * bytes);
            self.copies += 1;
        }
        Ok(())
    }

    fn grow(&mut self, mats: &[Mat], batch: usize) -> Result<()> {
        check_grow(self, mats, batch)?;
        let short: Vec<Mat> = mats.iter().copied().filter(|&m| self.shape(m).0 < batch).collect();
        // Every new buffer first, so a failure changes nothing.
        let new = short
            .iter()
            .map(|&m| {
                let (_, r, c) = self.shape(m);
                Tensor::zeros(&self.ctx, &[batch, r, c])
            })
            .collect::<Result<Vec<Tensor>>>()?;
        for (m, t) in short.into_iter().zip(new) {
            let (b, r, c) = self.shape(m);
            let bytes = 4 * (b * r * c) as u64;
            if bytes > 0 {
                let pending = (&mut self.enc, &mut self.pass);
                record_copy(&self.ctx, pending, (self.mats[m.0].0.buffer(), 0), (t.buffer(), 0), bytes);
                self.copies += 1;
            }
            // Recorded work may still use the old buffer: keep it alive until the next submit.
            let (old, _) = std::mem::replace(&mut self.mats[m.0], (t, (batch, r, c)));
            self.keep.push(Box::new(old));
        }
        Ok(())
    }

    fn max_elements(&self) -> usize {
        (self.ctx.max_binding_bytes() / 4) as usize
    }

    fn max_batch(&self) -> usize {
        self.ctx.max_workgroups_per_dim() as usize
    }

    fn mark(&self) -> usize {
        self.mats.len()
    }

    fn release(&mut self, mark: usize) {
        // Recorded work may still use them: keep the buffers alive until the next submit.
        let gone: Vec<Tensor> = self.mats.drain(mark.min(self.mats.len())..).map(|(t, _)| t).collect();
        self.keep.push(Box::new(gone));
    }

    fn read(&mut self, m: Mat) -> Result<Vec<f32>> {
        let enc = self.take_encoder();
        let keep = std::mem::take(&mut self.keep);
        self.ctx.scoped("matrix roots", || {
            if let Some(enc) = enc {
                self.ctx.submit(enc);
            }
        })?;
        drop(keep);
        self.tensor(m).to_vec(&self.ctx)
    }
}
