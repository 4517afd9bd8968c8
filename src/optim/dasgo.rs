//! DASGO, ASGO's diagonal variant (ALGORITHMS.md §5.7; infinity-stars/ASGO `optimizers/dasgo.py`):
//! one statistic per column instead of ASGO's r×r matrix. For a parameter viewed as rows × cols:
//!
//! ```text
//! d_j ← lerp(d_j, Σ_i G_ij², 1 − β2)            (d starts at 0)
//! M   ← lerp(M, G, 1 − momentum)
//! U   = M / sqrt(d + eps)                         (column by column)
//! p   ← (1 − lr·wd)·p − lr·0.2·sqrt(rows·cols)·U/(‖U‖_F + 1e-16)
//! ```
//!
//! On the GPU, parameters of the same matrix view are stacked (as many as one storage binding and
//! one grid dimension hold) and step as one chain of four or five passes (`shaders/dasgo.wgsl`:
//! column sums over bands of rows where a stack has too few columns to fill a GPU (see
//! [`column_bands`]), column statistics, momentum with the partial sums of ‖U‖², the norms, the
//! update; nothing read back), so a transformer's dozens of equal matrices cost five dispatches, not
//! five each. Parameters may be added after steps: one joining a stack waits on the host, with any
//! values or gradient written to it, until the next step or read, so that adding many grows each
//! stack once. The CPU twin ([`crate::reference::dasgo`]) steps each parameter alone, through the
//! same [`Stepper`]. Defaults are the reference's
//! (`dasgo(learning_rate=1e-3, momentum=0.9, weight_decay=0.1, beta2=0.95, eps=1e-8)`; the authors'
//! `dasgo.yaml` trains at learning_rate 0.01); the differences from it are ASGO's ([`super::asgo`]):
//! `+ 1e-16` in the scaling (a zero update leaves only the decay), rank > 2 viewed as shape\[0\] ×
//! rest, vectors refused, NaN/Inf gradients skip the step.
//! And `eps` must be positive: a column of zero gradients would otherwise divide 0 by 0.
//!
//! ```
//! use gpuopt::optim::{dasgo::{Dasgo, DasgoConfig}, Stepper};
//! # fn main() -> gpuopt::Result<()> {
//! let mut opt = Dasgo::cpu(DasgoConfig { weight_decay: 0.0, ..Default::default() })?; // or Dasgo::gpu(&ctx, ..)
//! let w = opt.add_param("w", &[1.0, -2.0, 3.0, 0.5, 0.0, 1.0], &[2, 3])?;
//! opt.write_grad(w, &[0.1, 0.2, -0.3, 0.4, 0.0, 0.6])?;
//! opt.step()?;
//! assert!(opt.read_param(w)?[0] < 1.0);
//! # Ok(())
//! # }
//! ```

use super::{check_config_snapshot, config_snapshot, read_at, read_params_and_states, update_config, write_at};
use super::{f32_step, matrix_param, meta_at, GroupId, HostGuard, ParamId, ParamMeta, Snapshot, Stepper, Waiting};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::kernels::newton_schulz::chunk_grid;
use crate::reference::dasgo::dasgo_step;
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

const fn spec(entry: &'static str, bindings: &'static [(u32, Binding)]) -> KernelSpec {
    KernelSpec { module: "dasgo", entry, bindings }
}
/// Each band's column sums of G² (more than one band).
pub const DASGO_COLSUM: KernelSpec = spec("dasgo_colsum", &[(0, U), (1, R), (8, W)]);
/// Column statistics d and their factors r = (d + eps)^(−1/2).
pub const DASGO_COLS: KernelSpec = spec("dasgo_cols", &[(0, U), (1, R), (2, W), (7, W), (8, W)]);
/// Momentum and the partial sums of ‖U‖².
pub const DASGO_PARTIAL: KernelSpec = spec("dasgo_partial", &[(0, U), (1, R), (3, W), (4, W), (7, W)]);
/// Each tensor's ‖U‖_F.
pub const DASGO_NORM: KernelSpec = spec("dasgo_norm", &[(0, U), (4, W), (5, W)]);
/// The update.
pub const DASGO_APPLY: KernelSpec = spec("dasgo_apply", &[(0, U), (3, W), (5, W), (6, W), (7, W)]);
/// [`DASGO_PARTIAL`] over vec4s (columns a multiple of 4).
pub const DASGO_PARTIAL4: KernelSpec = spec("dasgo_partial4", &[(0, U), (9, R), (10, W), (4, W), (12, W)]);
/// [`DASGO_APPLY`] over vec4s (columns a multiple of 4).
pub const DASGO_APPLY4: KernelSpec = spec("dasgo_apply4", &[(0, U), (10, W), (5, W), (11, W), (12, W)]);
/// [`DASGO_COLSUM`] over vec4 columns (columns a multiple of 4).
pub const DASGO_COLSUM4: KernelSpec = spec("dasgo_colsum4", &[(0, U), (9, R), (13, W)]);
/// [`DASGO_COLS`] over vec4 columns (columns a multiple of 4).
pub const DASGO_COLS4: KernelSpec = spec("dasgo_cols4", &[(0, U), (9, R), (14, W), (12, W), (13, W)]);
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[
    DASGO_COLSUM,
    DASGO_COLS,
    DASGO_PARTIAL,
    DASGO_NORM,
    DASGO_APPLY,
    DASGO_PARTIAL4,
    DASGO_APPLY4,
    DASGO_COLSUM4,
    DASGO_COLS4,
];
const CHUNK: usize = 4096;

