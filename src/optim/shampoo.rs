//! Shampoo (ALGORITHMS.md §7.7; Anil et al., "Scalable Second Order Optimization for Deep Learning"),
//! written once over [`MatOps`], so the same driver runs on the GPU ([`GpuMats`]) and on the CPU twin
//! ([`CpuMats`]). For a matrix parameter split into blocks of at most `block_size` per side, each block
//! G (h×w):
//!
//! ```text
//! (7.7.1) L ← β2·L + w2·G·Gᵀ,  R ← β2·R + w2·Gᵀ·G        (Gram half-products; w2 = 1 if β2 = 1 else 1 − β2;
//!                                                         L, R start at matrix_eps·I)
//! (7.7.2) every precondition_frequency steps: P_L ← (L + matrix_eps·I)^{−1/4}, P_R likewise (coupled
//!         Newton, §7.6); when it fails (max|M − I| ≥ 0.1 or NaN) the old root is kept
//! (7.7.3) S ← P_L·G·P_R
//! (7.7.4) graft D: "sgd" g; "adagrad" a ← a + g², g/(sqrt(a) + diag_eps); "rmsprop" a ← β2·a + w2·g²
//!         (w2 as in 7.7.1, as optax's `_transform_grad`: at β2 = 1 the RMSProp graft is AdaGrad's)
//! (7.7.5) S ← S·‖D‖_F/(‖S‖_F + 1e-16)                   (norms over the whole parameter)
//! (7.7.7) M ← β1·M + S   (S = D for the first start_preconditioning_step steps, optax's 0-based count)
//! (7.7.8) U ← S + β1·M if nesterov else M;  p ← (1 − lr·wd)·p − lr·U     (decoupled decay; with
//!         decoupled_weight_decay false, optax's coupled (7.7.6) S ← S + wd·p before 7.7.7 instead)
//! ```
//!
//! Conventions (gpuopt's, written down because the references differ): the ridge of the roots is
//! absolute (`A + matrix_eps·I`, as facebookresearch/optimizers) rather than optax's relative one;
//! weight decay is decoupled (the issue's contract; optax's default is coupled); one momentum buffer
//! is fed by the graft before `start_preconditioning_step` and by the grafted Shampoo direction after
//! (optax keeps a second, graft-only momentum). Vectors (rank 1) use the graft direction alone.
//!
//! ```
//! use gpuopt::optim::shampoo::{Shampoo, ShampooConfig};
//! use gpuopt::reference::roots::CpuMats;
//! # fn main() -> gpuopt::Result<()> {
//! let mut opt = Shampoo::new(CpuMats::default(), ShampooConfig { lr: 0.1, ..Default::default() })?;
//! let w = opt.add_param(&[1.0; 12], &[3, 4])?;
//! for _ in 0..3 {
//!     let p = opt.read(w)?;
//!     opt.step(&[&p])?; // gradient of ½‖p‖²
//! }
//! assert!(opt.read(w)?.iter().all(|v| v.abs() < 1.0));
//! # Ok(())
//! # }
//! ```

use super::{config_snapshot, ParamMeta, Snapshot};
use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::roots::{inv_root_unchecked, InvRootOptions, Mat, MatOps, Scale, INV_ROOT_FAILURE};
use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // for the doc links
use crate::{kernels::roots::GpuMats, reference::roots::CpuMats};

/// The graft that sets the step's norm (§7.7.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Graft {
    /// D = g.
    Sgd,
    /// a ← a + g², D = g/(sqrt(a) + diag_eps).
    #[default]
    Adagrad,
    /// a ← β2·a + w2·g², D = g/(sqrt(a) + diag_eps), w2 = 1 − β2 (1 at β2 = 1, as the statistics and
    /// optax's code; §7.7.4 writes 1 − β2).
    Rmsprop,
}

