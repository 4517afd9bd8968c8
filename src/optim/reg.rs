//! REG (ALGORITHMS.md §5.6): its own formula is unconfirmed, so gpuopt implements the RACS operator
//! exactly as pytorch-optimizer's `RACS` defines it (row and column second-moment scaling of the
//! gradient, a norm-growth limiter, decoupled decay) under the replay name `reg`, and says so here
//! and in the README. Canonical names (§11.3): lr, beta2 (RACS's `beta`), alpha, gamma, eps,
//! weight_decay. Tensors are viewed as shape\[0\] × rest (1-D: n × 1), as RACS does. A gradient
//! holding NaN or Inf is not written and skips the next step for every parameter (RACS has no such
//! guard: there the NaN would enter s, q and θ for good).

use super::dasgo::vec_width;
use super::HostGuard;
use super::{
    check_config_snapshot, config_snapshot, read_at, read_params_and_states, stack_slot, update_config, write_at,
    GroupId, ParamId, ParamMeta, Snapshot, Stepper,
};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::kernels::newton_schulz::chunk_grid;
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

const fn spec(entry: &'static str, bindings: &'static [(u32, Binding)]) -> KernelSpec {
    KernelSpec { module: "racs", entry, bindings }
}
/// Row statistics s, an invocation per row (rows of fewer than [`WIDE_ROWS`] columns).
pub const RACS_ROWS: KernelSpec = spec("racs_rows", &[(0, U), (1, R), (2, W)]);
/// Row statistics s, a workgroup per row (wide rows).
pub const RACS_ROWS_WIDE: KernelSpec = spec("racs_rows_wide", &[(0, U), (1, R), (2, W)]);
/// [`RACS_ROWS_WIDE`] over vec4s (columns a multiple of 4).
pub const RACS_ROWS_WIDE4: KernelSpec = spec("racs_rows_wide4", &[(0, U), (8, R), (2, W)]);
/// Each band's column sums of G² (more than one band).
pub const RACS_COLSUM: KernelSpec = spec("racs_colsum", &[(0, U), (1, R), (7, W)]);
/// Column statistics q.
pub const RACS_COLS: KernelSpec = spec("racs_cols", &[(0, U), (1, R), (3, W), (7, W)]);
/// Partial sums of ‖Ĝ‖².
pub const RACS_PARTIAL: KernelSpec = spec("racs_partial", &[(0, U), (1, R), (2, W), (3, W), (4, W)]);
/// ‖Ĝ‖ and the limiter η.
pub const RACS_ETA: KernelSpec = spec("racs_eta", &[(0, U), (4, W), (5, W)]);
/// The update.
pub const RACS_APPLY: KernelSpec = spec("racs_apply", &[(0, U), (1, R), (2, W), (3, W), (5, W), (6, W)]);
/// [`RACS_COLSUM`] over vec4 columns (columns a multiple of 4).
pub const RACS_COLSUM4: KernelSpec = spec("racs_colsum4", &[(0, U), (8, R), (11, W)]);
/// [`RACS_COLS`] over vec4 columns (columns a multiple of 4).
pub const RACS_COLS4: KernelSpec = spec("racs_cols4", &[(0, U), (8, R), (9, W), (11, W)]);
/// [`RACS_PARTIAL`] over vec4s (columns a multiple of 4).
pub const RACS_PARTIAL4: KernelSpec = spec("racs_partial4", &[(0, U), (8, R), (2, W), (9, W), (4, W)]);
/// [`RACS_APPLY`] over vec4s (columns a multiple of 4).
pub const RACS_APPLY4: KernelSpec = spec("racs_apply4", &[(0, U), (8, R), (2, W), (9, W), (5, W), (10, W)]);
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[
    RACS_ROWS,
    RACS_ROWS_WIDE,
    RACS_COLSUM,
    RACS_COLS,
    RACS_PARTIAL,
    RACS_ETA,
    RACS_APPLY,
    RACS_PARTIAL4,
    RACS_APPLY4,
    RACS_COLSUM4,
    RACS_COLS4,
    RACS_ROWS_WIDE4,
];
const CHUNK: usize = 4096;
/// Rows of at least this many columns get a workgroup each for their statistics (lane l summing
/// columns l, l + 256, …, then the workgroup's sum); narrower rows an invocation each.
pub const WIDE_ROWS: usize = 64;

/// REG / RACS hyperparameters; defaults are pytorch-optimizer `RACS`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegConfig {
    /// Learning rate.
    pub lr: f64,
    /// EMA coefficient of the row/column statistics (RACS's `beta`).
    pub beta2: f64,
    /// Output scale.
    pub alpha: f64,
    /// Norm-growth limit per step.
    pub gamma: f64,
    /// Inside the square roots and the limiter.
    pub eps: f64,
    /// DW-B decay.
    pub weight_decay: f64,
}

