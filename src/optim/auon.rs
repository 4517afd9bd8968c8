//! AuON and Hybrid-AuON (ALGORITHMS.md §5.5, ryyzn9/AuON): Nesterov momentum, then a linear-time
//! normalisation by the RMS of cosh of the Frobenius-normalised update; Hybrid-AuON orthogonalises
//! the update with NS5 first, over the last two dimensions of a tensor of rank ≥ 2 (1-D parameters
//! skip NS5). `variant` "package" follows
//! the current `auon/optimizer.py` (the step uses the un-normalised update, decay applied even when
//! the step is skipped at ‖u‖ = 0); "paper" follows the paper's (5.5.1)–(5.5.4): the normalised
//! update X = u/(‖u‖ + 1e-7) and cosh(X) without γ, and for Hybrid-AuON NS5 run on X and (5.5.2)–(5.5.3)
//! on its output as it is.
//! A gradient holding NaN or Inf is not written and skips the next step for every parameter.

use super::muon::{elementwise_passes, MuonConfig, MuonParams};
use super::HostGuard;
use super::{
    check_config_snapshot, config_snapshot, read_at, read_params_and_states, stack_slot, update_config, write_at,
    GroupId, ParamId, ParamMeta, Snapshot, Stepper,
};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::kernels::newton_schulz::{chunk_grid, FrobeniusPlan, Ns5Plan, ScaleCopyPlan, NS5_COEFFICIENTS_F64, NS_EPS};
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// AuON's update pass.
pub const AUON_APPLY: KernelSpec =
    KernelSpec { module: "auon", entry: "auon_apply", bindings: &[(0, U), (1, R), (2, R), (3, R), (4, W)] };
/// [`AUON_APPLY`] over vec4s (tensors of a multiple of 4 elements).
pub const AUON_APPLY4: KernelSpec =
    KernelSpec { module: "auon", entry: "auon_apply4", bindings: &[(0, U), (5, R), (2, R), (3, R), (6, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[AUON_APPLY, AUON_APPLY4];

/// Which AuON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuonVariant {
    /// ryyzn9/AuON `auon/optimizer.py` (the default).
    #[default]
    Package,
    /// The paper's equations (5.5.1)–(5.5.4). Two things the paper has and this variant takes from
    /// the caller: its Hybrid-AuON runs one NS step (`ns_steps: 1`; the default 5 is the package's),
    /// and the paper-era training script's lr·sqrt(max(1, rows/cols)) shape factor is not applied
    /// (scale `lr` for a tall matrix to reproduce it).
    Paper,
}

/// AuON's hyperparameters; defaults are ryyzn9/AuON's `AuON` / `HybridAuON`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuonConfig {
    /// Learning rate.
    pub lr: f64,
    /// Nesterov momentum μ.
    pub momentum: f64,
    /// DW-B decay.
    pub weight_decay: f64,
    /// Scale inside cosh.
    pub gamma: f64,
    /// NS5 steps (Hybrid-AuON only; the package's 5; the paper's Hybrid-AuON takes 1).
    pub ns_steps: usize,
    /// NS5's (a, b, c) (Hybrid-AuON only; Muon's by default).
    pub ns_coefficients: [f64; 3],
    /// "package" or "paper".
    pub variant: AuonVariant,
}

impl Default for AuonConfig {
    fn default() -> Self {
        AuonConfig {
            lr: 0.24,
            momentum: 0.95,
            weight_decay: 0.0,
            gamma: 1.5,
            ns_steps: 5,
            ns_coefficients: NS5_COEFFICIENTS_F64,
            variant: AuonVariant::Package,
        }
    }
}

impl AuonConfig {
    /// Rejects non-finite or out-of-range values.
    pub fn validate(&self) -> Result<()> {
        MuonConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            ns_steps: self.ns_steps,
            ns_coefficients: self.ns_coefficients,
            ..MuonConfig::default()
        }
        .validate()?;
        // cosh(γ·x)² for |x| <= 1 must stay finite in f32 (cosh(44)² ≈ 4e37): above, the GPU's RMS
        // is Inf (no step) where the f64 twin steps.
        // (The paper variant has no γ; it only has to be finite and > 0 there.)
        let top = if self.variant == AuonVariant::Package { 44.0 } else { f64::MAX };
        if !(self.gamma > 0.0 && self.gamma <= top) {
            return Err(Error::Hyperparameter {
                name: "gamma".into(),
                value: self.gamma,
                reason: "must be in (0, 44] for the package variant (cosh(gamma)^2 must stay finite in f32), finite and > 0 otherwise".into(),
            });
        }
        Ok(())
    }

    /// The momentum pass's uniform (Nesterov always, as the package).
    pub fn momentum_params(&self, len: usize) -> MuonParams {
        MuonParams {
            len: len as u32,
            nesterov: 1,
            _p: [0; 2],
            beta: self.momentum as f32,
            omb: (1.0 - self.momentum) as f32,
            decay: 1.0,
            step: 0.0,
        }
    }

    /// `ns_coefficients` as the kernels take them (validated configs only).
    pub fn coefficients(&self) -> (f32, f32, f32) {
        crate::kernels::newton_schulz::ns_coefficients(self.ns_coefficients).expect("validated")
    }

    /// The scale inside cosh: (γ, whether it is divided by ‖v‖_F + 1e-7). "package": (5.5.8),
    /// (γ, true); "paper": (5.5.2) has no γ, (1, true) on X = u/(‖u‖ + 1e-7), and for Hybrid-AuON
    /// (`ns`) cosh reads NS5's output of X as it is, (1, false).
    pub fn cosh_scale(&self, ns: bool) -> (f32, bool) {
        match self.variant {
            AuonVariant::Package => (self.gamma as f32, true),
            AuonVariant::Paper => (1.0, !ns),
        }
    }

    /// The update pass's uniform for `count` stacked tensors of `len` elements each (`ns`: NS5 ran
    /// first, Hybrid-AuON).
    pub fn apply_params(&self, len: usize, count: usize, ns: bool) -> AuonParams {
        AuonParams {
            len: (len * count) as u32,
            // The paper's AuON steps along X = u/(‖u‖ + 1e-7); its hybrid along NS5(X) itself.
            paper: (self.variant == AuonVariant::Paper && !ns) as u32,
            per: len as u32,
            _p: 0,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            lr: self.lr as f32,
            inv_sqrt_n: (1.0 / (len.max(1) as f64).sqrt()) as f32,
            _p2: 0.0,
        }
    }
}

