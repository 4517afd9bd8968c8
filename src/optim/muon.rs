//! Muon (ALGORITHMS.md §5.2, KellerJordan/Muon) with parameter routing: matrices (2-D; 3-D tensors
//! as batches of matrices, 4-D conv kernels flattened to rows × rest, as `muon_update` takes them)
//! get momentum → NS5 → scaled update; everything else (biases,
//! gains, and whatever the user marks, e.g. embeddings and heads) goes to the fused AdamW. Same-shape
//! matrices are stacked and orthogonalised in one batched NS5 chain. A gradient holding NaN or Inf
//! (any parameter's, the AdamW ones included) is not written and skips the next step for all.
//!
//! ```text
//! (5.2.1) m ← lerp(m, g, 1−β)              (5.2.2) u ← lerp(g, m, β) if nesterov else m
//! (5.2.4) O ← NS5(u)                        (5.2.5) ratio ← adjust_lr(rows, cols)
//! (5.2.6) p ← (1 − lr·wd)·p − lr·ratio·O    (decay with the unadjusted lr)
//! ```

use super::{
    meta_at, read_at, write_at, AdamW, GroupId, HostGuard, OptimizerBuilder, ParamId, ParamMeta, Snapshot, Stepper,
};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use crate::kernels::newton_schulz::{ns_coefficients, Ns5Plan, NS5_COEFFICIENTS_F64};
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// Muon's momentum pass.
pub const MUON_MOMENTUM: KernelSpec =
    KernelSpec { module: "muon", entry: "muon_momentum", bindings: &[(0, U), (1, R), (2, W), (3, W)] };
/// Muon's update pass.
pub const MUON_APPLY: KernelSpec =
    KernelSpec { module: "muon", entry: "muon_apply", bindings: &[(0, U), (4, R), (5, W)] };
/// [`MUON_MOMENTUM`] over vec4s (a multiple of 4 elements).
pub const MUON_MOMENTUM4: KernelSpec =
    KernelSpec { module: "muon", entry: "muon_momentum4", bindings: &[(0, U), (6, R), (7, W), (8, W)] };
/// [`MUON_APPLY`] over vec4s (a multiple of 4 elements).
pub const MUON_APPLY4: KernelSpec =
    KernelSpec { module: "muon", entry: "muon_apply4", bindings: &[(0, U), (9, R), (10, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[MUON_MOMENTUM, MUON_APPLY, MUON_MOMENTUM4, MUON_APPLY4];

/// The momentum and update passes for `len` elements and the workgroups each dispatches: over
/// vec4s where `len` is a multiple of 4.
pub(crate) fn elementwise_passes(len: usize) -> (&'static KernelSpec, &'static KernelSpec, u32) {
    if len.is_multiple_of(4) {
        (&MUON_MOMENTUM4, &MUON_APPLY4, ((len / 4) as u32).div_ceil(WORKGROUP_SIZE))
    } else {
        (&MUON_MOMENTUM, &MUON_APPLY, (len as u32).div_ceil(WORKGROUP_SIZE))
    }
}

/// How the learning rate is scaled per matrix (ALGORITHMS.md §11.1 `adjust_lr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustLr {
    /// sqrt(max(1, rows/cols)) (KellerJordan/Muon).
    #[default]
    Original,
    /// 0.2·sqrt(max(rows, cols)) (Moonshot; update RMS ≈ 0.2, like AdamW's).
    MatchRmsAdamw,
    /// 1.
    None,
}

impl AdjustLr {
    /// The factor for a rows × cols matrix.
    pub fn ratio(self, rows: usize, cols: usize) -> f64 {
        match self {
            AdjustLr::Original => (rows as f64 / cols as f64).max(1.0).sqrt(),
            AdjustLr::MatchRmsAdamw => 0.2 * (rows.max(cols) as f64).sqrt(),
            AdjustLr::None => 1.0,
        }
    }
}

/// Muon's hyperparameters; defaults are KellerJordan/Muon's (ALGORITHMS.md §11.2 `muon`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MuonConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum β.
    pub momentum: f64,
    /// Nesterov form.
    pub nesterov: bool,
    /// NS5 steps.
    pub ns_steps: usize,
    /// The quintic's (a, b, c) (torch.optim.Muon's `ns_coefficients`; Keller's by default).
    pub ns_coefficients: [f64; 3],
    /// Decoupled decay (with the unadjusted lr).
    pub weight_decay: f64,
    /// Per-matrix lr scaling.
    pub adjust_lr: AdjustLr,
}

impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            ns_coefficients: NS5_COEFFICIENTS_F64,
            weight_decay: 0.0,
            adjust_lr: AdjustLr::Original,
        }
    }
}

