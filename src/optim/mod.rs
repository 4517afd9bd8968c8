//! User-facing optimizers: parameter groups, the GPU [`Optimizer`] over flat arenas, the shared
//! [`Stepper`] interface (also implemented by the CPU reference), and checkpoints.
//!
//! ```no_run
//! use gpuopt::{Context, optim::{AdamW, GroupOptions, OptimizerBuilder, Stepper}};
//! # fn main() -> gpuopt::Result<()> {
//! let ctx = Context::new()?;
//! let mut b = OptimizerBuilder::new(AdamW { lr: 1e-3, ..AdamW::default() });
//! let no_decay = b.group(GroupOptions { weight_decay: Some(0.0), ..Default::default() })?;
//! let w = b.param("w", &[0.5; 6], &[2, 3], b.default_group())?;
//! let bias = b.param("b", &[0.0; 3], &[3], no_decay)?;
//! let mut opt = b.build(&ctx)?;
//! opt.write_grad(w, &[0.1; 6])?;
//! opt.write_grad(bias, &[0.1; 3])?;
//! opt.step()?;                      // one submit, nothing read back
//! let w_now = opt.read_param(w)?;   // reads back on request
//! # Ok(()) }
//! ```

pub mod algorithm;
pub mod asgo;
pub mod auon;
pub mod checkpoint;
pub mod dasgo;
pub mod distributed_lion;
mod gpu;
pub mod muon;
pub mod oasis;
pub mod reg;
pub mod shampoo;

pub use algorithm::{
    AdEMAMix, AdaBound, AdaHessian, AdaMomentum, AdamW, Algorithm, Ano, KMap, Lion, Mars, MarsVariant, Sgd, SignSgd,
    Signum, Sophia, SophiaVariant,
};
pub use asgo::{Asgo, AsgoConfig};
pub use auon::{AuonBuilder, AuonConfig, AuonOptimizer, AuonVariant};
pub use checkpoint::Snapshot;
pub use dasgo::{Dasgo, DasgoConfig};
pub use gpu::Optimizer;
pub use muon::{AdjustLr, MuonBuilder, MuonConfig, MuonOptimizer};
pub use oasis::{FlatAlgorithm, FlatOptimizer, OasisConfig, SaniaConfig, SaniaPreconditioner, SaniaVariant};
pub use reg::{RegBuilder, RegConfig, RegOptimizer};
pub use shampoo::{Graft, Shampoo, ShampooConfig, ShampooParam};

use crate::error::{Error, Result};
use crate::kernels::arena::{Hyper, Hypers, MAX_GROUPS};
use std::path::Path;

/// A parameter's handle in its optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// A parameter group's handle. Group 0 is the default group (the algorithm's own lr and decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

/// Per-group overrides of the algorithm's learning rate and weight decay.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupOptions {
    /// Learning rate (default: the algorithm's).
    pub lr: Option<f64>,
    /// Weight decay (default: the algorithm's), applied in the algorithm's convention.
    pub weight_decay: Option<f64>,
}

/// A parameter group's current values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupState {
    /// Learning rate now.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Learning rate at construction (AdaBound scales `final_lr` by lr / base_lr).
    pub base_lr: f64,
}

/// A parameter's name, shape and group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamMeta {
    /// Unique name (used in checkpoints).
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Its group.
    pub group: usize,
}

impl ParamMeta {
    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the parameter has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects the algorithm, groups and initial parameters, then builds a GPU [`Optimizer`] or the CPU
/// reference ([`crate::reference::CpuOptimizer`]) with identical semantics.
#[derive(Clone, Debug)]
pub struct OptimizerBuilder {
    pub(crate) algorithm: Algorithm,
    pub(crate) groups: Vec<GroupState>,
    pub(crate) params: Vec<ParamMeta>,
    pub(crate) init: Vec<Vec<f32>>,
    pub(crate) guard: bool,
}

impl OptimizerBuilder {
    /// A builder for `algorithm` with one default group.
    pub fn new(algorithm: impl Into<Algorithm>) -> Self {
        let algorithm = algorithm.into();
        let (lr, wd) = algorithm.lr_wd();
        OptimizerBuilder {
            algorithm,
            groups: vec![GroupState { lr, weight_decay: wd, base_lr: lr }],
            params: Vec::new(),
            init: Vec::new(),
            guard: false,
        }
    }