impl Default for RegConfig {
    fn default() -> Self {
        RegConfig { lr: 1e-3, beta2: 0.9, alpha: 0.05, gamma: 1.01, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl RegConfig {
    /// Rejects non-finite or out-of-range values.
    pub fn validate(&self) -> Result<()> {
        super::algorithm::check_lr_wd(self.lr, self.weight_decay)?;
        let bad = |name: &str, v: f64, reason: &str| {
            Err(Error::Hyperparameter { name: name.into(), value: v, reason: reason.into() })
        };
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "must lie in [0, 1)");
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return bad("alpha", self.alpha, "must be finite and >= 0");
        }
        if !self.gamma.is_finite() || self.gamma <= 0.0 {
            return bad("gamma", self.gamma, "must be finite and > 0");
        }
        // A zero row (or a column without gradient for long) divides by eps: 0 would be 0/0.
        super::check_f32_eps("eps", self.eps)?;
        Ok(())
    }

    /// The uniform for a rows × cols tensor at step `t` (a stack of one; set `count` for more).
    pub fn params(&self, rows: usize, cols: usize, t: u64) -> RacsParams {
        let (bands, band_rows) = super::dasgo::column_bands(rows, cols);
        RacsParams {
            rows: rows as u32,
            cols: cols as u32,
            chunks: (rows * cols).div_ceil(CHUNK).max(1) as u32,
            first: (t == 1) as u32,
            omb: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            gamma: self.gamma as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            step: (self.lr * self.alpha) as f32,
            count: 1,
            bands: bands as u32,
            band_rows: band_rows as u32,
            wrap: (256 % vec_width(cols)) as u32,
            step_rows: (256 / vec_width(cols)) as u32,
            _p: [0; 2],
        }
    }
}

/// Uniform of `shaders/racs.wgsl`. Keep in sync with `struct RacsParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RacsParams {
    /// Rows of one tensor's matrix view.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Partial-sum workgroups per tensor.
    pub chunks: u32,
    /// 1 at t = 1.
    pub first: u32,
    /// 1 − β.
    pub omb: f32,
    /// ε.
    pub eps: f32,
    /// γ.
    pub gamma: f32,
    /// 1 − lr·wd.
    pub decay: f32,
    /// lr·α.
    pub step: f32,
    /// Tensors in the stack.
    pub count: u32,
    /// Bands of rows the column sums are split into (DASGO's [`super::dasgo::column_bands`]).
    pub bands: u32,
    /// Rows per band (the last may hold fewer).
    pub band_rows: u32,
    /// 256 mod [`vec_width`]: how far the norm and update passes' walk advances its column per
    /// element (or vec4).
    pub wrap: u32,
    /// 256 / [`vec_width`]: how far it advances its row.
    pub step_rows: u32,
    /// Padding.
    pub _p: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<RacsParams>() == 64);

/// The matrix view RACS uses: shape\[0\] × rest (1-D: n × 1).
pub fn racs_view(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (shape[0], 1),
        _ => (shape[0], shape[1..].iter().product()),
    }
}

/// Lengths of REG's state tensors for a parameter: s has rows, q cols, theta 1 (empty parameters
/// keep none of them: 0).
pub(crate) fn reg_state_len(p: &ParamMeta, name: &str) -> usize {
    if p.is_empty() {
        return 0;
    }
    let (rows, cols) = racs_view(&p.shape);
    match name {
        "s" => rows,
        "q" => cols,
        _ => 1,
    }
}

/// Parameters for REG.
#[derive(Clone, Debug)]
pub struct RegBuilder {
    pub(crate) config: RegConfig,
    pub(crate) params: Vec<(ParamMeta, Vec<f32>)>,
}

impl RegBuilder {
    /// A builder.
    pub fn new(config: RegConfig) -> Self {
        RegBuilder { config, params: Vec::new() }
    }

    /// Adds a parameter.
    pub fn param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::Shape {
                what: format!("parameter {name}"),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        if self.params.iter().any(|(p, _)| p.name == name) {
            return Err(Error::Invalid(format!("duplicate parameter name {name:?}")));
        }
        self.params.push((ParamMeta { name: name.into(), shape: shape.to_vec(), group: 0 }, data.to_vec()));
        Ok(ParamId(self.params.len() - 1))
    }

    /// Builds the GPU optimizer.
    pub fn build(self, ctx: &Context) -> Result<RegOptimizer> {
        self.config.validate()?;
        RegOptimizer::new(ctx, self)
    }

    /// Builds the CPU reference.
    pub fn build_cpu(self) -> Result<crate::reference::racs::CpuReg> {
        self.config.validate()?;
        Ok(crate::reference::racs::CpuReg::new(self))
    }
}