impl MuonConfig {
    /// Rejects non-finite or out-of-range values.
    pub fn validate(&self) -> Result<()> {
        super::algorithm::check_lr_wd(self.lr, self.weight_decay)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Hyperparameter {
                name: "momentum".into(),
                value: self.momentum,
                reason: "must lie in [0, 1)".into(),
            });
        }
        if self.ns_steps >= 100 {
            return Err(Error::Hyperparameter {
                name: "ns_steps".into(),
                value: self.ns_steps as f64,
                reason: "must be below 100".into(),
            });
        }
        ns_coefficients(self.ns_coefficients)?;
        Ok(())
    }

    /// `ns_coefficients` as the kernels take them (validated configs only).
    pub fn coefficients(&self) -> (f32, f32, f32) {
        ns_coefficients(self.ns_coefficients).expect("validated")
    }
}

/// The AdamW that Muon routes non-matrix parameters to: MuonWithAuxAdam's defaults
/// (lr 3e-4, betas (0.9, 0.95), eps 1e-10, weight_decay 0).
pub fn aux_adamw_default() -> AdamW {
    AdamW { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-10, weight_decay: 0.0, amsgrad: false }
}

/// Uniform of `shaders/muon.wgsl`. Keep in sync with `struct MuonParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MuonParams {
    /// Elements.
    pub len: u32,
    /// Nesterov flag.
    pub nesterov: u32,
    /// Padding.
    pub _p: [u32; 2],
    /// β.
    pub beta: f32,
    /// 1 − β.
    pub omb: f32,
    /// 1 − lr·wd.
    pub decay: f32,
    /// lr·ratio.
    pub step: f32,
}
const _: () = assert!(std::mem::size_of::<MuonParams>() == 32);

impl MuonConfig {
    /// The uniform for `len` elements of rows × cols matrices.
    pub fn params(&self, len: usize, rows: usize, cols: usize) -> MuonParams {
        MuonParams {
            len: len as u32,
            nesterov: self.nesterov as u32,
            _p: [0; 2],
            beta: self.momentum as f32,
            omb: (1.0 - self.momentum) as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            step: (self.lr * self.adjust_lr.ratio(rows, cols)) as f32,
        }
    }
}

/// Where a parameter went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Muon (matrix, index within its shape group).
    Muon,
    /// The auxiliary AdamW.
    AdamW,
}

/// Collects parameters and routes them; builds the GPU [`MuonOptimizer`] or the CPU reference.
///
/// ```
/// use gpuopt::optim::{MuonBuilder, MuonConfig, Stepper};
/// let mut b = MuonBuilder::new(MuonConfig::default());
/// let w = b.param("fc.weight", &[0.1; 12], &[3, 4])?;  // a matrix: Muon
/// let bias = b.param("fc.bias", &[0.0; 3], &[3])?;     // a vector: the auxiliary AdamW
/// let mut opt = b.build_cpu()?;                         // or .build(&ctx) on the GPU
/// opt.write_grad(w, &[1.0; 12])?;
/// opt.write_grad(bias, &[1.0; 3])?;
/// opt.step()?;
/// assert!(opt.read_param(w)?.iter().all(|&v| v < 0.1));
/// # Ok::<(), gpuopt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MuonBuilder {
    pub(crate) config: MuonConfig,
    pub(crate) aux: AdamW,
    pub(crate) params: Vec<(ParamMeta, Vec<f32>, Route)>,
}

impl MuonBuilder {
    /// A builder with the given Muon config and the default auxiliary AdamW.
    pub fn new(config: MuonConfig) -> Self {
        MuonBuilder { config, aux: aux_adamw_default(), params: Vec::new() }
    }

    /// Replaces the auxiliary AdamW's config.
    pub fn aux_adamw(mut self, aux: AdamW) -> Self {
        self.aux = aux;
        self
    }

    fn push(&mut self, name: &str, data: &[f32], shape: &[usize], route: Route) -> Result<ParamId> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::Shape {
                what: format!("parameter {name}"),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        if self.params.iter().any(|(p, _, _)| p.name == name) {
            return Err(Error::Invalid(format!("duplicate parameter name {name:?}")));
        }
        self.params.push((
            ParamMeta { name: name.into(), shape: shape.to_vec(), group: (route == Route::AdamW) as usize },
            data.to_vec(),
            route,
        ));
        Ok(ParamId(self.params.len() - 1))
    }