/// The invocations the column sums aim for: enough to fill a large GPU (an H200 holds about 270,000
/// threads in flight; a quarter of that hides memory latency well), few enough that the bands'
/// partial sums stay a small fraction of G's bytes.
const COLUMN_INVOCATIONS: usize = 1 << 16;
/// The fewest rows a band sums (below, the partial sums would cost more traffic than they save).
const MIN_BAND_ROWS: usize = 32;
/// The most bands, and (through it) the most rows per band: one invocation loops over a column's
/// bands (`column_total`), another over a band's rows (`column_sum`), and llvmpipe stops a shader's
/// loops after 65,535 iterations (`AdapterSummary::loop_limit`): with both under 2^15, any matrix a
/// binding holds (2^30 floats) fits. (Up to 65,536 bands, a [2^21, 1] parameter's column sum lost
/// two bands on lavapipe, silently.)
const MAX_BANDS: usize = 1 << 15;

/// (bands, rows per band) of a rows × cols parameter's column sums: one band where a row's
/// invocations alone (one per column, or per four where cols % 4 == 0: [`vec_width`]) reach 65,536
/// (or there are fewer than 2·32 rows), else enough bands of at least 32 rows to reach that, and
/// never more than 2^15 bands nor rows per band (`MAX_BANDS`). No band is empty; the last may be short.
pub fn column_bands(rows: usize, cols: usize) -> (usize, usize) {
    let bands = COLUMN_INVOCATIONS
        .div_ceil(vec_width(cols.max(1)))
        .min(rows / MIN_BAND_ROWS)
        .min(MAX_BANDS)
        .max(rows.div_ceil(MAX_BANDS))
        .max(1);
    let band_rows = rows.div_ceil(bands).max(1);
    (rows.div_ceil(band_rows).max(1), band_rows)
}

/// The items of a row the element passes walk: vec4s where `cols` is a multiple of 4 (each vec4
/// then lies in one row), else elements.
pub fn vec_width(cols: usize) -> usize {
    if cols.is_multiple_of(4) {
        cols / 4
    } else {
        cols
    }
}

/// DASGO's hyperparameters (ALGORITHMS.md §11.1 names; `learning_rate` → `lr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DasgoConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum of the EMA M.
    pub momentum: f64,
    /// EMA coefficient of the column statistics.
    pub beta2: f64,
    /// Added to the statistics inside the square root (> 0).
    pub eps: f64,
    /// Decoupled weight decay (DW-B).
    pub weight_decay: f64,
}