    /// The default group (the algorithm's own lr and weight decay).
    pub fn default_group(&self) -> GroupId {
        GroupId(0)
    }

    /// Adds a parameter group with overrides (at most 16 groups in all).
    pub fn group(&mut self, opts: GroupOptions) -> Result<GroupId> {
        if self.groups.len() >= MAX_GROUPS {
            return Err(Error::Invalid(format!("at most {MAX_GROUPS} parameter groups")));
        }
        let (lr0, wd0) = self.algorithm.lr_wd();
        let lr = opts.lr.unwrap_or(lr0);
        let wd = opts.weight_decay.unwrap_or(wd0);
        let group = GroupState { lr, weight_decay: wd, base_lr: lr };
        // The checks a checkpoint's groups get (AdaBound divides by each group's initial lr).
        self.algorithm.check_group(&group)?;
        self.groups.push(group);
        Ok(GroupId(self.groups.len() - 1))
    }

    /// Adds a parameter with its initial values (row-major `data` of `shape`).
    pub fn param(&mut self, name: &str, data: &[f32], shape: &[usize], group: GroupId) -> Result<ParamId> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::Shape {
                what: format!("parameter {name}"),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        if group.0 >= self.groups.len() {
            return Err(Error::Invalid(format!("parameter {name}: no group {}", group.0)));
        }
        if self.params.iter().any(|p| p.name == name) {
            return Err(Error::Invalid(format!("duplicate parameter name {name:?}")));
        }
        self.params.push(ParamMeta { name: name.to_string(), shape: shape.to_vec(), group: group.0 });
        self.init.push(data.to_vec());
        Ok(ParamId(self.params.len() - 1))
    }

    /// Adds a parameter from an ndarray.
    pub fn param_array(&mut self, name: &str, a: ndarray::ArrayViewD<'_, f32>, group: GroupId) -> Result<ParamId> {
        let data: Vec<f32> = a.iter().copied().collect();
        self.param(name, &data, a.shape(), group)
    }

    /// Opt in to the non-finite guard: a step whose gradients hold NaN/Inf leaves parameters and state
    /// untouched, is not counted, and is reported by [`Stepper::found_non_finite`].
    pub fn guard_non_finite(&mut self, on: bool) -> &mut Self {
        self.guard = on;
        self
    }

    /// Builds the GPU optimizer.
    pub fn build(self, ctx: &crate::Context) -> Result<Optimizer> {
        self.algorithm.validate()?;
        self.warn_unread();
        Optimizer::new(ctx, self)
    }

    /// Builds the CPU reference with the same semantics.
    ///
    /// ```
    /// use gpuopt::optim::{OptimizerBuilder, Sgd, Stepper};
    /// let mut b = OptimizerBuilder::new(Sgd { lr: 0.1, ..Sgd::default() });
    /// let w = b.param("w", &[1.0, 2.0], &[2], b.default_group())?;
    /// let mut opt = b.build_cpu()?; // the same calls as the GPU optimizer from build(&ctx)
    /// opt.write_grad(w, &[1.0, -1.0])?;
    /// opt.step()?;
    /// assert_eq!(opt.read_param(w)?, vec![0.9, 2.1]);
    /// # Ok::<(), gpuopt::Error>(())
    /// ```
    pub fn build_cpu(self) -> Result<crate::reference::CpuOptimizer> {
        self.algorithm.validate()?;
        self.warn_unread();
        Ok(crate::reference::CpuOptimizer::new(self))
    }

    fn warn_unread(&self) {
        for name in self.algorithm.unread_settings() {
            log::warn!("{}: {name} is set but not read by this configuration; ignored", self.algorithm.name());
        }
    }
}

/// The host-side state every backend shares: algorithm, groups, step count.
#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub algorithm: Algorithm,
    pub groups: Vec<GroupState>,
    pub params: Vec<ParamMeta>,
    pub t: u64,
    pub skipped: u64,
    pub guard: bool,
    pub last_non_finite: bool,
}

impl Core {
    pub fn new(b: &OptimizerBuilder) -> Self {
        Core {
            algorithm: b.algorithm.clone(),
            groups: b.groups.clone(),
            params: b.params.clone(),
            t: 0,
            skipped: 0,
            guard: b.guard,
            last_non_finite: false,
        }
    }

