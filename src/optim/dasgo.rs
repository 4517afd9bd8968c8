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
//! Four or five passes per parameter on the GPU (`shaders/dasgo.wgsl`: column sums over bands of
//! rows where a matrix has too few columns to fill a GPU (see [`column_bands`]), column statistics,
//! momentum with the partial sums of ‖U‖², the norm, the update; nothing read back), or the CPU twin
//! ([`crate::reference::dasgo`]) through the same [`Stepper`]. Defaults are the reference's
//! (`dasgo(learning_rate=1e-3, momentum=0.9, weight_decay=0.1, beta2=0.95, eps=1e-8)`); the
//! differences from it are ASGO's ([`super::asgo`]): `+ 1e-16` in the scaling (a zero update takes
//! no step), rank > 2 viewed as shape\[0\] × rest, vectors refused, NaN/Inf gradients skip the step.
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

use super::{check_config_snapshot, config_snapshot, read_params_and_states, update_config};
use super::{f32_step, matrix_param, meta_at, GroupId, HostGuard, ParamId, ParamMeta, Snapshot, Stepper};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::reference::dasgo::dasgo_step;
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

const fn spec(entry: &'static str, bindings: &'static [(u32, Binding)]) -> KernelSpec {
    KernelSpec { module: "dasgo", entry, bindings }
}
/// Each band's column sums of G².
pub const DASGO_COLSUM: KernelSpec = spec("dasgo_colsum", &[(0, U), (1, R), (8, W)]);
/// Column statistics d and their factors r = (d + eps)^(−1/2).
pub const DASGO_COLS: KernelSpec = spec("dasgo_cols", &[(0, U), (1, R), (2, W), (7, W), (8, W)]);
/// Momentum and the partial sums of ‖U‖².
pub const DASGO_PARTIAL: KernelSpec = spec("dasgo_partial", &[(0, U), (1, R), (3, W), (4, W), (7, W)]);
/// ‖U‖_F.
pub const DASGO_NORM: KernelSpec = spec("dasgo_norm", &[(0, U), (4, W), (5, W)]);
/// The update.
pub const DASGO_APPLY: KernelSpec = spec("dasgo_apply", &[(0, U), (3, W), (5, W), (6, W), (7, W)]);
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[DASGO_COLSUM, DASGO_COLS, DASGO_PARTIAL, DASGO_NORM, DASGO_APPLY];
const CHUNK: usize = 4096;

/// The invocations the column sums aim for: enough to fill a large GPU (an H200 holds about 270,000
/// threads in flight; a quarter of that hides memory latency well), few enough that the bands'
/// partial sums stay a small fraction of G's bytes.
const COLUMN_INVOCATIONS: usize = 1 << 16;
/// The fewest rows a band sums (below, the partial sums would cost more traffic than they save).
const MIN_BAND_ROWS: usize = 32;

/// (bands, rows per band) of a rows × cols parameter's column sums: one band where the columns alone
/// reach 65,536 invocations (or there are fewer than 2·32 rows), else enough bands of at least 32
/// rows to reach that. No band is empty; the last may be short.
pub fn column_bands(rows: usize, cols: usize) -> (usize, usize) {
    let bands = COLUMN_INVOCATIONS.div_ceil(cols.max(1)).min(rows / MIN_BAND_ROWS).max(1);
    let band_rows = rows.div_ceil(bands).max(1);
    (rows.div_ceil(band_rows).max(1), band_rows)
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
        if !(self.eps as f32).is_finite() || self.eps as f32 <= 0.0 {
            return bad("eps", self.eps, "must be finite and > 0 (a column of zero gradients would divide 0 by 0)");
        }
        Ok(())
    }

    /// The uniform for a rows × cols parameter (an error when its f32 factors overflow).
    pub fn params(&self, rows: usize, cols: usize) -> Result<DasgoParams> {
        let (step, decay) = f32_step(self.lr, self.weight_decay, 0.2 * ((rows * cols) as f64).sqrt())?;
        let (bands, band_rows) = column_bands(rows, cols);
        Ok(DasgoParams {
            rows: rows as u32,
            cols: cols as u32,
            chunks: (rows * cols).div_ceil(CHUNK).max(1) as u32,
            wrap: (256 % cols) as u32,
            omb: (1.0 - self.beta2) as f32,
            omm: (1.0 - self.momentum) as f32,
            eps: self.eps as f32,
            decay,
            step,
            bands: bands as u32,
            band_rows: band_rows as u32,
            _p: 0,
        })
    }
}

