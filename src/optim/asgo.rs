//! ASGO (ALGORITHMS.md §5.7; An et al., "ASGO: Adaptive Structured Gradient Optimization",
//! NeurIPS 2025): one-sided Shampoo on the smaller side of each matrix, as the authors' code
//! (infinity-stars/ASGO `optimizers/asgo.py`) runs it. For a parameter G of m×n, r = min(m, n):
//!
//! ```text
//! (5.7.1) M ← μ·M + (1 − μ)·G                                   (lerp, M starts at 0)
//! (5.7.2) V ← β2·V + (1 − β2)·G·Gᵀ if m < n, else with Gᵀ·G     (r×r, starts at 0; square: Gᵀ·G)
//! (5.7.3) P ← V^{−1/2} by Polar Express (root_iters iterations, eps inside its norm only);
//!         P ← I where P holds NaN or Inf
//! (5.7.4) U ← P·M if m < n, else M·P
//! (5.7.6) p ← (1 − lr·wd)·p − lr·0.2·√(mn)·U/(‖U‖_F + 1e-16)    ((5.7.5) fused: update RMS 0.2)
//! ```
//!
//! Written once over [`MatOps`], so the same driver runs on the GPU ([`GpuMats`]: Gram half-products,
//! symmetric Polar Express products, GEMMs with fused addends, nothing read back) and on its CPU twin
//! ([`CpuMats`]). Parameters of the same shape are stacked into one batch (as many as one storage
//! binding and one grid dimension hold) and step as one chain of batched dispatches: a
//! transformer's dozens of equal matrices cost one chain, and their small products fill a large GPU
//! together. Canonical names (§11.3): `learning_rate` → `lr`, `matalg_steps` → `root_iters`.
//!
//! Where gpuopt differs from the reference, and why:
//! - `+ 1e-16` in the RMS scaling: the reference divides by ‖U‖_F alone (`.item()`, a Python float),
//!   so a zero momentum (a zero first gradient) raises ZeroDivisionError there; here the update is 0
//!   and only the decay applies. For ‖U‖_F above about 1e-9 the term is below f32 rounding.
//! - Tensors of rank > 2 are viewed as shape\[0\] × rest (as Muon's conv kernels); the reference
//!   refuses them. Rank 0 and 1 are refused, as there (ASGO preconditions matrices: give vectors to
//!   AdamW).
//! - A gradient holding NaN or Inf skips the whole step and keeps every state (the reference would
//!   feed it into V and fall back to P = I only after the root broke).
//!
//! ```
//! use gpuopt::optim::{asgo::{Asgo, AsgoConfig}, Stepper};
//! # fn main() -> gpuopt::Result<()> {
//! let mut opt = Asgo::cpu(AsgoConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() })?; // or Asgo::gpu(&ctx, ..)
//! let w = opt.add_param("w", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
//! let g = opt.read_param(w)?; // gradient of ½‖w‖²
//! opt.write_grad(w, &g)?;
//! opt.step()?;
//! let after = opt.read_param(w)?;
//! let rms = (after.iter().zip(&g).map(|(a, b)| ((b - a) / 0.1).powi(2)).sum::<f32>() / 6.0).sqrt();
//! assert!((rms - 0.2).abs() < 1e-4); // every step has RMS 0.2·lr
//! # Ok(())
//! # }
//! ```

use super::{check_config_snapshot, config_snapshot, read_params_and_states, update_config};
use super::{f32_step, matrix_param, meta_at, GroupId, HostGuard, ParamId, ParamMeta, Snapshot, Stepper, Waiting};
use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::kernels::roots::GpuMats;
use crate::reference::roots::CpuMats;
use crate::roots::{inv_sqrt_polar_express, Mat, MatOps, Scale};
use crate::Context;
use serde::{Deserialize, Serialize};