/// Uniform of `shaders/auon.wgsl`. Keep in sync with `struct AuonParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AuonParams {
    /// Elements of the whole stack.
    pub len: u32,
    /// 1: divide the update by its norm + 1e-7 (the paper's AuON).
    pub paper: u32,
    /// Elements of one tensor of the stack (N).
    pub per: u32,
    /// Padding.
    pub _p: u32,
    /// 1 − lr·wd.
    pub decay: f32,
    /// lr.
    pub lr: f32,
    /// 1/sqrt(N).
    pub inv_sqrt_n: f32,
    /// Padding.
    pub _p2: f32,
}
const _: () = assert!(std::mem::size_of::<AuonParams>() == 32);

/// Parameters for AuON (every shape) and whether NS5 runs first (Hybrid-AuON, matrices only).
#[derive(Clone, Debug)]
pub struct AuonBuilder {
    pub(crate) config: AuonConfig,
    pub(crate) hybrid: bool,
    pub(crate) params: Vec<(ParamMeta, Vec<f32>)>,
}

impl AuonBuilder {
    /// AuON (`hybrid` false) or Hybrid-AuON (`hybrid` true).
    pub fn new(config: AuonConfig, hybrid: bool) -> Self {
        AuonBuilder { config, hybrid, params: Vec::new() }
    }

    /// Adds a parameter (Hybrid-AuON runs NS5 on rank ≥ 2 by [`AuonBuilder::ns_view`]).
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

    /// Whether NS5 runs on this parameter's update.
    pub fn uses_ns(&self, shape: &[usize]) -> bool {
        self.hybrid && shape.len() >= 2 && shape.iter().product::<usize>() > 0
    }

    /// Hybrid-AuON's NS5 view of a tensor of rank ≥ 2: (slices, rows, cols), its last two dimensions
    /// orthogonalised as a batch over the others, as ryyzn9/AuON's HybridAuON runs NS over
    /// dims (−2, −1) (the brake that follows still takes the whole tensor).
    pub fn ns_view(shape: &[usize]) -> (usize, usize, usize) {
        let n = shape.len();
        (shape[..n - 2].iter().product(), shape[n - 2], shape[n - 1])
    }