    /// Adds a parameter: ≥ 2-D and non-empty goes to Muon (3-D: a batch of matrices; 4-D and up
    /// flattened to shape\[0\] × rest; see [`MuonBuilder::matrices`]), else AdamW.
    pub fn param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let matrix = shape.len() >= 2 && !data.is_empty();
        self.push(name, data, shape, if matrix { Route::Muon } else { Route::AdamW })
    }

    /// Adds a parameter that goes to AdamW whatever its shape (embeddings, output heads).
    pub fn param_adamw(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        self.push(name, data, shape, Route::AdamW)
    }

    /// Where a parameter was routed.
    pub fn route(&self, id: ParamId) -> Option<Route> {
        self.params.get(id.0).map(|p| p.2)
    }

    /// Builds the GPU optimizer.
    pub fn build(self, ctx: &Context) -> Result<MuonOptimizer> {
        self.config.validate()?;
        MuonOptimizer::new(ctx, self)
    }

    /// Builds the CPU reference.
    pub fn build_cpu(self) -> Result<crate::reference::muon::CpuMuon> {
        self.config.validate()?;
        crate::reference::muon::CpuMuon::new(self)
    }

    /// The matrix view (rows, cols) of one matrix of a Muon parameter (see [`MuonBuilder::matrices`]).
    pub fn matrix(shape: &[usize]) -> (usize, usize) {
        let (_, rows, cols) = Self::matrices(shape);
        (rows, cols)
    }

    /// A Muon parameter as (count, rows, cols) matrices, as KellerJordan/Muon's `muon_update` takes
    /// them: a 3-D tensor is a batch of shape\[1\] × shape\[2\] matrices, each orthogonalised (and
    /// its lr scaled by `adjust_lr`) on its own; a 4-D one (a conv kernel) and higher is one
    /// shape\[0\] × rest matrix; a 2-D one itself.
    pub fn matrices(shape: &[usize]) -> (usize, usize, usize) {
        match *shape {
            [b, r, c] => (b, r, c),
            _ => (1, shape[0], shape[1..].iter().product()),
        }
    }

    /// Shape groups: ((rows, cols), member parameter indices) of the Muon parameters, in
    /// first-seen order, and each parameter's (group, index of its first matrix in it); a shape
    /// whose matrices would not fit one of `ctx`'s bindings (or grid dimensions) is split over
    /// several groups (a 3-D parameter's matrices stay together).
    pub(crate) fn shape_groups(&self, ctx: &Context) -> super::Stacks<(usize, usize)> {
        let items = self.params.iter().map(|(meta, _, route)| {
            let (count, rows, cols) = Self::matrices(&meta.shape);
            (*route == Route::Muon).then_some(((rows, cols), rows * cols, count))
        });
        super::batched_stacks(ctx, items)
    }

    /// The auxiliary AdamW builder and the map from our parameter indices to its ids.
    pub(crate) fn aux_builder(&self) -> Result<(OptimizerBuilder, Vec<Option<ParamId>>)> {
        let mut b = OptimizerBuilder::new(self.aux.clone());
        let mut map = vec![None; self.params.len()];
        for (i, (meta, data, route)) in self.params.iter().enumerate() {
            if *route == Route::AdamW {
                map[i] = Some(b.param(&meta.name, data, &meta.shape, b.default_group())?);
            }
        }
        Ok((b, map))
    }
}

/// Muon's checkpoint: algorithm "muon"; `hyper` = {"muon": config, "aux": AdamW config,
/// "aux_step": n}; groups = [Muon] + the aux AdamW's; states: `momentum_buffer` for Muon parameters,
/// the AdamW's `m`, `v` for routed ones. Shared by the GPU and CPU optimizers.
pub(crate) fn muon_snapshot(
    config: &MuonConfig,
    t: u64,
    params: &[ParamMeta],
    aux_ids: &[Option<ParamId>],
    values: Vec<Vec<f32>>,
    mut momentum: Vec<Option<Vec<f32>>>,
    aux: Option<Snapshot>,
) -> Snapshot {
    let mut groups = vec![super::GroupState { lr: config.lr, weight_decay: config.weight_decay, base_lr: config.lr }];
    let mut hyper = serde_json::json!({"muon": config});
    if let Some(a) = &aux {
        groups.extend(a.groups.iter().copied());
        hyper["aux"] = a.hyper.clone();
        hyper["aux_step"] = serde_json::json!(a.step);
    }
    let states = (0..params.len())
        .map(|i| match (aux_ids[i], &aux) {
            (Some(aid), Some(a)) => a.states[aid.0].clone(),
            _ => vec![("momentum_buffer".to_string(), momentum[i].take().unwrap_or_default())],
        })
        .collect();
    Snapshot { algorithm: "muon".into(), hyper, step: t, skipped: 0, groups, params: params.to_vec(), values, states }
}