    /// Per-group scalars for step `t`.
    pub fn hypers(&self, t: u64) -> Hypers {
        let mut h = Hypers { g: [Hyper::default(); MAX_GROUPS] };
        for (slot, g) in h.g.iter_mut().zip(&self.groups) {
            *slot = self.algorithm.hyper(t, g.lr, g.weight_decay, g.base_lr);
        }
        h
    }

    pub fn param(&self, id: ParamId) -> Result<&ParamMeta> {
        self.params.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))
    }

    pub fn check_len(&self, id: ParamId, len: usize, what: &str) -> Result<&ParamMeta> {
        let p = self.param(id)?;
        if p.len() != len {
            return Err(Error::Shape {
                what: format!("{what} of {}", p.name),
                expected: p.shape.clone(),
                got: vec![len],
            });
        }
        Ok(p)
    }

    pub fn state_index(&self, name: &str) -> Result<usize> {
        self.algorithm
            .states()
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| Error::Invalid(format!("{} has no state {name:?}", self.algorithm.name())))
    }

    pub fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        algorithm::check_lr_wd(lr, 0.0)?;
        let g = self.groups.get_mut(group.0).ok_or_else(|| Error::Invalid(format!("no group {}", group.0)))?;
        g.lr = lr;
        Ok(())
    }

    pub fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        algorithm::check_lr_wd(0.0, wd)?;
        let g = self.groups.get_mut(group.0).ok_or_else(|| Error::Invalid(format!("no group {}", group.0)))?;
        g.weight_decay = wd;
        Ok(())
    }
}

/// The NaN/Inf guard of the optimizers that take host gradients (Muon, AuON, REG, ASGO, DASGO, Shampoo): which gradients
/// written since the last step held NaN or Inf (a finite rewrite of the same parameter clears its
/// mark; a non-finite one is never written), and the steps skipped for them.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostGuard {
    bad: Vec<bool>,
    skipped: u64,
    last_skipped: bool,
}

impl HostGuard {
    /// A guard over `params` parameters, none marked.
    pub(crate) fn new(params: usize) -> Self {
        HostGuard { bad: vec![false; params], ..Default::default() }
    }

    /// A new parameter, unmarked.
    pub(crate) fn add_param(&mut self) {
        self.bad.push(false);
    }

    /// Marks or clears parameter `i` for `grad`; true when the gradient is finite and may be written.
    pub(crate) fn admit(&mut self, i: usize, grad: &[f32]) -> bool {
        self.bad[i] = crate::reference::has_non_finite(grad);
        !self.bad[i]
    }

    /// At a step: whether it must be skipped (then counted); clears every mark.
    pub(crate) fn skip_step(&mut self) -> bool {
        self.skip_step_with(false)
    }

    /// As [`HostGuard::skip_step`], the step also skipped when `device_bad` (a gradient the device
    /// found non-finite).
    pub(crate) fn skip_step_with(&mut self, device_bad: bool) -> bool {
        self.last_skipped = device_bad || self.bad.iter().any(|&b| b);
        self.bad.fill(false);
        self.skipped += self.last_skipped as u64;
        self.last_skipped
    }

    /// Whether the last step was skipped.
    pub(crate) fn last_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Steps skipped so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// After a restore: the file's skip count. The marks stay: a restore does not touch the
    /// gradients, so one refused since the last step still stands in the way of the next step
    /// (which would otherwise run on the gradient written before it) until it is rewritten.
    pub(crate) fn reset(&mut self, skipped: u64) {
        self.skipped = skipped;
        self.last_skipped = false;
    }
}

/// An epsilon the kernels add in f32 to a denominator (or a floor or scale they divide by): it must
/// be > 0 and a normal f32. 0, or a value that rounds to 0 or to a subnormal (which a GPU may flush to 0),
/// gives 0/0 for a zero gradient and, through a norm, NaN for a whole tensor; one above f32's range
/// is Inf.
pub(crate) fn check_f32_eps(name: &str, v: f64) -> Result<()> {
    check_normal_f32(name, v, "the kernels use it in f32, where 0 or a subnormal gives 0/0 for a zero gradient")
}

/// A setting the kernels hold in f32 and divide by or compare against: > 0 and a normal f32, else an
/// error naming it, with `why`.
pub(crate) fn check_normal_f32(name: &str, v: f64, why: &str) -> Result<()> {
    if v > 0.0 && (v as f32).is_normal() {
        return Ok(());
    }
    Err(Error::Hyperparameter {
        name: name.into(),
        value: v,
        reason: format!("must be > 0 and a normal f32 (about 1.2e-38 to 3.4e38): {why}"),
    })
}