    /// Builds the GPU optimizer.
    pub fn build(self, ctx: &Context) -> Result<AuonOptimizer> {
        self.config.validate()?;
        AuonOptimizer::new(ctx, self)
    }

    /// Builds the CPU reference.
    pub fn build_cpu(self) -> Result<crate::reference::auon::CpuAuon> {
        self.config.validate()?;
        Ok(crate::reference::auon::CpuAuon::new(self))
    }
}

/// A stack of `count` same-shape parameters of `len` elements each, stepped as one chain.
struct Chain {
    s: Stack,
    passes: Passes,
}

/// A chain's tensors and its momentum pass.
struct Stack {
    len: usize,
    count: usize,
    /// (slices, rows, cols) where NS5 runs (Hybrid-AuON: [`AuonBuilder::ns_view`]).
    matrix: Option<(usize, usize, usize)>,
    p: Tensor,
    g: Tensor,
    m: Tensor,
    /// The Nesterov update.
    u: Tensor,
    /// ‖v‖_F and sqrt(Σ cosh²) of each tensor, read by the update pass; ‖u‖_F and X = u/(‖u‖ + 1e-7)
    /// for the paper's Hybrid-AuON.
    norms: [Tensor; 3],
    x: Option<Tensor>,
    momentum: BoundKernel,
    uniforms: [wgpu::Buffer; 2],
}

/// The passes after the momentum's, planned from the configuration (NS5's steps and coefficients,
/// γ and the variant are baked into them; a restore that changes them plans them again).
struct Passes {
    /// The paper's Hybrid-AuON: ‖u‖_F, then X = u/(‖u‖ + 1e-7), NS5's input.
    pre: Option<(FrobeniusPlan, ScaleCopyPlan)>,
    ns: Option<Ns5Plan>,
    frob: FrobeniusPlan,
    cosh: FrobeniusPlan,
    apply: BoundKernel,
}

impl Stack {
    fn plan(&self, ctx: &Context, config: &AuonConfig) -> Result<Passes> {
        let [norm_v, cosh_t, norm_u] = &self.norms;
        let paper = config.variant == AuonVariant::Paper;
        let pre = match (self.matrix, &self.x) {
            // One norm per tensor (all its slices), as (5.5.1) normalises u.
            (Some((slices, rows, cols)), Some(x)) if paper => Some((
                FrobeniusPlan::new(ctx, &self.u, None, self.count, norm_u)?,
                ScaleCopyPlan::new(ctx, &self.u, Some((norm_u, NS_EPS)), x, self.count, slices * rows, cols, false)?,
            )),
            _ => None,
        };
        let ns_in = if pre.is_some() { self.x.as_ref().expect("with pre") } else { &self.u };
        let ns = match self.matrix {
            Some(_) => Some(Ns5Plan::new(ctx, ns_in, config.ns_steps, config.coefficients())?),
            None => None,
        };
        let v = ns.as_ref().map_or(&self.u, |n| n.output());
        let frob = FrobeniusPlan::new(ctx, v, None, self.count, norm_v)?;
        let (gamma, normalise) = config.cosh_scale(ns.is_some());
        let cosh = FrobeniusPlan::cosh(ctx, v, normalise.then_some(norm_v), gamma, self.count, cosh_t)?;
        let spec = if self.len.is_multiple_of(4) { &AUON_APPLY4 } else { &AUON_APPLY };
        let apply =
            ctx.bind(spec, &[&self.uniforms[1], v.buffer(), norm_v.buffer(), cosh_t.buffer(), self.p.buffer()])?;
        Ok(Passes { pre, ns, frob, cosh, apply })
    }
}

/// The GPU AuON / Hybrid-AuON optimizer: parameters of the same shape are stacked into one chain of
/// batched passes (as many as one storage binding holds), as Muon stacks its matrices.
pub struct AuonOptimizer {
    ctx: Context,
    config: AuonConfig,
    hybrid: bool,
    params: Vec<ParamMeta>,
    chains: Vec<Chain>,
    /// Each parameter's (chain, index in the stack); `None` for an empty one.
    slots: Vec<Option<(usize, usize)>>,
    t: u64,
    guard: HostGuard,
}