/// Splits and checks a Muon checkpoint: (config, momentum per Muon parameter, the aux AdamW's own
/// snapshot). Nothing is changed here; the caller restores the aux first (it validates before it
/// writes), then the Muon tensors.
#[allow(clippy::type_complexity)]
pub(crate) fn split_muon_snapshot(
    s: &Snapshot,
    params: &[ParamMeta],
    aux_ids: &[Option<ParamId>],
    aux_params: &[ParamMeta],
) -> Result<(MuonConfig, Vec<Option<Vec<f32>>>, Option<Snapshot>)> {
    s.check_common("muon", params)?;
    let bad = |r: &str| Error::Checkpoint { path: "<snapshot>".into(), reason: r.into() };
    let config: MuonConfig =
        serde_json::from_value(s.hyper["muon"].clone()).map_err(|e| bad(&format!("muon config: {e}")))?;
    config.validate()?;
    let mut momentum = vec![None; params.len()];
    let mut aux_values = vec![Vec::new(); aux_params.len()];
    let mut aux_states = vec![Vec::new(); aux_params.len()];
    for (i, p) in params.iter().enumerate() {
        match aux_ids[i] {
            None => {
                let m = s.states_of(i, &["momentum_buffer"])?[0];
                if m.len() != p.len() {
                    return Err(bad(&format!("momentum of {} has the wrong size", p.name)));
                }
                momentum[i] = Some(m.clone());
            }
            Some(aid) => {
                aux_values[aid.0] = s.values[i].clone();
                aux_states[aid.0] = s.states[i].clone();
            }
        }
    }
    let aux = if aux_params.is_empty() {
        None
    } else {
        let step = s.hyper["aux_step"].as_u64().ok_or_else(|| bad("aux_step missing"))?;
        Some(Snapshot {
            algorithm: "adamw".into(),
            hyper: s.hyper["aux"].clone(),
            step,
            skipped: 0,
            groups: s.groups.get(1..).unwrap_or_default().to_vec(),
            params: aux_params.to_vec(),
            values: aux_values,
            states: aux_states,
        })
    };
    Ok((config, momentum, aux))
}

/// A stack's NS5 chain on `u` and the update pass reading its output into `p`.
fn ns_and_apply(
    ctx: &Context,
    config: &MuonConfig,
    u: &Tensor,
    p: &Tensor,
    uniform: &wgpu::Buffer,
) -> Result<(Ns5Plan, BoundKernel)> {
    let ns = Ns5Plan::new(ctx, u, config.ns_steps, config.coefficients())?;
    let apply = ctx.bind(elementwise_passes(p.len()).1, &[uniform, ns.output().buffer(), p.buffer()])?;
    Ok((ns, apply))
}

struct ShapeGroup {
    rows: usize,
    cols: usize,
    p: Tensor,
    g: Tensor,
    m: Tensor,
    /// NS5's input (the Nesterov update); read by `ns`'s bind groups.
    u: Tensor,
    ns: Ns5Plan,
    momentum: BoundKernel,
    apply: BoundKernel,
    uniform: wgpu::Buffer,
}

/// The GPU Muon optimizer with its auxiliary AdamW. `set_lr(GroupId(0), ..)` sets Muon's lr,
/// `GroupId(1)` the AdamW's.
pub struct MuonOptimizer {
    ctx: Context,
    config: MuonConfig,
    params: Vec<ParamMeta>,
    /// Per parameter: (shape group, index) for Muon parameters.
    loc: Vec<Option<(usize, usize)>>,
    groups: Vec<ShapeGroup>,
    aux: Option<super::Optimizer>,
    aux_ids: Vec<Option<ParamId>>,
    t: u64,
    /// NaN/Inf in a written gradient (Muon or AdamW parameter) skips the whole step.
    guard: HostGuard,
}