/// ASGO's hyperparameters (ALGORITHMS.md §11.1 names); defaults are the reference's
/// (`asgo(learning_rate=1e-2, momentum=0.9, weight_decay=0.1, beta2=0.8, eps=1e-10, matalg_steps=10)`,
/// repeated by its `asgo.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AsgoConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ of the EMA M.
    pub momentum: f64,
    /// EMA coefficient of the preconditioner statistics V.
    pub beta2: f64,
    /// Ridge inside the root's normalising norm ‖V + eps·I‖_F.
    pub eps: f64,
    /// Decoupled weight decay (DW-B).
    pub weight_decay: f64,
    /// Polar Express iterations (the reference's `matalg_steps`).
    pub root_iters: usize,
}

impl Default for AsgoConfig {
    fn default() -> Self {
        AsgoConfig { lr: 1e-2, momentum: 0.9, beta2: 0.8, eps: 1e-10, weight_decay: 0.1, root_iters: 10 }
    }
}

/// The most Polar Express iterations accepted (the reference runs 10; more only repeat the last
/// polynomial).
pub const MAX_ROOT_ITERS: usize = 100;

impl AsgoConfig {
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
        if !(self.eps as f32).is_finite() || self.eps < 0.0 {
            return bad("eps", self.eps, "must be finite in f32 and >= 0");
        }
        if !(1..=MAX_ROOT_ITERS).contains(&self.root_iters) {
            return bad("root_iters", self.root_iters as f64, "must be from 1 to 100");
        }
        Ok(())
    }
}

/// The state names of a parameter, in checkpoints and [`Stepper::read_state`].
const STATES: [&str; 2] = ["momentum", "precond"];

/// The parameters of one shape, stacked: the matrices below hold the settled ones (their batch);
/// `members` counts those added since too (settled before the next step or read).
struct Group {
    rows: usize,
    cols: usize,
    members: usize,
    p: Mat,
    grad: Mat,
    momentum: Mat,
    /// V, r×r each.
    precond: Mat,
    /// Ones, 1×1 each: the numerators of the RMS scaling's ratios.
    ones: Mat,
    /// 1×1 each: the steps whose root fell back to P = I (exact f32 integers up to 2^24).
    fallbacks: Mat,
}

impl Group {
    fn left(&self) -> bool {
        self.rows < self.cols
    }

    fn side(&self) -> usize {
        self.rows.min(self.cols)
    }

    fn mats(&self) -> [Mat; 6] {
        [self.p, self.grad, self.momentum, self.precond, self.ones, self.fallbacks]
    }
}

/// ASGO over a [`MatOps`] backend ([`Asgo::gpu`], [`Asgo::cpu`]); steps through [`Stepper`].
pub struct Asgo<O: MatOps> {
    ops: O,
    cfg: AsgoConfig,
    groups: Vec<Group>,
    /// Each parameter's (group, index in the group).
    slots: Vec<(usize, usize)>,
    /// Parameters added to existing stacks and not yet settled into them.
    pending: Vec<Waiting>,
    metas: Vec<ParamMeta>,
    t: u64,
    guard: HostGuard,
}

impl Asgo<GpuMats> {
    /// ASGO on the GPU.
    pub fn gpu(ctx: &Context, cfg: AsgoConfig) -> Result<Self> {
        Self::new(GpuMats::new(ctx)?, cfg)
    }
}

impl Asgo<CpuMats> {
    /// ASGO's CPU twin (the same driver over the CPU matrix operations).
    pub fn cpu(cfg: AsgoConfig) -> Result<Self> {
        Self::new(CpuMats::default(), cfg)
    }
}

impl<O: MatOps> Asgo<O> {
    /// An empty optimizer on `ops` (validates the configuration).
    pub fn new(ops: O, cfg: AsgoConfig) -> Result<Self> {
        cfg.validate()?;
        let (groups, slots, pending, metas) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        Ok(Asgo { ops, cfg, groups, slots, pending, metas, t: 0, guard: HostGuard::default() })
    }