impl AuonOptimizer {
    fn new(ctx: &Context, b: AuonBuilder) -> Result<Self> {
        // Stack keys: [slices, rows, cols] where NS5 runs (its matrices must match, and the brake
        // takes a tensor's slices together), [len] elsewhere (the passes are elementwise with one
        // norm per tensor). A tensor counts its slices as members: NS5 batches them all.
        let items = b.params.iter().map(|(meta, _)| {
            let len = meta.len();
            let item = match b.uses_ns(&meta.shape) {
                true => {
                    let (slices, rows, cols) = AuonBuilder::ns_view(&meta.shape);
                    (vec![slices, rows, cols], rows * cols, slices)
                }
                false => (vec![len], len, 1),
            };
            (len > 0).then_some(item)
        });
        let (stacks, slots) = super::batched_stacks(ctx, items);
        let mut chains = Vec::new();
        for (view, members) in stacks {
            let (count, len) = (members.len(), view.iter().product::<usize>());
            let init: Vec<f32> = members.iter().flat_map(|&i| b.params[i].1.iter().copied()).collect();
            let matrix = (view.len() == 3).then(|| (view[0], view[1], view[2]));
            let shape = [count, len];
            let p = Tensor::from_slice(ctx, &init, &shape)?;
            let (g, m) = (Tensor::zeros(ctx, &shape)?, Tensor::zeros(ctx, &shape)?);
            // NS5's input (u, or X for the paper's hybrid) as the batch of every tensor's slices,
            // whose products put the batch on one grid dimension.
            // (Stacks stay within it; a tensor with more slices than it holds is alone and refused.)
            if let Some((slices, rows, cols)) = matrix.filter(|m| count * m.0 > ctx.max_workgroups_per_dim() as usize) {
                return Err(Error::Invalid(format!(
                    "hybrid_auon: {count} parameter(s) of {slices} slices of {rows}x{cols} (from {:?}): at most {} matrices per stack (one grid dimension)",
                    b.params[members[0]].0.name,
                    ctx.max_workgroups_per_dim()
                )));
            }
            let ns_shape = matrix.map(|(slices, rows, cols)| vec![count * slices, rows, cols]);
            let u = Tensor::zeros(ctx, ns_shape.as_deref().unwrap_or(&shape))?;
            let x = ns_shape.map(|s| Tensor::zeros(ctx, &s)).transpose()?;
            let norms = [Tensor::zeros(ctx, &[count])?, Tensor::zeros(ctx, &[count])?, Tensor::zeros(ctx, &[count])?];
            let uniforms = [ctx.uniform_buffer("auon momentum", 32), ctx.uniform_buffer("auon apply", 32)];
            let momentum =
                ctx.bind(elementwise_passes(count * len).0, &[&uniforms[0], g.buffer(), m.buffer(), u.buffer()])?;
            let s = Stack { len, count, matrix, p, g, m, u, norms, x, momentum, uniforms };
            chains.push(Chain { passes: s.plan(ctx, &b.config)?, s });
        }
        Ok(AuonOptimizer {
            ctx: ctx.clone(),
            hybrid: b.hybrid,
            config: b.config,
            params: b.params.into_iter().map(|p| p.0).collect(),
            chains,
            guard: HostGuard::new(slots.len()),
            slots,
            t: 0,
        })
    }

    /// The number of batched chains a step runs (one per stack of same-shape parameters).
    pub fn chains(&self) -> usize {
        self.chains.len()
    }