impl MuonOptimizer {
    fn new(ctx: &Context, b: MuonBuilder) -> Result<Self> {
        let (stacks, loc) = b.shape_groups(ctx);
        let mut groups = Vec::new();
        for ((rows, cols), members) in stacks {
            let init: Vec<f32> = members.iter().flat_map(|&i| b.params[i].1.iter().copied()).collect();
            // Matrices in the stack (a 3-D parameter brings several): the passes' grid holds them.
            let n = init.len() / (rows * cols);
            if n > ctx.max_workgroups_per_dim() as usize {
                return Err(Error::Invalid(format!(
                    "muon: parameter {:?} holds {n} matrices of {rows}x{cols}; at most {} (one grid dimension) per stack",
                    b.params[members[0]].0.name,
                    ctx.max_workgroups_per_dim()
                )));
            }
            let shape = [n, rows, cols];
            let p = Tensor::from_slice(ctx, &init, &shape)?;
            let g = Tensor::zeros(ctx, &shape)?;
            let m = Tensor::zeros(ctx, &shape)?;
            let u = Tensor::zeros(ctx, &shape)?;
            let uniform = ctx.uniform_buffer("muon params", 32);
            let momentum =
                ctx.bind(elementwise_passes(n * rows * cols).0, &[&uniform, g.buffer(), m.buffer(), u.buffer()])?;
            let (ns, apply) = ns_and_apply(ctx, &b.config, &u, &p, &uniform)?;
            groups.push(ShapeGroup { rows, cols, p, g, m, u, ns, momentum, apply, uniform });
        }
        let (ab, aux_ids) = b.aux_builder()?;
        let aux = if aux_ids.iter().any(Option::is_some) { Some(ab.build(ctx)?) } else { None };
        let params: Vec<ParamMeta> = b.params.into_iter().map(|p| p.0).collect();
        let guard = HostGuard::new(params.len());
        Ok(MuonOptimizer { ctx: ctx.clone(), config: b.config, params, loc, groups, aux, aux_ids, t: 0, guard })
    }

    /// Number of batched NS5 chains (one per distinct matrix shape, more where the matrices of a
    /// shape would not fit one storage binding).
    pub fn shape_groups(&self) -> usize {
        self.groups.len()
    }

    fn meta(&self, id: ParamId) -> Result<&ParamMeta> {
        self.params.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))
    }

    /// A Muon parameter's shape group and the element offset of its matrix there.
    fn muon_slot(&self, id: ParamId) -> Result<Option<(&ShapeGroup, usize)>> {
        self.meta(id)?;
        Ok(self.loc[id.0].map(|(g, k)| {
            let grp = &self.groups[g];
            (grp, k * grp.rows * grp.cols)
        }))
    }

    fn aux_mut(&mut self, id: ParamId) -> Result<(&mut super::Optimizer, ParamId)> {
        let aid = self.aux_ids[id.0].ok_or_else(|| Error::Invalid("not an AdamW parameter".into()))?;
        Ok((self.aux.as_mut().expect("aux exists when it has parameters"), aid))
    }

    fn write(&mut self, id: ParamId, data: &[f32], grad: bool) -> Result<()> {
        let meta = self.meta(id)?;
        if data.len() != meta.len() {
            return Err(Error::Shape {
                what: format!("{} of {}", if grad { "gradient" } else { "parameter" }, meta.name),
                expected: meta.shape.clone(),
                got: vec![data.len()],
            });
        }
        match self.muon_slot(id)? {
            Some((grp, at)) => {
                write_at(&self.ctx, if grad { &grp.g } else { &grp.p }, at, data);
                Ok(())
            }
            None => {
                let (aux, aid) = self.aux_mut(id)?;
                if grad {
                    aux.write_grad(aid, data)
                } else {
                    aux.write_param(aid, data)
                }
            }
        }
    }

    fn read(&mut self, id: ParamId, which: &str) -> Result<Vec<f32>> {
        let len = self.meta(id)?.len();
        match self.muon_slot(id)? {
            Some((grp, at)) => {
                let t = match which {
                    "param" => &grp.p,
                    "momentum_buffer" => &grp.m,
                    other => return Err(Error::Invalid(format!("muon has no state {other:?}"))),
                };
                read_at(&self.ctx, t, at, len)
            }
            None => {
                let (aux, aid) = self.aux_mut(id)?;
                if which == "param" {
                    aux.read_param(aid)
                } else {
                    aux.read_state(aid, which)
                }
            }
        }
    }

    /// Records Muon's part of a step (all shape groups); returns the dispatch count.
    #[doc(hidden)]
    pub fn record_muon(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        let mut n = 0;
        for grp in &self.groups {
            let len = grp.p.len();
            let p = self.config.params(len, grp.rows, grp.cols);
            self.ctx.queue().write_buffer(&grp.uniform, 0, bytemuck::bytes_of(&p));
            let wg = elementwise_passes(len).2;
            n += grp.momentum.record(&self.ctx, pass, wg);
            n += grp.ns.record(pass);
            n += grp.apply.record(&self.ctx, pass, wg);
        }
        n
    }
}