    /// Adds a matrix parameter (rank ≥ 2, viewed as shape\[0\] × rest) under a unique name, stacked
    /// with the earlier ones of its shape while the stack fits one storage binding (and the
    /// backend's [`MatOps::max_batch`]). It starts with zero momentum and statistics, also when
    /// added after steps. A parameter joining a stack waits on the host, with any values or gradient
    /// written to it, until the next step or read, so that adding many grows each stack once.
    pub fn add_param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let (rows, cols) = matrix_param("asgo", &self.metas, name, data, shape)?;
        let limits = (self.ops.max_elements(), self.ops.max_batch());
        let fits = |g: &Group| super::stack_has_room(g.members, rows * cols, 1, limits);
        let slot = match self.groups.iter().position(|g| (g.rows, g.cols) == (rows, cols) && fits(g)) {
            Some(gi) => {
                let g = &mut self.groups[gi];
                self.pending.push(Waiting { stack: gi, z: g.members, values: data.to_vec(), grad: None });
                g.members += 1;
                (gi, g.members - 1)
            }
            None => {
                let (ops, r) = (&mut self.ops, rows.min(cols));
                let group = Group {
                    rows,
                    cols,
                    members: 1,
                    p: ops.upload(data, 1, rows, cols)?,
                    grad: ops.alloc(1, rows, cols)?,
                    momentum: ops.alloc(1, rows, cols)?,
                    precond: ops.alloc(1, r, r)?,
                    ones: ops.alloc(1, 1, 1)?,
                    fallbacks: ops.alloc(1, 1, 1)?,
                };
                ops.affine(group.ones, None, 0.0, Scale::One, 0.0, 1.0)?;
                self.groups.push(group);
                (self.groups.len() - 1, 0)
            }
        };
        self.slots.push(slot);
        self.guard.add_param();
        self.metas.push(ParamMeta { name: name.into(), shape: shape.to_vec(), group: 0 });
        Ok(ParamId(self.slots.len() - 1))
    }

    /// The number of batched chains a step runs (one per stack of same-shape parameters).
    pub fn chains(&self) -> usize {
        self.groups.len()
    }

    /// Moves the parameters added to existing stacks into them: each such stack grows once (all its
    /// matrices or none), then their values are written. On an error nothing is lost: what is not
    /// yet written stays pending, and the next use tries again.
    fn settle(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for g in &self.groups {
            if g.members > self.ops.shape(g.p).0 {
                self.ops.grow(&g.mats(), g.members)?;
                self.ops.affine(g.ones, None, 0.0, Scale::One, 0.0, 1.0)?;
            }
        }
        while let Some(w) = self.pending.last_mut() {
            let g = &self.groups[w.stack];
            self.ops.write_at(g.p, w.z, &w.values)?;
            if let Some(grad) = w.grad.take() {
                // Put back if the write fails: the next settle tries again.
                if let Err(e) = self.ops.write_at(g.grad, w.z, &grad) {
                    w.grad = Some(grad);
                    return Err(e);
                }
            }
            self.pending.pop();
        }
        // Frees the stacks' old storage.
        self.ops.submit();
        Ok(())
    }

    /// The steps whose root fell back to P = I for this parameter (its Polar Express iteration
    /// produced NaN or Inf: V singular to f32 rounding), counted on the device in f32 (exact, and
    /// held at 2^24 = 16,777,216 once there); reading it waits for the GPU. Kept in checkpoints
    /// (`root_fallbacks` in the file's hyperparameters).
    pub fn root_fallbacks(&mut self, id: ParamId) -> Result<u64> {
        self.settle()?;
        let (g, z) = self.slot(id, None)?;
        let m = g.fallbacks;
        Ok(self.ops.read_at(m, z)?[0] as u64)
    }

    /// The configuration in force.
    pub fn config(&self) -> &AsgoConfig {
        &self.cfg
    }

    /// The backend, its matrices the stacks of same-shape parameters (with every parameter added so
    /// far in them).
    pub fn backend(&mut self) -> Result<&mut O> {
        self.settle()?;
        Ok(&mut self.ops)
    }

    /// Writes a parameter's gradient (`grad`) or values (length checked by the caller): into its
    /// stack, or, while it waits for the stack, into its pending entry (no growth now).
    fn write(&mut self, id: ParamId, data: &[f32], grad: bool) -> Result<()> {
        let (gi, z) = self.slots[id.0];
        if super::write_waiting(&mut self.pending, (gi, z), data, grad) {
            return Ok(());
        }
        let g = &self.groups[gi];
        self.ops.write_at(if grad { g.grad } else { g.p }, z, data)
    }

    /// The parameter's group and index in it.
    fn slot(&self, id: ParamId, len: Option<usize>) -> Result<(&Group, usize)> {
        meta_at(&self.metas, id, len)?;
        let (g, z) = self.slots[id.0];
        Ok((&self.groups[g], z))
    }

    /// (5.7.1)–(5.7.6) for one stack of parameters; its scratch matrices are the caller's to release.
    /// `(step, decay)` are lr·0.2·sqrt(mn) and 1 − lr·wd in f32.
    fn group_step(ops: &mut O, cfg: &AsgoConfig, p: &Group, (step, decay): (f32, f32)) -> Result<()> {
        let (m, n, r, batch) = (p.rows, p.cols, p.side(), ops.shape(p.p).0);
        let (mu, b2) = (cfg.momentum as f32, cfg.beta2 as f32);
        ops.affine(p.momentum, Some(p.grad), 1.0 - mu, Scale::One, mu, 0.0)?;
        // The Gram half-product on the short side, V its own addend.
        let gram = if p.left() {
            GemmDesc::gram(m, n)
        } else {
            GemmDesc { trans_a: true, symmetric: true, ..GemmDesc::new(n, n, m) }
        };
        let gram = GemmDesc { alpha: 1.0 - b2, beta: b2, batch, ..gram };
        ops.gemm(gram, p.grad, p.grad, p.precond, Some(p.precond))?;
        let root = inv_sqrt_polar_express(ops, p.precond, cfg.eps as f32, cfg.root_iters)?;
        // P = I, overwritten by the root where max_dev finds neither NaN nor Inf in it.
        let (dev, pm) = (ops.alloc(batch, 1, 1)?, ops.alloc(batch, r, r)?);
        ops.max_dev(root, dev)?;
        // Counted on the device (nothing read back): −1 where the root is finite, then +1 (in this
        // order a count that reached 2^24 stays there).
        ops.affine(p.fallbacks, None, 0.0, Scale::Finite(dev), 1.0, -1.0)?;
        ops.affine(p.fallbacks, None, 0.0, Scale::One, 1.0, 1.0)?;
        ops.affine(pm, None, 0.0, Scale::One, 0.0, 1.0)?;
        ops.affine(pm, Some(root), 1.0, Scale::Finite(dev), 0.0, 0.0)?;
        let u = ops.alloc(batch, m, n)?;
        if p.left() {
            ops.gemm(GemmDesc { batch, ..GemmDesc::new(m, n, m) }, pm, p.momentum, u, None)?;
        } else {
            ops.gemm(GemmDesc { batch, ..GemmDesc::new(m, n, n) }, p.momentum, pm, u, None)?;
        }
        let norm = ops.alloc(batch, 1, 1)?;
        ops.frobenius(u, norm)?;
        ops.affine(p.p, Some(u), -step, Scale::Ratio(p.ones, norm), decay, 0.0)
    }
}