impl Default for DasgoConfig {
    fn default() -> Self {
        DasgoConfig { lr: 1e-3, momentum: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

impl DasgoConfig {
    /// Rejects non-finite or out-of-range values.
    pub fn validate(&self) -> Result<()> {
        super::algorithm::check_lr_wd(self.lr, self.weight_decay)?;
        let bad = |name: &str, v: f64, reason: &str| {
            Err(Error::Hyperparameter { name: name.into(), value: v, reason: reason.into() })
        };
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum, "must lie in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "must lie in [0, 1)");
        }
        // A column of zero gradients divides by sqrt(eps).
        super::check_f32_eps("eps", self.eps)?;
        Ok(())
    }

    /// The uniform for a rows × cols parameter, a stack of one (set `count` for more; an error when
    /// its f32 factors overflow).
    pub fn params(&self, rows: usize, cols: usize) -> Result<DasgoParams> {
        let (step, decay) = f32_step(self.lr, self.weight_decay, 0.2 * ((rows * cols) as f64).sqrt())?;
        let (bands, band_rows) = column_bands(rows, cols);
        Ok(DasgoParams {
            rows: rows as u32,
            cols: cols as u32,
            chunks: (rows * cols).div_ceil(CHUNK).max(1) as u32,
            wrap: (256 % vec_width(cols)) as u32,
            omb: (1.0 - self.beta2) as f32,
            omm: (1.0 - self.momentum) as f32,
            eps: self.eps as f32,
            decay,
            step,
            bands: bands as u32,
            band_rows: band_rows as u32,
            count: 1,
        })
    }
}

/// Uniform of `shaders/dasgo.wgsl`. Keep in sync with `struct DasgoParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DasgoParams {
    /// Rows of one tensor's matrix view.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Partial-sum workgroups per tensor (4096 elements each; also the update's).
    pub chunks: u32,
    /// 256 mod [`vec_width`]: how far an invocation's column advances per element (or vec4) it walks.
    pub wrap: u32,
    /// 1 − β2.
    pub omb: f32,
    /// 1 − momentum.
    pub omm: f32,
    /// eps.
    pub eps: f32,
    /// 1 − lr·wd.
    pub decay: f32,
    /// lr·0.2·sqrt(rows·cols).
    pub step: f32,
    /// Bands of rows the column sums are split into ([`column_bands`]).
    pub bands: u32,
    /// Rows per band (the last may hold fewer).
    pub band_rows: u32,
    /// Tensors in the stack.
    pub count: u32,
}
const _: () = assert!(std::mem::size_of::<DasgoParams>() == 48);

/// The state names of a parameter (checkpoints, [`Stepper::read_state`]).
const STATES: [&str; 2] = ["momentum", "precond"];

/// A stack of same-view parameters on the GPU and its five bound passes: the tensors hold `count`
/// settled parameters; `members` counts those added since too (settled before the next step or read).
struct Chain {
    rows: usize,
    cols: usize,
    count: usize,
    members: usize,
    /// Values, gradients, statistics d, momentum, in [`Part`] order: [count·rows, cols] each, d
    /// [count·cols].
    parts: [Tensor; 4],
    kernels: [BoundKernel; 5],
    uniform: wgpu::Buffer,
    /// r \[count·cols\], the norms \[count\], the norms' partial sums, the bands' column sums.
    _scratch: (Tensor, Tensor, wgpu::Buffer, wgpu::Buffer),
}

impl Chain {
    /// A stack of `count` rows × cols parameters, all zero.
    fn zeros(ctx: &Context, (rows, cols): (usize, usize), count: usize) -> Result<Chain> {
        let parts = [
            Tensor::zeros(ctx, &[count * rows, cols])?,
            Tensor::zeros(ctx, &[count * rows, cols])?,
            Tensor::zeros(ctx, &[count * cols])?,
            Tensor::zeros(ctx, &[count * rows, cols])?,
        ];
        let (r, scal) = (Tensor::zeros(ctx, &[count * cols])?, Tensor::zeros(ctx, &[count])?);
        let uniform = ctx.uniform_buffer("dasgo params", 48);
        let partials = ctx.storage_buffer("dasgo partials", 8 * (count * (rows * cols).div_ceil(CHUNK)) as u64)?;
        let bands = column_bands(rows, cols).0;
        // Unused (a stub) with one band.
        let colpart =
            ctx.storage_buffer("dasgo column sums", 4 * if bands > 1 { bands * count * cols } else { 1 } as u64)?;
        let [xb, gb, db, mb] = parts.each_ref().map(Tensor::buffer);
        let (u, pb, sb, rb) = (&uniform, &partials, scal.buffer(), r.buffer());
        // Every pass but the norms over vec4s where each lies in one row.
        let [colsum, col, partial, apply] = if vec_width(cols) < cols {
            [&DASGO_COLSUM4, &DASGO_COLS4, &DASGO_PARTIAL4, &DASGO_APPLY4]
        } else {
            [&DASGO_COLSUM, &DASGO_COLS, &DASGO_PARTIAL, &DASGO_APPLY]
        };
        let kernels = [
            ctx.bind(colsum, &[u, gb, &colpart])?,
            ctx.bind(col, &[u, gb, db, rb, &colpart])?,
            ctx.bind(partial, &[u, gb, mb, pb, rb])?,
            ctx.bind(&DASGO_NORM, &[u, pb, sb])?,
            ctx.bind(apply, &[u, mb, sb, xb, rb])?,
        ];
        let _scratch = (r, scal, partials, colpart);
        Ok(Chain { rows, cols, count, members: count, parts, kernels, uniform, _scratch })
    }