/// Shampoo's hyperparameters (ALGORITHMS.md §11.1 names). Defaults follow optax's
/// `distributed_shampoo` where it has one (beta1 0.9, beta2 0.999, diag_eps 1e-10, matrix_eps 1e-6,
/// start_preconditioning_step 5, precondition_frequency 1, nesterov); `lr` 1e-3, `block_size` 1024
/// (facebookresearch's `max_preconditioner_dim`), AdaGrad grafting and 100 root iterations are gpuopt's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShampooConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum β1.
    pub beta1: f64,
    /// Statistics decay β2 (1 = running sum).
    pub beta2: f64,
    /// Weight decay: decoupled (`p ← (1 − lr·wd)·p` after the step) unless `decoupled_weight_decay`
    /// is false.
    pub weight_decay: f64,
    /// true (default, issue 5's contract): decoupled decay. false: optax's default, coupled (7.7.6):
    /// wd·p added to the direction (grafted Shampoo, or the graft before preconditioning) before
    /// momentum.
    pub decoupled_weight_decay: bool,
    /// Largest block side (max_preconditioner_dim).
    pub block_size: usize,
    /// Steps between root refreshes.
    pub precondition_frequency: usize,
    /// Steps that use the graft direction before the first preconditioned one: optax's
    /// `count >= start_preconditioning_step` on its 0-based step count, so with 5 steps 1–5 use the
    /// graft and step 6 is the first preconditioned (0: every step is).
    pub start_preconditioning_step: usize,
    /// Grafting type.
    pub graft: Graft,
    /// Initial statistics and ridge of the roots.
    pub matrix_eps: f64,
    /// Epsilon of the AdaGrad / RMSProp graft.
    pub diag_eps: f64,
    /// Iteration cap of the inverse roots.
    pub root_iters: usize,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for ShampooConfig {
    fn default() -> Self {
        ShampooConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            decoupled_weight_decay: true,
            block_size: 1024,
            precondition_frequency: 1,
            start_preconditioning_step: 5,
            graft: Graft::Adagrad,
            matrix_eps: 1e-6,
            diag_eps: 1e-10,
            root_iters: 100,
            nesterov: true,
        }
    }
}

impl ShampooConfig {
    fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: f64, reason: &str| {
            Err(Error::Hyperparameter { name: name.into(), value, reason: reason.into() })
        };
        for (name, v) in [
            ("lr", self.lr),
            ("weight_decay", self.weight_decay),
            ("matrix_eps", self.matrix_eps),
            ("diag_eps", self.diag_eps),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(name, v, "must be finite and >= 0");
            }
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "must be in [0, 1)");
        }
        if !(self.beta2 > 0.0 && self.beta2 <= 1.0) {
            return bad("beta2", self.beta2, "must be in (0, 1]");
        }
        if self.block_size == 0 {
            return bad("block_size", 0.0, "must be at least 1");
        }
        if self.precondition_frequency == 0 {
            return bad("precondition_frequency", 0.0, "must be at least 1");
        }
        if self.matrix_eps == 0.0 {
            return bad("matrix_eps", 0.0, "must be > 0 (the roots need a ridge)");
        }
        Ok(())
    }
}

/// One block of a matrix parameter and its preconditioner state.
struct Block {
    at: (usize, usize),
    h: usize,
    w: usize,
    g: Mat,
    l: Mat,
    r: Mat,
    pl: Mat,
    pr: Mat,
    t: Mat,
    s: Mat,
}

struct Param {
    meta: ParamMeta,
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
    p: Mat,
    grad: Mat,
    momentum: Mat,
    acc: Mat,
    d: Mat,
    s: Mat,
    u: Mat,
    norms: [Mat; 2],
    blocks: Vec<Block>,
}

/// Handle of a parameter added to [`Shampoo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShampooParam(usize);

/// Shampoo over a [`MatOps`] backend.
pub struct Shampoo<O: MatOps> {
    ops: O,
    cfg: ShampooConfig,
    params: Vec<Param>,
    step: usize,
    skipped: usize,
    root_failures: usize,
}