/// A stack of `count` parameters with the same rows × cols view, stepped as one chain.
struct Chain {
    rows: usize,
    cols: usize,
    count: usize,
    p: Tensor,
    g: Tensor,
    /// s \[count·rows\], q \[count·cols\], scal \[count·4\] (‖Ĝ‖, θ, η, unused per tensor).
    state: [Tensor; 3],
    /// Row statistics (per row or per workgroup, by width), column band sums, column statistics,
    /// partial norms, eta, update.
    kernels: [BoundKernel; 6],
    uniform: wgpu::Buffer,
    _buffers: [wgpu::Buffer; 2],
}

/// The GPU REG (RACS) optimizer: parameters with the same matrix view are stacked into one chain of
/// five or six passes (as many as one storage binding and one grid dimension hold).
pub struct RegOptimizer {
    ctx: Context,
    config: RegConfig,
    params: Vec<ParamMeta>,
    chains: Vec<Chain>,
    /// Each parameter's (chain, index in the stack); `None` for an empty one.
    slots: Vec<Option<(usize, usize)>>,
    t: u64,
    guard: HostGuard,
}

impl RegOptimizer {
    fn new(ctx: &Context, b: RegBuilder) -> Result<Self> {
        let items =
            b.params.iter().map(|(meta, data)| (!data.is_empty()).then(|| (racs_view(&meta.shape), data.len())));
        let (stacks, slots) = super::stacks(ctx, items);
        let mut chains = Vec::new();
        for ((rows, cols), members) in stacks {
            let count = members.len();
            let init: Vec<f32> = members.iter().flat_map(|&i| b.params[i].1.iter().copied()).collect();
            let p = Tensor::from_slice(ctx, &init, &[count * rows, cols])?;
            let g = Tensor::zeros(ctx, &[count * rows, cols])?;
            let s = Tensor::zeros(ctx, &[count * rows])?;
            let q = Tensor::from_slice(ctx, &vec![1.0; count * cols], &[count * cols])?;
            let scal = Tensor::zeros(ctx, &[count * 4])?;
            let uniform = ctx.uniform_buffer("racs params", 64);
            let chunks = (rows * cols).div_ceil(CHUNK);
            let partials = ctx.storage_buffer("racs partials", 8 * (count * chunks) as u64)?;
            let bands = super::dasgo::column_bands(rows, cols).0;
            // Unused (a stub) with one band.
            let colpart_len = if bands > 1 { bands * count * cols } else { 1 };
            let colpart = ctx.storage_buffer("racs column sums", 4 * colpart_len as u64)?;
            let (u, gb, sb, qb, pb, cb, xb) =
                (&uniform, g.buffer(), s.buffer(), q.buffer(), &partials, scal.buffer(), p.buffer());
            let row_spec = match (cols >= WIDE_ROWS, vec_width(cols) < cols) {
                (true, true) => &RACS_ROWS_WIDE4,
                (true, false) => &RACS_ROWS_WIDE,
                _ => &RACS_ROWS,
            };
            // The column, norm and update passes over vec4s where each lies in one row.
            let [colsum, col, partial, apply] = if vec_width(cols) < cols {
                [&RACS_COLSUM4, &RACS_COLS4, &RACS_PARTIAL4, &RACS_APPLY4]
            } else {
                [&RACS_COLSUM, &RACS_COLS, &RACS_PARTIAL, &RACS_APPLY]
            };
            let kernels = [
                ctx.bind(row_spec, &[u, gb, sb])?,
                ctx.bind(colsum, &[u, gb, &colpart])?,
                ctx.bind(col, &[u, gb, qb, &colpart])?,
                ctx.bind(partial, &[u, gb, sb, qb, pb])?,
                ctx.bind(&RACS_ETA, &[u, pb, cb])?,
                ctx.bind(apply, &[u, gb, sb, qb, cb, xb])?,
            ];
            let state = [s, q, scal];
            let _buffers = [partials, colpart];
            chains.push(Chain { rows, cols, count, p, g, state, kernels, uniform, _buffers });
        }
        Ok(RegOptimizer {
            ctx: ctx.clone(),
            config: b.config,
            params: b.params.into_iter().map(|p| p.0).collect(),
            chains,
            guard: HostGuard::new(slots.len()),
            slots,
            t: 0,
        })
    }

    /// The number of batched chains a step runs (one per stack of same-view parameters).
    pub fn chains(&self) -> usize {
        self.chains.len()
    }

    /// Writes step `t`'s uniforms (t = 1 starts the limiter) for the passes recorded next.
    pub fn write_uniforms(&self, t: u64) {
        for c in &self.chains {
            let params = RacsParams { count: c.count as u32, ..self.config.params(c.rows, c.cols, t) };
            self.ctx.queue().write_buffer(&c.uniform, 0, bytemuck::bytes_of(&params));
        }
    }