    /// This stack with room for all its members: a new one holding the settled parameters' tensors
    /// (copied on the GPU) and zeros after them; `self` is left as it was, so an error loses nothing.
    fn grown(&self, ctx: &Context) -> Result<Chain> {
        let mut next = Chain::zeros(ctx, (self.rows, self.cols), self.members)?;
        let mut enc = ctx.encoder("dasgo stack growth");
        for (old, new) in self.parts.iter().zip(&next.parts) {
            enc.copy_buffer_to_buffer(old.buffer(), 0, new.buffer(), 0, 4 * old.len() as u64);
        }
        ctx.submit(enc);
        next.members = self.members;
        Ok(next)
    }

    /// The elements one parameter holds of `part`.
    fn len(&self, part: Part) -> usize {
        match part {
            Part::Stats => self.cols,
            _ => self.rows * self.cols,
        }
    }
}

/// A parameter on the CPU twin.
struct Host {
    p: Vec<f32>,
    g: Vec<f32>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// A parameter's tensors, in the order [`Chain`] and [`Host`] list them.
#[derive(Clone, Copy)]
enum Part {
    Values,
    Grad,
    Stats,
    Momentum,
}

/// The GPU side: the stacks, each parameter's (stack, index in it), and the parameters waiting to
/// join their stacks.
struct Stacks {
    ctx: Context,
    chains: Vec<Chain>,
    slots: Vec<(usize, usize)>,
    waiting: Vec<Waiting>,
    /// Stacks grown so far (a test hook: adding many parameters grows each stack once).
    growths: u64,
}

impl Stacks {
    /// Grows every stack with members waiting (each once), then writes their values and gradients.
    /// On an error nothing is lost: a stack that could not grow keeps its old tensors (those grown
    /// before it keep their new ones) and every waiting entry stays for the next try.
    fn settle(&mut self) -> Result<()> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        for c in &mut self.chains {
            if c.members > c.count {
                *c = c.grown(&self.ctx)?;
                self.growths += 1;
            }
        }
        for w in self.waiting.drain(..) {
            let c = &self.chains[w.stack];
            let n = c.rows * c.cols;
            write_at(&self.ctx, &c.parts[Part::Values as usize], w.z * n, &w.values);
            if let Some(grad) = &w.grad {
                write_at(&self.ctx, &c.parts[Part::Grad as usize], w.z * n, grad);
            }
        }
        Ok(())
    }
}

/// DASGO on the GPU ([`Dasgo::gpu`]) or its CPU twin ([`Dasgo::cpu`]); steps through [`Stepper`].
pub struct Dasgo {
    /// `None`: the CPU twin, stepping `hosts`.
    gpu: Option<Stacks>,
    hosts: Vec<Host>,
    cfg: DasgoConfig,
    metas: Vec<ParamMeta>,
    t: u64,
    guard: HostGuard,
}

impl Dasgo {
    /// DASGO on the GPU.
    pub fn gpu(ctx: &Context, cfg: DasgoConfig) -> Result<Self> {
        let stacks =
            Stacks { ctx: ctx.clone(), chains: Vec::new(), slots: Vec::new(), waiting: Vec::new(), growths: 0 };
        Self::new(Some(stacks), cfg)
    }

    /// DASGO's CPU twin.
    pub fn cpu(cfg: DasgoConfig) -> Result<Self> {
        Self::new(None, cfg)
    }

    fn new(gpu: Option<Stacks>, cfg: DasgoConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Dasgo { gpu, hosts: Vec::new(), cfg, metas: Vec::new(), t: 0, guard: HostGuard::default() })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DasgoConfig {
        &self.cfg
    }