impl<O: MatOps> Shampoo<O> {
    /// An empty optimizer on `ops` (validates the configuration).
    pub fn new(ops: O, cfg: ShampooConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Shampoo { ops, cfg, params: Vec::new(), step: 0, skipped: 0, root_failures: 0 })
    }

    /// Adds a parameter: rank 2 (or higher, flattened to rows × rest) gets preconditioned blocks; rank
    /// 0 or 1 uses the graft alone.
    pub fn add_param(&mut self, data: &[f32], shape: &[usize]) -> Result<ShampooParam> {
        let n: usize = shape.iter().product();
        if n != data.len() || n == 0 {
            return Err(Error::Shape {
                what: "shampoo parameter".into(),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        let (rows, cols) = if shape.len() >= 2 { (shape[0], n / shape[0]) } else { (1, n) };
        let ops = &mut self.ops;
        let p = ops.upload(data, 1, rows, cols)?;
        let [grad, momentum, acc, d, s, u] = [(); 6].map(|_| ops.alloc(1, rows, cols));
        let mut blocks = Vec::new();
        if shape.len() >= 2 {
            let bs = self.cfg.block_size;
            for r0 in (0..rows).step_by(bs) {
                for c0 in (0..cols).step_by(bs) {
                    let (h, w) = (bs.min(rows - r0), bs.min(cols - c0));
                    let eye = |ops: &mut O, k: usize, v: f32| -> Result<Mat> {
                        let m = ops.alloc(1, k, k)?;
                        ops.affine(m, None, 0.0, Scale::One, 0.0, v)?;
                        Ok(m)
                    };
                    let eps = self.cfg.matrix_eps as f32;
                    blocks.push(Block {
                        at: (r0, c0),
                        h,
                        w,
                        g: ops.alloc(1, h, w)?,
                        l: eye(ops, h, eps)?,
                        r: eye(ops, w, eps)?,
                        pl: eye(ops, h, 1.0)?,
                        pr: eye(ops, w, 1.0)?,
                        t: ops.alloc(1, h, w)?,
                        s: ops.alloc(1, h, w)?,
                    });
                }
            }
        }
        let norms = [ops.alloc(1, 1, 1)?, ops.alloc(1, 1, 1)?];
        let name = format!("param{}", self.params.len());
        self.params.push(Param {
            meta: ParamMeta { name, shape: shape.to_vec(), group: 0 },
            shape: shape.to_vec(),
            rows,
            cols,
            p,
            grad: grad?,
            momentum: momentum?,
            acc: acc?,
            d: d?,
            s: s?,
            u: u?,
            norms,
            blocks,
        });
        Ok(ShampooParam(self.params.len() - 1))
    }

    /// Steps taken (skipped steps are not counted).
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Steps skipped because a gradient held NaN or Inf.
    pub fn skipped_steps(&self) -> usize {
        self.skipped
    }

    /// Root refreshes that failed and kept the previous root.
    pub fn root_failures(&self) -> usize {
        self.root_failures
    }

    /// The parameter's current values.
    pub fn read(&mut self, id: ShampooParam) -> Result<Vec<f32>> {
        self.ops.read(self.params[id.0].p)
    }

    /// The parameter's shape.
    pub fn shape(&self, id: ShampooParam) -> &[usize] {
        &self.params[id.0].shape
    }

    /// The backend (e.g. to reach a parameter's GPU tensor).
    pub fn backend(&mut self) -> &mut O {
        &mut self.ops
    }

    /// The handle of the parameter's values in the backend.
    pub fn param_mat(&self, id: ShampooParam) -> Mat {
        self.params[id.0].p
    }

    /// The handle of the parameter's gradient in the backend: fill it, then call [`Shampoo::step_in_place`].
    pub fn grad_mat(&self, id: ShampooParam) -> Mat {
        self.params[id.0].grad
    }

    /// The names of a parameter's state tensors in a checkpoint: the momentum, the graft statistic,
    /// and per block its statistics and roots.
    fn state_names(p: &Param) -> Vec<String> {
        let mut v = vec!["momentum".to_string(), "graft".to_string()];
        for i in 0..p.blocks.len() {
            v.extend(["l", "r", "pl", "pr"].iter().map(|k| format!("{k}/{i}")));
        }
        v
    }

    fn state_mats(p: &Param) -> Vec<Mat> {
        let mut v = vec![p.momentum, p.acc];
        for b in &p.blocks {
            v.extend([b.l, b.r, b.pl, b.pr]);
        }
        v
    }

    /// Everything needed to resume: step counts, hyperparameters, parameters, momentum, graft
    /// statistics, and every block's statistics and roots.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut values = Vec::new();
        let mut states = Vec::new();
        for p in &self.params {
            values.push(self.ops.read(p.p)?);
            let mut st = Vec::new();
            for (name, m) in Self::state_names(p).into_iter().zip(Self::state_mats(p)) {
                st.push((name, self.ops.read(m)?));
            }
            states.push(st);
        }
        let metas: Vec<ParamMeta> = self.params.iter().map(|p| p.meta.clone()).collect();
        let mut s = config_snapshot(
            "shampoo",
            &self.cfg,
            (self.cfg.lr, self.cfg.weight_decay),
            self.step as u64,
            &metas,
            values,
            states,
        );
        s.skipped = self.skipped as u64;
        // A counter, not a hyperparameter: kept beside them (the format allows optimizer extras).
        s.hyper["root_failures"] = serde_json::json!(self.root_failures);
        Ok(s)
    }

    /// Restores a snapshot of a Shampoo with the same parameters (shapes, block size); a mismatch is
    /// an error and changes nothing.
    pub fn restore(&mut self, s: Snapshot) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: "<snapshot>".into(), reason };
        let metas: Vec<ParamMeta> = self.params.iter().map(|p| p.meta.clone()).collect();
        s.check_common("shampoo", &metas)?;
        let cfg: ShampooConfig =
            serde_json::from_value(s.hyper.clone()).map_err(|e| bad(format!("shampoo config: {e}")))?;
        cfg.validate()?;
        // Checkpoints written before the counter was saved have none: 0.
        let root_failures = match s.hyper.get("root_failures") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| bad(format!("root_failures {v} is not a count")))? as usize,
        };
        if cfg.block_size != self.cfg.block_size {
            return Err(bad(format!("block_size {} in the file, {} here", cfg.block_size, self.cfg.block_size)));
        }
        // Per parameter, the state tensors of this layout (their names carry the block count), each of
        // its matrix's size.
        let mut checked = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let names = Self::state_names(p);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let st = s.states_of(i, &refs)?;
            for ((name, v), m) in names.iter().zip(&st).zip(Self::state_mats(p)) {
                let (b, r, c) = self.ops.shape(m);
                if v.len() != b * r * c {
                    return Err(bad(format!(
                        "state {name} of {} has {} values, expected {}",
                        p.meta.name,
                        v.len(),
                        b * r * c
                    )));
                }
            }
            checked.push(st);
        }
        // Everything is checked: now write.
        for (i, st) in checked.iter().enumerate() {
            let p = &self.params[i];
            self.ops.write(p.p, &s.values[i])?;
            for (m, data) in Self::state_mats(p).into_iter().zip(st) {
                self.ops.write(m, data)?;
            }
        }
        self.cfg = cfg;
        self.step = s.step as usize;
        self.skipped = s.skipped as usize;
        self.root_failures = root_failures;
        Ok(())
    }

    /// Saves a checkpoint (safetensors, atomic; see [`Snapshot::save`]).
    pub fn save(&mut self, path: &std::path::Path) -> Result<()> {
        self.snapshot()?.save(path)
    }

    /// Loads a checkpoint written by [`Shampoo::save`]; a corrupt or mismatched file is an error and
    /// leaves the optimizer as it was.
    pub fn load(&mut self, path: &std::path::Path) -> Result<()> {
        self.restore(Snapshot::load(path)?)
    }

    /// One step with host gradients, one per parameter in the order they were added. A gradient with
    /// NaN or Inf skips the whole step (nothing changes; [`Shampoo::skipped_steps`] counts it).
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Invalid(format!(
                "shampoo step: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        for (i, (g, p)) in grads.iter().zip(&self.params).enumerate() {
            if g.len() != p.rows * p.cols {
                return Err(Error::Shape {
                    what: format!("gradient {i}"),
                    expected: p.shape.clone(),
                    got: vec![g.len()],
                });
            }
        }
        if grads.iter().any(|g| crate::reference::has_non_finite(g)) {
            self.skipped += 1;
            return Ok(());
        }
        for (g, p) in grads.iter().zip(&self.params) {
            self.ops.write(p.grad, g)?;
        }
        self.apply_step()
    }

    /// One step with the gradients already in [`Shampoo::grad_mat`]. As in [`Shampoo::step`], a
    /// gradient holding NaN or Inf skips the whole step (counted by [`Shampoo::skipped_steps`]); the
    /// test is each gradient's Frobenius norm (computed overflow-safely), read back: one number per
    /// parameter, one synchronisation per step.
    pub fn step_in_place(&mut self) -> Result<()> {
        let mark = self.ops.mark();
        let params = &self.params;
        let ops = &mut self.ops;
        let finite = (|| -> Result<bool> {
            let mut norms = Vec::with_capacity(params.len());
            for p in params {
                let n = ops.alloc(1, 1, 1)?;
                ops.frobenius(p.grad, n)?;
                norms.push(n);
            }
            let mut finite = true;
            for n in norms {
                finite &= ops.read(n)?[0].is_finite();
            }
            Ok(finite)
        })();
        // Scratch is released on the error path too.
        self.ops.release(mark);
        if !finite? {
            self.skipped += 1;
            return Ok(());
        }
        self.apply_step()
    }

    fn apply_step(&mut self) -> Result<()> {
        self.step += 1;
        let t = self.step;
        let cfg = self.cfg.clone();
        let (b2, w2) = (cfg.beta2 as f32, if cfg.beta2 == 1.0 { 1.0 } else { (1.0 - cfg.beta2) as f32 });
        let refresh = (t - 1).is_multiple_of(cfg.precondition_frequency);
        // optax's `count >= start_preconditioning_step` with its count 0-based (t − 1), as the refresh.
        let precondition = t > cfg.start_preconditioning_step;
        let ops = &mut self.ops;
        for p in &self.params {
            // Graft direction D.
            match cfg.graft {
                Graft::Sgd => ops.affine(p.d, Some(p.grad), 1.0, Scale::One, 0.0, 0.0)?,
                Graft::Adagrad => ops.graft(p.acc, p.grad, p.d, 1.0, 1.0, cfg.diag_eps as f32)?,
                Graft::Rmsprop => ops.graft(p.acc, p.grad, p.d, b2, w2, cfg.diag_eps as f32)?,
            }
            let mut dir = p.d;
            if !p.blocks.is_empty() {
                for b in &p.blocks {
                    let whole = p.blocks.len() == 1;
                    let g = if whole { p.grad } else { b.g };
                    if !whole {
                        ops.copy_region(b.g, (0, 0), p.grad, b.at, b.h, b.w)?;
                    }
                    // (7.7.1) with the Gram half-products and the statistics as their own addend.
                    ops.gemm(GemmDesc { alpha: w2, beta: b2, ..GemmDesc::gram(b.h, b.w) }, g, g, b.l, Some(b.l))?;
                    ops.gemm(
                        GemmDesc {
                            alpha: w2,
                            beta: b2,
                            trans_a: true,
                            symmetric: true,
                            ..GemmDesc::new(b.w, b.w, b.h)
                        },
                        g,
                        g,
                        b.r,
                        Some(b.r),
                    )?;
                }
                if refresh {
                    for b in &p.blocks {
                        for (stat, root) in [(b.l, b.pl), (b.r, b.pr)] {
                            let opts = InvRootOptions {
                                eps: cfg.matrix_eps as f32,
                                eps_relative: false,
                                max_iters: cfg.root_iters,
                                tol: 1e-6,
                            };
                            // (7.7.2): a failed root (error NaN or ≥ 0.1, or statistics that are not
                            // finite) keeps the old one; the root's scratch is released either way.
                            let mark = ops.mark();
                            let outcome = match inv_root_unchecked(ops, stat, 4, opts) {
                                Ok(r) if r.err[0].is_finite() && r.err[0] < INV_ROOT_FAILURE => {
                                    ops.affine(root, Some(r.x), 1.0, Scale::One, 0.0, 0.0).map(|_| None)
                                }
                                Ok(r) => Ok(Some(format!("max|M - I| = {}", r.err[0]))),
                                Err(e) => Ok(Some(e.to_string())),
                            };
                            ops.release(mark);
                            if let Some(why) = outcome? {
                                self.root_failures += 1;
                                log::warn!("shampoo: inverse root failed ({why}); keeping the old one");
                            }
                        }
                    }
                }
                if precondition {
                    for b in &p.blocks {
                        let whole = p.blocks.len() == 1;
                        let g = if whole { p.grad } else { b.g };
                        let out = if whole { p.s } else { b.s };
                        ops.gemm(GemmDesc::new(b.h, b.w, b.h), b.pl, g, b.t, None)?;
                        ops.gemm(GemmDesc::new(b.h, b.w, b.w), b.t, b.pr, out, None)?;
                        if !whole {
                            ops.copy_region(p.s, b.at, b.s, (0, 0), b.h, b.w)?;
                        }
                    }
                    // (7.7.5) graft: S·‖D‖/(‖S‖ + 1e-16).
                    ops.frobenius(p.d, p.norms[0])?;
                    ops.frobenius(p.s, p.norms[1])?;
                    ops.affine(p.u, Some(p.s), 1.0, Scale::Ratio(p.norms[0], p.norms[1]), 0.0, 0.0)?;
                    dir = p.u;
                }
            }
            // (7.7.6) coupled decay: S ← S + wd·p (dir is this step's own buffer: D or the grafted S).
            let wd = cfg.weight_decay as f32;
            if !cfg.decoupled_weight_decay && wd != 0.0 {
                ops.affine(dir, Some(p.p), wd, Scale::One, 1.0, 0.0)?;
            }
            // (7.7.7)–(7.7.8): M ← β1·M + S;  U ← S + β1·M or M;  p ← (1 − lr·wd)·p − lr·U (decoupled).
            let b1 = cfg.beta1 as f32;
            ops.affine(p.momentum, Some(dir), 1.0, Scale::One, b1, 0.0)?;
            let step_dir = if cfg.nesterov {
                // dir may alias p.u: accumulate into p.s's spare when needed.
                let tmp = if dir == p.u { p.s } else { p.u };
                ops.affine(tmp, Some(p.momentum), b1, Scale::One, 0.0, 0.0)?;
                ops.affine(tmp, Some(dir), 1.0, Scale::One, 1.0, 0.0)?;
                tmp
            } else {
                p.momentum
            };
            let lr = cfg.lr as f32;
            let keep = if cfg.decoupled_weight_decay { (1.0 - cfg.lr * cfg.weight_decay) as f32 } else { 1.0 };
            ops.affine(p.p, Some(step_dir), -lr, Scale::One, keep, 0.0)?;
        }
        // One submit per step; nothing is read back.
        self.ops.submit();
        Ok(())
    }
}