    /// The replay / checkpoint name.
    fn name(&self) -> &'static str {
        if self.hybrid {
            "hybrid_auon"
        } else {
            "auon"
        }
    }

    /// Writes the uniforms of the config in force for the passes recorded next.
    pub fn write_uniforms(&self) {
        for Chain { s: c, .. } in &self.chains {
            let q = self.ctx.queue();
            let (momentum, apply) = (
                self.config.momentum_params(c.len * c.count),
                self.config.apply_params(c.len, c.count, c.matrix.is_some()),
            );
            q.write_buffer(&c.uniforms[0], 0, bytemuck::bytes_of(&momentum));
            q.write_buffer(&c.uniforms[1], 0, bytemuck::bytes_of(&apply));
        }
    }

    /// Records one step's dispatches for every stack into `pass`, with the uniforms last written: what
    /// [`Stepper::step`] submits, and what the benchmark times.
    pub fn record_step(&self, pass: &mut wgpu::ComputePass<'_>) {
        for Chain { s: c, passes: ps } in &self.chains {
            c.momentum.record(&self.ctx, pass, elementwise_passes(c.len * c.count).2);
            if let Some((norm, scale)) = &ps.pre {
                norm.record(pass);
                scale.record(pass);
            }
            if let Some(ns) = &ps.ns {
                ns.record(pass);
            }
            ps.frob.record(pass);
            ps.cosh.record(pass);
            // One workgroup per 256 elements (or vec4s) of each tensor: (x, tensor, w).
            let items = if c.len.is_multiple_of(4) { c.len / 4 } else { c.len };
            ps.apply.record_3d(pass, chunk_grid(&self.ctx, items.div_ceil(WORKGROUP_SIZE as usize), c.count));
        }
    }

    /// The parameter's stack and the element offset of its first element there (`None`: empty).
    fn slot(&self, id: ParamId, len: Option<usize>) -> Result<Option<(&Stack, usize)>> {
        // The slot counts members: a tensor's slices where NS5 runs, else tensors.
        Ok(stack_slot(&self.params, &self.slots, id, len)?.map(|(c, k)| {
            let s = &self.chains[c].s;
            (s, k * s.len / s.matrix.map_or(1, |m| m.0))
        }))
    }

    /// Writes the parameter's values (or gradient) into its stack.
    fn write(&self, id: ParamId, data: &[f32], grad: bool) -> Result<()> {
        if let Some((c, at)) = self.slot(id, Some(data.len()))? {
            write_at(&self.ctx, if grad { &c.g } else { &c.p }, at, data);
        }
        Ok(())
    }

    /// Reads the parameter's values (or momentum) from its stack.
    fn read(&self, id: ParamId, momentum: bool) -> Result<Vec<f32>> {
        match self.slot(id, None)? {
            Some((c, at)) => read_at(&self.ctx, if momentum { &c.m } else { &c.p }, at, c.len),
            None => Ok(Vec::new()),
        }
    }
}

impl Stepper for AuonOptimizer {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        self.write_uniforms();
        let mut enc = self.ctx.encoder("auon step");
        let mut pass = crate::gpu::compute_pass(&mut enc, "auon step");
        self.ctx.scoped("auon step", || self.record_step(&mut pass))?;
        drop(pass);
        self.ctx.submit(enc);
        self.t += 1;
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
        self.read(id, false)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        if state != "momentum_buffer" {
            return Err(Error::Invalid(format!("auon has no state {state:?}")));
        }
        self.read(id, true)
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
        update_config(&mut self.config, group, |c| c.lr = lr, AuonConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.config, group, |c| c.weight_decay = wd, AuonConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let (values, states) = read_params_and_states(self, &["momentum_buffer"])?;
        let lr_wd = (self.config.lr, self.config.weight_decay);
        let mut s = config_snapshot(self.name(), &self.config, lr_wd, self.t, &self.params, values, states);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let (config, states) = check_config_snapshot(
            &s,
            self.name(),
            &self.params,
            &["momentum_buffer"],
            |p, _| p.len(),
            AuonConfig::validate,
        )?;
        // γ, the variant and NS5's steps and coefficients are planned into the passes: plan again
        // first (nothing is changed if that fails), then write.
        let planned = |c: &AuonConfig| (c.gamma, c.variant, c.ns_steps, c.ns_coefficients);
        if planned(&config) != planned(&self.config) {
            let passes = self.chains.iter().map(|c| c.s.plan(&self.ctx, &config)).collect::<Result<Vec<_>>>()?;
            for (c, p) in self.chains.iter_mut().zip(passes) {
                c.passes = p;
            }
        }
        for (i, st) in states.iter().enumerate() {
            if let Some((c, at)) = self.slot(ParamId(i), None)? {
                write_at(&self.ctx, &c.p, at, &s.values[i]);
                write_at(&self.ctx, &c.m, at, &st[0]);
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