    /// Adds a matrix parameter (rank ≥ 2, viewed as shape\[0\] × rest) under a unique name, stacked
    /// on the GPU with the earlier ones of its view while the stack fits one storage binding and one
    /// grid dimension's workgroups. It starts with zero momentum and statistics, also when added
    /// after steps.
    pub fn add_param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let (rows, cols) = matrix_param("dasgo", &self.metas, name, data, shape)?;
        match &mut self.gpu {
            None => {
                let n = rows * cols;
                self.hosts.push(Host { p: data.to_vec(), g: vec![0.0; n], d: vec![0.0; cols], m: vec![0.0; n] });
            }
            Some(s) => {
                let limits = super::stack_limits(&s.ctx);
                let fits = |c: &Chain| {
                    (c.rows, c.cols) == (rows, cols) && super::stack_has_room(c.members, rows * cols, 1, limits)
                };
                let slot = match s.chains.iter().rposition(fits) {
                    Some(at) => {
                        let c = &mut s.chains[at];
                        s.waiting.push(Waiting { stack: at, z: c.members, values: data.to_vec(), grad: None });
                        c.members += 1;
                        (at, c.members - 1)
                    }
                    None => {
                        let c = Chain::zeros(&s.ctx, (rows, cols), 1)?;
                        write_at(&s.ctx, &c.parts[Part::Values as usize], 0, data);
                        s.chains.push(c);
                        (s.chains.len() - 1, 0)
                    }
                };
                s.slots.push(slot);
            }
        }
        self.guard.add_param();
        self.metas.push(ParamMeta { name: name.into(), shape: shape.to_vec(), group: 0 });
        Ok(ParamId(self.metas.len() - 1))
    }

    /// The number of batched chains a GPU step runs (one per stack of same-view parameters; 0 on
    /// the CPU twin).
    pub fn chains(&self) -> usize {
        self.gpu.as_ref().map_or(0, |s| s.chains.len())
    }

    /// How many times a stack has grown to take parameters added after it was made (a test hook).
    #[doc(hidden)]
    pub fn stack_growths(&self) -> u64 {
        self.gpu.as_ref().map_or(0, |s| s.growths)
    }

    /// The uniforms of the config in force, one per stack (an error when lr overflows f32).
    fn uniforms(&self) -> Result<Vec<DasgoParams>> {
        let Some(s) = &self.gpu else { return Ok(Vec::new()) };
        let stack = |c: &Chain| Ok(DasgoParams { count: c.count as u32, ..self.cfg.params(c.rows, c.cols)? });
        s.chains.iter().map(stack).collect()
    }

    /// GPU: settles the parameters waiting to join their stacks and writes the stacks' uniforms for
    /// the passes recorded next (an error, writing no uniform, when lr overflows f32).
    pub fn prepare(&mut self) -> Result<()> {
        let Some(s) = &mut self.gpu else { return Ok(()) };
        s.settle()?;
        let hs = self.uniforms()?;
        let s = self.gpu.as_ref().expect("a GPU optimizer");
        for (c, h) in s.chains.iter().zip(&hs) {
            s.ctx.queue().write_buffer(&c.uniform, 0, bytemuck::bytes_of(h));
        }
        Ok(())
    }

    /// GPU: records one step's four or five dispatches per stack into `pass`, with the uniforms last
    /// written by [`Dasgo::prepare`]; no guard, no count (what [`Stepper::step`] submits, and what
    /// the benchmark times).
    pub fn record_step(&self, pass: &mut wgpu::ComputePass<'_>) {
        let Some(s) = &self.gpu else { return };
        for c in &s.chains {
            let n = c.count as u32;
            let [colsum, col, partial, norm, apply] = &c.kernels;
            let chunks = (c.rows * c.cols).div_ceil(CHUNK).max(1);
            let bands = column_bands(c.rows, c.cols).0 as u32;
            // Invocations per row of columns: one per column, or per four (vec4s).
            let width = vec_width(c.cols) as u32;
            if bands > 1 {
                colsum.record(&s.ctx, pass, (bands * n * width).div_ceil(WORKGROUP_SIZE));
            }
            col.record(&s.ctx, pass, (n * width).div_ceil(WORKGROUP_SIZE));
            // Chunks fold into (x, w): a tensor can have more than a dimension's workgroups.
            partial.record_3d(pass, chunk_grid(&s.ctx, chunks, c.count));
            norm.record_3d(pass, (n, 1, 1));
            apply.record_3d(pass, chunk_grid(&s.ctx, chunks, c.count));
        }
    }

    /// Checks `id` (and `len`, the element count of a write, when given).
    fn check(&self, id: ParamId, len: Option<usize>) -> Result<()> {
        meta_at(&self.metas, id, len).map(|_| ())
    }