/// The f32 factors of a normalised step, p ← decay·p − step·U/(‖U‖ + 1e-16): step = lr·scale and
/// decay = 1 − lr·wd, or an error naming lr when either (or step·1e16, the zero-norm guard's
/// largest factor) overflows f32, which a finite f64 lr can. Checked before a step changes anything.
pub(crate) fn f32_step(lr: f64, wd: f64, scale: f64) -> Result<(f32, f32)> {
    let (step, decay) = ((lr * scale) as f32, (1.0 - lr * wd) as f32);
    if !(step * 1e16).is_finite() || !decay.is_finite() {
        return Err(Error::Hyperparameter {
            name: "lr".into(),
            value: lr,
            reason: format!("lr x {scale:e} x 1e16 or 1 - lr x weight_decay overflows f32"),
        });
    }
    Ok((step, decay))
}

/// Changes a single-group optimizer's config: `change` is applied to a copy, which must pass
/// `validate` before it replaces the config, so a bad value changes nothing.
pub(crate) fn update_config<C: Clone>(
    config: &mut C,
    group: GroupId,
    change: impl FnOnce(&mut C),
    validate: impl Fn(&C) -> Result<()>,
) -> Result<()> {
    if group.0 != 0 {
        return Err(Error::Invalid(format!("no group {} (this optimizer has one)", group.0)));
    }
    let mut next = config.clone();
    change(&mut next);
    validate(&next)?;
    *config = next;
    Ok(())
}

/// [`stacks`]' result: (key, member indices) per stack, and each item's (stack, index in it).
pub(crate) type Stacks<K> = (Vec<(K, Vec<usize>)>, Vec<Option<(usize, usize)>>);

/// Stacks of same-shape items for batched chains: item i with `Some((key, elements))` joins the
/// last stack of its key while that stack stays within `ctx`'s largest binding and holds fewer
/// members than a grid dimension's workgroups (passes put the stack's index there), else starts
/// one; `None` items are left out. Returns (key, member indices) in first-seen order, and each
/// item's (stack, index in it).
pub(crate) fn stacks<K: PartialEq>(
    ctx: &crate::Context,
    items: impl IntoIterator<Item = Option<(K, usize)>>,
) -> Stacks<K> {
    batched_stacks(ctx, items.into_iter().map(|item| item.map(|(key, len)| (key, len, 1))))
}

/// [`stacks`] of items that each fill `count` consecutive members of `len` elements (a batch of
/// matrices, as Muon takes a 3-D tensor): `Some((key, len, count))`. Returns (key, item indices) per
/// stack and each item's (stack, first member).
pub(crate) fn batched_stacks<K: PartialEq>(
    ctx: &crate::Context,
    items: impl IntoIterator<Item = Option<(K, usize, usize)>>,
) -> Stacks<K> {
    let limits = stack_limits(ctx);
    // (key, item indices, members so far)
    let mut out: Vec<(K, Vec<usize>, usize)> = Vec::new();
    let mut slots = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        slots.push(None);
        let Some((key, len, count)) = item else { continue };
        let room = |s: &(K, Vec<usize>, usize)| stack_has_room(s.2, len, count, limits);
        let at = match out.iter().rposition(|s| s.0 == key).filter(|&s| room(&out[s])) {
            Some(s) => s,
            None => {
                out.push((key, Vec::new(), 0));
                out.len() - 1
            }
        };
        out[at].1.push(i);
        slots[i] = Some((at, out[at].2));
        out[at].2 += count;
    }
    (out.into_iter().map(|(key, items, _)| (key, items)).collect(), slots)
}

/// The bounds of a stack on `ctx`: (elements in one storage binding, workgroups in one grid
/// dimension, where the stack index sits).
pub(crate) fn stack_limits(ctx: &crate::Context) -> (usize, usize) {
    ((ctx.max_binding_bytes() / 4) as usize, ctx.max_workgroups_per_dim() as usize)
}

/// Whether a stack of `members` members of `len` elements each takes `count` more within
/// `(max_elements, max_members)`: the rule every stacked optimizer follows, at build time
/// ([`stacks`]) and when parameters are added later (ASGO, DASGO).
pub(crate) fn stack_has_room(
    members: usize,
    len: usize,
    count: usize,
    (max_elements, max_members): (usize, usize),
) -> bool {
    members + count <= max_members && (members + count).checked_mul(len).is_some_and(|e| e <= max_elements)
}