/// The per-parameter fallback counts of a snapshot (`root_fallbacks`; zeros in files written before
/// they were counted).
fn fallbacks_of(s: &Snapshot, params: usize) -> Result<Vec<u64>> {
    let bad = |r: String| Error::Checkpoint { path: "<snapshot>".into(), reason: r };
    let Some(v) = s.hyper.get("root_fallbacks") else { return Ok(vec![0; params]) };
    let counts: Vec<u64> = serde_json::from_value(v.clone()).map_err(|e| bad(format!("root_fallbacks: {e}")))?;
    if counts.len() != params || counts.iter().any(|&c| c > 1 << 24) {
        return Err(bad(format!("root_fallbacks must hold {params} counts of at most 2^24, got {v}")));
    }
    Ok(counts)
}

impl<O: MatOps> Stepper for Asgo<O> {
    /// One step over every parameter with the gradients written since the last one (a parameter
    /// whose gradient was not written reuses its last). Skipped, changing nothing, when one of them
    /// held NaN or Inf (and was not rewritten since). One submit, nothing read back.
    fn step(&mut self) -> Result<()> {
        // The f32 factors first, so an lr that overflows changes nothing.
        let factors = self
            .groups
            .iter()
            .map(|p| f32_step(self.cfg.lr, self.cfg.weight_decay, 0.2 * ((p.rows * p.cols) as f64).sqrt()))
            .collect::<Result<Vec<(f32, f32)>>>()?;
        if self.guard.skip_step() {
            return Ok(());
        }
        self.settle()?;
        for (g, &factor) in self.groups.iter().zip(&factors) {
            let mark = self.ops.mark();
            let r = Self::group_step(&mut self.ops, &self.cfg, g, factor);
            self.ops.release(mark);
            r?;
        }
        self.ops.submit();
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
        self.slot(id, Some(data.len()))?;
        self.write(id, data, false)
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.settle()?;
        let (g, z) = self.slot(id, None)?;
        let m = g.p;
        self.ops.read_at(m, z)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        self.settle()?;
        let (g, z) = self.slot(id, None)?;
        let m = match state {
            "momentum" => g.momentum,
            "precond" => g.precond,
            other => return Err(Error::Invalid(format!("asgo has no state {other:?} (momentum, precond)"))),
        };
        self.ops.read_at(m, z)
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
        update_config(&mut self.cfg, group, |c| c.lr = lr, AsgoConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.cfg, group, |c| c.weight_decay = wd, AsgoConfig::validate)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let (values, states) = read_params_and_states(self, &STATES)?;
        let lr_wd = (self.cfg.lr, self.cfg.weight_decay);
        // One read per stack.
        self.settle()?;
        let counts = self.groups.iter().map(|g| self.ops.read(g.fallbacks)).collect::<Result<Vec<_>>>()?;
        let fallbacks: Vec<u64> = self.slots.iter().map(|&(g, z)| counts[g][z] as u64).collect();
        let mut s = config_snapshot("asgo", &self.cfg, lr_wd, self.t, &self.metas, values, states);
        s.skipped = self.guard.skipped();
        s.hyper["root_fallbacks"] = serde_json::json!(fallbacks);
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let side = |m: &ParamMeta| m.shape[0].min(m.len() / m.shape[0]);
        let len = |m: &ParamMeta, state: &str| if state == "precond" { side(m) * side(m) } else { m.len() };
        let (cfg, states) = check_config_snapshot(&s, "asgo", &self.metas, &STATES, len, AsgoConfig::validate)?;
        let fallbacks = fallbacks_of(&s, self.metas.len())?;
        self.settle()?;
        // Everything is checked: now write.
        for (i, st) in states.iter().enumerate() {
            let (g, z) = self.slots[i];
            let g = &self.groups[g];
            let count = [fallbacks[i] as f32];
            for (m, data) in [(g.p, &s.values[i][..]), (g.momentum, &st[0]), (g.precond, &st[1]), (g.fallbacks, &count)]
            {
                self.ops.write_at(m, z, data)?;
            }
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