    /// Records one step's dispatches for every stack into `pass`, with the uniforms last written: what
    /// [`Stepper::step`] submits, and what the benchmark times.
    pub fn record_step(&self, pass: &mut wgpu::ComputePass<'_>) {
        for c in &self.chains {
            let params = self.config.params(c.rows, c.cols, 1);
            let [rows, colsum, cols, partial, eta, apply] = &c.kernels;
            let n = c.count as u32;
            let stacked_rows = n * c.rows as u32;
            let wide = c.cols >= WIDE_ROWS;
            rows.record(&self.ctx, pass, if wide { stacked_rows } else { stacked_rows.div_ceil(WORKGROUP_SIZE) });
            // Column invocations: one per column, or per four (vec4s).
            let width = vec_width(c.cols) as u32;
            if params.bands > 1 {
                colsum.record(&self.ctx, pass, (params.bands * n * width).div_ceil(WORKGROUP_SIZE));
            }
            cols.record(&self.ctx, pass, (n * width).div_ceil(WORKGROUP_SIZE));
            // Chunks fold into (x, w): a tensor can have more than a dimension's workgroups.
            partial.record_3d(pass, chunk_grid(&self.ctx, params.chunks as usize, c.count));
            eta.record_3d(pass, (n, 1, 1));
            apply.record_3d(pass, chunk_grid(&self.ctx, params.chunks as usize, c.count));
        }
    }

    /// The parameter's stack and index there (`None`: empty), checking `len` when given.
    fn slot(&self, id: ParamId, len: Option<usize>) -> Result<Option<(&Chain, usize)>> {
        Ok(stack_slot(&self.params, &self.slots, id, len)?.map(|(c, k)| (&self.chains[c], k)))
    }

    /// Writes the parameter's values (or gradient) into its stack.
    fn write(&self, id: ParamId, data: &[f32], grad: bool) -> Result<()> {
        if let Some((c, k)) = self.slot(id, Some(data.len()))? {
            write_at(&self.ctx, if grad { &c.g } else { &c.p }, k * c.rows * c.cols, data);
        }
        Ok(())
    }
}

impl Stepper for RegOptimizer {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        let t = self.t + 1;
        self.write_uniforms(t);
        let mut enc = self.ctx.encoder("reg step");
        let mut pass = crate::gpu::compute_pass(&mut enc, "reg step");
        self.ctx.scoped("reg step", || self.record_step(&mut pass))?;
        drop(pass);
        self.ctx.submit(enc);
        self.t = t;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.slot(id, Some(grad.len()))?;
        // A non-finite gradient is not written; the next step is skipped unless it is rewritten.
        if !self.guard.admit(id.0, grad) {
            return Ok(());
        }
        self.write(id, grad, true)
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.write(id, data, false)
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        match self.slot(id, None)? {
            Some((c, k)) => read_at(&self.ctx, &c.p, k * c.rows * c.cols, c.rows * c.cols),
            None => Ok(Vec::new()),
        }
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        let k = match state {
            "s" => 0,
            "q" => 1,
            "theta" => 2,
            other => return Err(Error::Invalid(format!("reg has no state {other:?} (s, q, theta)"))),
        };
        match self.slot(id, None)? {
            // theta is the second of the tensor's four scalars.
            Some((c, z)) => {
                let (at, len) = [(z * c.rows, c.rows), (z * c.cols, c.cols), (4 * z + 1, 1)][k];
                read_at(&self.ctx, &c.state[k], at, len)
            }
            None => Ok(Vec::new()),
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
        update_config(&mut self.config, group, |c| c.lr = lr, RegConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.config, group, |c| c.weight_decay = wd, RegConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let (values, states) = read_params_and_states(self, &["s", "q", "theta"])?;
        let lr_wd = (self.config.lr, self.config.weight_decay);
        let mut s = config_snapshot("reg", &self.config, lr_wd, self.t, &self.params, values, states);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let (config, states) =
            check_config_snapshot(&s, "reg", &self.params, &["s", "q", "theta"], reg_state_len, RegConfig::validate)?;
        for (i, st) in states.iter().enumerate() {
            if let Some((c, z)) = self.slot(ParamId(i), None)? {
                write_at(&self.ctx, &c.p, z * c.rows * c.cols, &s.values[i]);
                write_at(&self.ctx, &c.state[0], z * c.rows, &st[0]);
                write_at(&self.ctx, &c.state[1], z * c.cols, &st[1]);
                // scal = [norm, theta, eta, unused]: only theta carries over.
                write_at(&self.ctx, &c.state[2], 4 * z, &[0.0, st[2][0], 1.0, 0.0]);
            }
        }
        self.config = config;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.params
    }
}