/// The metadata of parameter `id`, checking `len` (the element count of a write) when given.
pub(crate) fn meta_at(params: &[ParamMeta], id: ParamId, len: Option<usize>) -> Result<&ParamMeta> {
    let meta = params.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))?;
    if let Some(len) = len {
        if len != meta.len() {
            return Err(Error::Shape { what: meta.name.clone(), expected: meta.shape.clone(), got: vec![len] });
        }
    }
    Ok(meta)
}

/// The rows × cols view of a new matrix parameter of ASGO or DASGO (`who`): rank ≥ 2 viewed as
/// shape\[0\] × rest, non-empty, `data` of its size, and a name not yet in `params`.
pub(crate) fn matrix_param(
    who: &str,
    params: &[ParamMeta],
    name: &str,
    data: &[f32],
    shape: &[usize],
) -> Result<(usize, usize)> {
    let n: usize = shape.iter().product();
    if shape.len() < 2 || n == 0 {
        return Err(Error::Invalid(format!(
            "{who} parameter {name:?} has shape {shape:?}: {who} takes non-empty matrices (rank 2, or higher \
             viewed as rows x rest); give vectors and empty tensors to AdamW"
        )));
    }
    if n != data.len() {
        return Err(Error::Shape {
            what: format!("{who} parameter {name:?} (data for its shape)"),
            expected: shape.to_vec(),
            got: vec![data.len()],
        });
    }
    if params.iter().any(|m| m.name == name) {
        return Err(Error::Invalid(format!("{who}: a parameter is already named {name:?}")));
    }
    Ok((shape[0], n / shape[0]))
}

/// Where parameter `id` of a stacked optimizer lives: (stack, index in it), `None` for an empty
/// parameter; checks `len` (the element count of a write) when given.
pub(crate) fn stack_slot(
    params: &[ParamMeta],
    slots: &[Option<(usize, usize)>],
    id: ParamId,
    len: Option<usize>,
) -> Result<Option<(usize, usize)>> {
    meta_at(params, id, len)?;
    Ok(slots[id.0])
}

/// A parameter waiting on the host to join its stack (ASGO, DASGO: adding many grows a stack once):
/// its place, and its values and gradient (if written) until the stack has room.
pub(crate) struct Waiting {
    pub stack: usize,
    pub z: usize,
    pub values: Vec<f32>,
    pub grad: Option<Vec<f32>>,
}

/// Keeps a write of values (or a gradient, `grad`) to the parameter at (stack, z) in its waiting
/// entry; false when it is not waiting.
pub(crate) fn write_waiting(waiting: &mut [Waiting], (stack, z): (usize, usize), data: &[f32], grad: bool) -> bool {
    match waiting.iter_mut().find(|w| (w.stack, w.z) == (stack, z)) {
        Some(w) if grad => w.grad = Some(data.to_vec()),
        Some(w) => w.values = data.to_vec(),
        None => return false,
    }
    true
}

/// Writes `data` at element `at` of `t` (staged: it lands before the work of the next submit).
pub(crate) fn write_at(ctx: &crate::Context, t: &crate::Tensor, at: usize, data: &[f32]) {
    ctx.queue().write_buffer(t.buffer(), 4 * at as u64, bytemuck::cast_slice(data));
}

/// Reads `len` elements of `t` from element `at` (waits for the work submitted so far).
pub(crate) fn read_at(ctx: &crate::Context, t: &crate::Tensor, at: usize, len: usize) -> Result<Vec<f32>> {
    ctx.read_f32(t.buffer(), 4 * at as u64, len)
}

/// Named state tensors per parameter, as [`Snapshot::states`] holds them.
pub(crate) type NamedStates = Vec<Vec<(String, Vec<f32>)>>;

/// Every parameter's values and its state tensors `names`, read through the optimizer's own
/// `read_param` / `read_state` (the checkpoints of AuON, REG, OASIS/SANIA).
pub(crate) fn read_params_and_states<S: Stepper + ?Sized>(
    opt: &mut S,
    names: &[&str],
) -> Result<(Vec<Vec<f32>>, NamedStates)> {
    let n = opt.params().len();
    let values = (0..n).map(|i| opt.read_param(ParamId(i))).collect::<Result<Vec<_>>>()?;
    let states = (0..n)
        .map(|i| names.iter().map(|k| Ok((k.to_string(), opt.read_state(ParamId(i), k)?))).collect())
        .collect::<Result<Vec<_>>>()?;
    Ok((values, states))
}