/// Uniform of `shaders/dasgo.wgsl`. Keep in sync with `struct DasgoParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DasgoParams {
    /// Rows of the matrix view.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Partial-sum workgroups (4096 elements each; also the update's).
    pub chunks: u32,
    /// 256 mod cols: how far an invocation's column advances per element it walks.
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
    /// Padding.
    pub _p: u32,
}
const _: () = assert!(std::mem::size_of::<DasgoParams>() == 48);

/// The state names of a parameter (checkpoints, [`Stepper::read_state`]).
const STATES: [&str; 2] = ["momentum", "precond"];

/// A parameter's tensors on the GPU and its four bound passes.
struct Chain {
    p: Tensor,
    g: Tensor,
    d: Tensor,
    m: Tensor,
    kernels: [BoundKernel; 5],
    uniform: wgpu::Buffer,
    _partials: wgpu::Buffer,
    _colpart: wgpu::Buffer,
    _scal: Tensor,
    _r: Tensor,
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

enum Slot {
    Gpu(Box<Chain>),
    Cpu(Host),
}

/// DASGO on the GPU ([`Dasgo::gpu`]) or its CPU twin ([`Dasgo::cpu`]); steps through [`Stepper`].
pub struct Dasgo {
    ctx: Option<Context>,
    cfg: DasgoConfig,
    metas: Vec<ParamMeta>,
    slots: Vec<Slot>,
    t: u64,
    guard: HostGuard,
}

impl Dasgo {
    /// DASGO on the GPU.
    pub fn gpu(ctx: &Context, cfg: DasgoConfig) -> Result<Self> {
        Self::new(Some(ctx.clone()), cfg)
    }

    /// DASGO's CPU twin.
    pub fn cpu(cfg: DasgoConfig) -> Result<Self> {
        Self::new(None, cfg)
    }

    fn new(ctx: Option<Context>, cfg: DasgoConfig) -> Result<Self> {
        cfg.validate()?;
        let (metas, slots) = (Vec::new(), Vec::new());
        Ok(Dasgo { ctx, cfg, metas, slots, t: 0, guard: HostGuard::default() })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DasgoConfig {
        &self.cfg
    }

    /// Adds a matrix parameter (rank ≥ 2, viewed as shape\[0\] × rest) under a unique name.
    pub fn add_param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let (rows, cols) = matrix_param("dasgo", &self.metas, name, data, shape)?;
        let n = rows * cols;
        let slot = match &self.ctx {
            None => Slot::Cpu(Host { p: data.to_vec(), g: vec![0.0; n], d: vec![0.0; cols], m: vec![0.0; n] }),
            Some(ctx) => {
                let p = Tensor::from_slice(ctx, data, &[rows, cols])?;
                let (g, m, d) = (
                    Tensor::zeros(ctx, &[rows, cols])?,
                    Tensor::zeros(ctx, &[rows, cols])?,
                    Tensor::zeros(ctx, &[cols])?,
                );
                let (scal, r) = (Tensor::zeros(ctx, &[4])?, Tensor::zeros(ctx, &[cols])?);
                let uniform = ctx.uniform_buffer("dasgo params", 48);
                let partials = ctx.storage_buffer("dasgo partials", 8 * n.div_ceil(CHUNK) as u64)?;
                let bands = column_bands(rows, cols).0;
                // Unused (a stub) with one band.
                let colpart =
                    ctx.storage_buffer("dasgo column sums", 4 * if bands > 1 { bands * cols } else { 1 } as u64)?;
                let (u, gb, db, mb, pb, sb, xb, rb) =
                    (&uniform, g.buffer(), d.buffer(), m.buffer(), &partials, scal.buffer(), p.buffer(), r.buffer());
                let kernels = [
                    ctx.bind(&DASGO_COLSUM, &[u, gb, &colpart])?,
                    ctx.bind(&DASGO_COLS, &[u, gb, db, rb, &colpart])?,
                    ctx.bind(&DASGO_PARTIAL, &[u, gb, mb, pb, rb])?,
                    ctx.bind(&DASGO_NORM, &[u, pb, sb])?,
                    ctx.bind(&DASGO_APPLY, &[u, mb, sb, xb, rb])?,
                ];
                let (_partials, _colpart, _scal, _r) = (partials, colpart, scal, r);
                Slot::Gpu(Box::new(Chain { p, g, d, m, kernels, uniform, _partials, _colpart, _scal, _r }))
            }
        };
        self.slots.push(slot);
        self.guard.add_param();
        self.metas.push(ParamMeta { name: name.into(), shape: shape.to_vec(), group: 0 });
        Ok(ParamId(self.slots.len() - 1))
    }