impl Stepper for MuonOptimizer {
    fn step(&mut self) -> Result<()> {
        // A gradient with NaN or Inf (not rewritten since) skips the step; nothing changes.
        if self.guard.skip_step() {
            return Ok(());
        }
        let mut enc = self.ctx.encoder("muon step");
        let mut pass = crate::gpu::compute_pass(&mut enc, "muon step");
        self.ctx.scoped("muon step", || self.record_muon(&mut pass))?;
        drop(pass);
        self.ctx.submit(enc);
        if let Some(aux) = &mut self.aux {
            aux.step()?;
        }
        self.t += 1;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        meta_at(&self.params, id, Some(grad.len()))?;
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
        self.read(id, "param")
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        self.read(id, state)
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
        match group.0 {
            0 => {
                super::algorithm::check_lr_wd(lr, 0.0)?;
                self.config.lr = lr;
                Ok(())
            }
            1 => match &mut self.aux {
                Some(aux) => aux.set_lr(GroupId(0), lr),
                None => Err(Error::Invalid("no AdamW parameters".into())),
            },
            g => Err(Error::Invalid(format!("no group {g} (0: Muon, 1: AdamW)"))),
        }
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        match group.0 {
            0 => {
                super::algorithm::check_lr_wd(0.0, wd)?;
                self.config.weight_decay = wd;
                Ok(())
            }
            1 => match &mut self.aux {
                Some(aux) => aux.set_weight_decay(GroupId(0), wd),
                None => Err(Error::Invalid("no AdamW parameters".into())),
            },
            g => Err(Error::Invalid(format!("no group {g} (0: Muon, 1: AdamW)"))),
        }
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let n = self.params.len();
        let values = (0..n).map(|i| self.read(ParamId(i), "param")).collect::<Result<Vec<_>>>()?;
        let momentum = (0..n)
            .map(|i| if self.loc[i].is_some() { self.read(ParamId(i), "momentum_buffer").map(Some) } else { Ok(None) })
            .collect::<Result<Vec<_>>>()?;
        let aux = match &mut self.aux {
            Some(a) => Some(a.snapshot()?),
            None => None,
        };
        let mut s = muon_snapshot(&self.config, self.t, &self.params, &self.aux_ids, values, momentum, aux);
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let aux_params = self.aux.as_ref().map(|a| a.params().to_vec()).unwrap_or_default();
        let (config, momentum, aux) = split_muon_snapshot(&s, &self.params, &self.aux_ids, &aux_params)?;
        // NS5's steps and coefficients are planned into each stack's chain: plan first, then the
        // aux AdamW (which checks before it writes), then change anything, so a failure changes
        // nothing.
        let plans = if (config.ns_steps, config.ns_coefficients) != (self.config.ns_steps, self.config.ns_coefficients)
        {
            let plans = self.groups.iter().map(|g| ns_and_apply(&self.ctx, &config, &g.u, &g.p, &g.uniform));
            Some(plans.collect::<Result<Vec<_>>>()?)
        } else {
            None
        };
        if let (Some(a), Some(snap)) = (&mut self.aux, aux) {
            a.restore(snap)?;
        }
        for (g, (ns, apply)) in self.groups.iter_mut().zip(plans.into_iter().flatten()) {
            (g.ns, g.apply) = (ns, apply);
        }
        for (i, m) in momentum.into_iter().enumerate() {
            if let (Some(m), Some((grp, at))) = (m, self.muon_slot(ParamId(i))?) {
                write_at(&self.ctx, &grp.m, at, &m);
                write_at(&self.ctx, &grp.p, at, &s.values[i]);
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