/// The checkpoint of a single-config optimizer (AuON, REG): `hyper` is the config, one group.
pub(crate) fn config_snapshot<C: serde::Serialize>(
    name: &str,
    config: &C,
    (lr, weight_decay): (f64, f64),
    t: u64,
    params: &[ParamMeta],
    values: Vec<Vec<f32>>,
    states: Vec<Vec<(String, Vec<f32>)>>,
) -> Snapshot {
    Snapshot {
        algorithm: name.into(),
        hyper: serde_json::to_value(config).expect("configs serialise"),
        step: t,
        skipped: 0,
        groups: vec![GroupState { lr, weight_decay, base_lr: lr }],
        params: params.to_vec(),
        values,
        states,
    }
}

/// Checks a single-config optimizer's checkpoint: name, parameters, the config (validated), and
/// state tensors named `names` of the lengths `len(param, name)` gives. Returns the config and the
/// states in `names` order. Nothing is changed here.
pub(crate) fn check_config_snapshot<C: serde::de::DeserializeOwned>(
    s: &Snapshot,
    name: &str,
    params: &[ParamMeta],
    names: &[&str],
    len: impl Fn(&ParamMeta, &str) -> usize,
    validate: impl Fn(&C) -> Result<()>,
) -> Result<(C, Vec<Vec<Vec<f32>>>)> {
    s.check_common(name, params)?;
    let bad = |r: String| Error::Checkpoint { path: "<snapshot>".into(), reason: r };
    let config: C = serde_json::from_value(s.hyper.clone()).map_err(|e| bad(format!("{name} config: {e}")))?;
    validate(&config)?;
    let mut states = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let st = s.states_of(i, names)?;
        for (n, v) in names.iter().zip(&st) {
            if v.len() != len(p, n) {
                return Err(bad(format!("state {n} of {} has {} values, expected {}", p.name, v.len(), len(p, n))));
            }
        }
        states.push(st.into_iter().cloned().collect());
    }
    Ok((config, states))
}

/// What every optimizer backend (GPU, CPU reference) offers.
pub trait Stepper {
    /// One optimizer step over every parameter with the gradients written since the last step.
    fn step(&mut self) -> Result<()>;
    /// Writes a parameter's gradient (row-major, its element count).
    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()>;
    /// Overwrites a parameter's values.
    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()>;
    /// Writes this step's Hessian-diagonal estimate of a parameter (AdaHessian, Sophia).
    fn write_hess_diag(&mut self, _id: ParamId, _diag: &[f32]) -> Result<()> {
        Err(Error::Invalid("this optimizer takes no Hessian diagonal".into()))
    }
    /// Gives this step's loss value (SANIA's Polyak step needs it).
    fn write_loss(&mut self, _loss: f32) -> Result<()> {
        Err(Error::Invalid("this optimizer takes no loss value".into()))
    }
    /// Reads a parameter's values (the GPU backend waits for the device).
    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>>;
    /// Reads a state tensor by name (see [`Algorithm::states`]).
    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>>;
    /// Steps taken (skipped steps are not counted).
    fn step_count(&mut self) -> Result<u64>;
    /// Whether the last step was skipped for non-finite gradients (always false for optimizers
    /// without the guard, which is the default).
    fn found_non_finite(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Steps skipped by the guard so far (0 without the guard).
    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(0)
    }
    /// Changes a group's learning rate (takes effect at the next step; nothing is rebuilt).
    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()>;
    /// Changes a group's weight decay.
    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()>;
    /// Everything needed to resume: step count, hyperparameters, groups, parameters and state.
    fn snapshot(&mut self) -> Result<Snapshot>;
    /// Restores a snapshot taken from an optimizer of the same algorithm and parameters.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()>;
    /// The parameters' metadata.
    fn params(&self) -> &[ParamMeta];

    /// Saves a checkpoint (safetensors, written to a temporary file and renamed into place).
    fn save(&mut self, path: &Path) -> Result<()> {
        self.snapshot()?.save(path)
    }

    /// Loads a checkpoint written by [`Stepper::save`]; a corrupt or mismatched file is an error and
    /// leaves the optimizer as it was.
    fn load(&mut self, path: &Path) -> Result<()> {
        let s = Snapshot::load(path)?;
        self.restore(s)
    }
}