    /// The uniforms of the config in force, one per parameter (an error when lr overflows f32).
    pub fn uniforms(&self) -> Result<Vec<DasgoParams>> {
        self.metas.iter().map(|m| self.cfg.params(m.shape[0], m.len() / m.shape[0])).collect()
    }

    /// GPU: writes the parameters' uniforms (from [`Dasgo::uniforms`]) for the passes recorded next.
    pub fn write_uniforms(&self, hs: &[DasgoParams]) {
        if let Some(ctx) = &self.ctx {
            for (slot, h) in self.slots.iter().zip(hs) {
                if let Slot::Gpu(c) = slot {
                    ctx.queue().write_buffer(&c.uniform, 0, bytemuck::bytes_of(h));
                }
            }
        }
    }

    /// GPU: records one step's four or five passes per parameter into `enc`, with the uniforms last written;
    /// no guard, no count (what [`Stepper::step`] submits, and what the benchmark times).
    pub fn record_step(&self, enc: &mut wgpu::CommandEncoder) {
        let Some(ctx) = &self.ctx else { return };
        for slot in &self.slots {
            if let Slot::Gpu(c) = slot {
                let (rows, cols) = (c.p.shape()[0], c.p.shape()[1]);
                let [colsum, col, partial, norm, apply] = &c.kernels;
                let chunks = (rows * cols).div_ceil(CHUNK).max(1) as u32;
                let bands = column_bands(rows, cols).0;
                if bands > 1 {
                    colsum.record(ctx, enc, ((bands * cols) as u32).div_ceil(WORKGROUP_SIZE));
                }
                col.record(ctx, enc, (cols as u32).div_ceil(WORKGROUP_SIZE));
                partial.record(ctx, enc, chunks);
                norm.record_3d(enc, (1, 1, 1));
                apply.record(ctx, enc, chunks);
            }
        }
    }

    fn slot(&mut self, id: ParamId, len: Option<usize>) -> Result<&mut Slot> {
        meta_at(&self.metas, id, len)?;
        Ok(&mut self.slots[id.0])
    }

    /// Writes one of a parameter's tensors (lengths checked by the caller).
    fn write(&mut self, id: ParamId, which: Part, data: &[f32]) -> Result<()> {
        let which = which as usize;
        let ctx = self.ctx.clone();
        match self.slot(id, None)? {
            Slot::Gpu(c) => {
                let ctx = ctx.expect("a GPU slot has a context");
                [&c.p, &c.g, &c.d, &c.m][which].write(&ctx, data)
            }
            Slot::Cpu(h) => {
                [&mut h.p, &mut h.g, &mut h.d, &mut h.m][which].copy_from_slice(data);
                Ok(())
            }
        }
    }

    fn read(&mut self, id: ParamId, which: Part) -> Result<Vec<f32>> {
        let which = which as usize;
        let ctx = self.ctx.clone();
        match self.slot(id, None)? {
            Slot::Gpu(c) => [&c.p, &c.g, &c.d, &c.m][which].to_vec(&ctx.expect("a GPU slot has a context")),
            Slot::Cpu(h) => Ok([&h.p, &h.g, &h.d, &h.m][which].clone()),
        }
    }
}

impl Stepper for Dasgo {
    /// One step with the gradients written since the last one; skipped, changing nothing, when one
    /// of them held NaN or Inf.
    fn step(&mut self) -> Result<()> {
        // The uniforms first, so an lr that overflows f32 changes nothing.
        let hs = self.uniforms()?;
        if self.guard.skip_step() {
            return Ok(());
        }
        match &self.ctx {
            None => {
                for (slot, h) in self.slots.iter_mut().zip(&hs) {
                    if let Slot::Cpu(x) = slot {
                        dasgo_step(h, &mut x.p, &x.g, &mut x.d, &mut x.m);
                    }
                }
            }
            Some(ctx) => {
                self.write_uniforms(&hs);
                let mut enc = ctx.encoder("dasgo step");
                ctx.scoped("dasgo step", || self.record_step(&mut enc))?;
                ctx.submit(enc);
            }
        }
        self.t += 1;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.slot(id, Some(grad.len()))?;
        // A non-finite gradient is not written; the next step is skipped unless it is rewritten.
        if !self.guard.admit(id.0, grad) {
            return Ok(());
        }
        self.write(id, Part::Grad, grad)
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.slot(id, Some(data.len()))?;
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