    /// Writes one of a parameter's tensors (id and length checked by the caller): into its stack,
    /// or, while it waits for the stack, into its waiting entry (no growth now).
    fn write(&mut self, id: ParamId, which: Part, data: &[f32]) -> Result<()> {
        match &mut self.gpu {
            None => {
                let h = &mut self.hosts[id.0];
                [&mut h.p, &mut h.g, &mut h.d, &mut h.m][which as usize].copy_from_slice(data);
            }
            Some(s) => {
                let (at, z) = s.slots[id.0];
                let grad = matches!(which, Part::Grad);
                let waiting = matches!(which, Part::Values | Part::Grad);
                if !(waiting && super::write_waiting(&mut s.waiting, (at, z), data, grad)) {
                    let c = &s.chains[at];
                    write_at(&s.ctx, &c.parts[which as usize], z * c.len(which), data);
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, id: ParamId, which: Part) -> Result<Vec<f32>> {
        self.check(id, None)?;
        match &mut self.gpu {
            None => {
                let h = &self.hosts[id.0];
                Ok([&h.p, &h.g, &h.d, &h.m][which as usize].clone())
            }
            Some(s) => {
                s.settle()?;
                let (at, z) = s.slots[id.0];
                let c = &s.chains[at];
                read_at(&s.ctx, &c.parts[which as usize], z * c.len(which), c.len(which))
            }
        }
    }
}

impl Stepper for Dasgo {
    /// One step with the gradients written since the last one; skipped, changing nothing, when one
    /// of them held NaN or Inf.
    fn step(&mut self) -> Result<()> {
        // The f32 factors first, so an lr that overflows changes nothing.
        let hs = self.metas.iter().map(|m| self.cfg.params(m.shape[0], m.len() / m.shape[0]));
        let hs = hs.collect::<Result<Vec<_>>>()?;
        if self.guard.skip_step() {
            return Ok(());
        }
        if self.gpu.is_none() {
            for (x, h) in self.hosts.iter_mut().zip(&hs) {
                dasgo_step(h, &mut x.p, &x.g, &mut x.d, &mut x.m);
            }
        } else {
            self.prepare()?;
            let ctx = &self.gpu.as_ref().expect("a GPU optimizer").ctx;
            let mut enc = ctx.encoder("dasgo step");
            let mut pass = crate::gpu::compute_pass(&mut enc, "dasgo step");
            ctx.scoped("dasgo step", || self.record_step(&mut pass))?;
            drop(pass);
            ctx.submit(enc);
        }
        self.t += 1;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.check(id, Some(grad.len()))?;
        // A non-finite gradient is not written; the next step is skipped unless it is rewritten.
        if !self.guard.admit(id.0, grad) {
            return Ok(());
        }
        self.write(id, Part::Grad, grad)
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.check(id, Some(data.len()))?;
        self.write(id, Part::Values, data)
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.read(id, Part::Values)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        match state {
            "precond" => self.read(id, Part::Stats),
            "momentum" => self.read(id, Part::Momentum),
            other => Err(Error::Invalid(format!("dasgo has no state {other:?} (momentum, precond)"))),
        }
    }

    fn step_count(&mut self) -> Result<u64> {
        Ok(self.t)
    }

    fn found_non_finite(&mut self) -> Result<bool> {
        Ok(self.guard.last_skipped())
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.guard.skipped())
    }

    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        update_config(&mut self.cfg, group, |c| c.lr = lr, DasgoConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.cfg, group, |c| c.weight_decay = wd, DasgoConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let (values, states) = read_params_and_states(self, &STATES)?;
        let lr_wd = (self.cfg.lr, self.cfg.weight_decay);
        let mut s = config_snapshot("dasgo", &self.cfg, lr_wd, self.t, &self.metas, values, states);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let len = |m: &ParamMeta, state: &str| if state == "precond" { m.len() / m.shape[0] } else { m.len() };
        let (cfg, states) = check_config_snapshot(&s, "dasgo", &self.metas, &STATES, len, DasgoConfig::validate)?;
        if let Some(s) = &mut self.gpu {
            s.settle()?;
        }
        // Everything is checked: now write.
        for (i, st) in states.iter().enumerate() {
            self.write(ParamId(i), Part::Values, &s.values[i])?;
            self.write(ParamId(i), Part::Momentum, &st[0])?;
            self.write(ParamId(i), Part::Stats, &st[1])?;
        }
        self.cfg = cfg;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.metas
    }
}
