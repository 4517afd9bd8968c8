//! Shampoo (ALGORITHMS.md §7.7; Anil et al., "Scalable Second Order Optimization for Deep Learning"),
//! written once over [`MatOps`], so the same driver runs on the GPU ([`GpuMats`]) and on the CPU twin
//! ([`CpuMats`]). Each parameter is reshaped as optax's `Preconditioner` does: adjacent dimensions
//! merged while their product stays within `merge_small_dims_block_size` ([`merge_small_dims`]), then
//! split into blocks of at most `block_size` per dimension. For a block G of rank k (after merging),
//! with G_(i) its mode-i unfolding (dimension i against all the others):
//!
//! ```text
//! (7.7.1) L_i ← β2·L_i + w2·G_(i)·G_(i)ᵀ  for each mode i   (Gram half-products; w2 = 1 if β2 = 1 else
//!                                                          1 − β2; L_i start at matrix_eps·I)
//!         (every statistics_compute_steps steps, optax's 0-based count, as the roots below)
//! (7.7.2) every precondition_frequency steps: P_i ← (L_i + matrix_eps·I)^{−1/(2k)} (coupled Newton,
//!         §7.6; 2k replaced by exponent_override when > 0); when it fails (max|M − I| NaN or ≥
//!         inverse_failure_threshold, 0.1)
//!         the old root is kept
//! (7.7.3) S ← G ×_1 P_1 ×_2 P_2 … ×_k P_k                 (for a matrix: P_1·G·P_2)
//! (7.7.4) graft D: "sgd" g; "adagrad" a ← a + g², g/(sqrt(a) + diag_eps); "rmsprop" a ← β2·a + w2·g²
//!         (w2 as in 7.7.1, as optax's `_transform_grad`: at β2 = 1 the RMSProp graft is AdaGrad's);
//!         "sqrt_n" sign(g); "adagrad_normalized", "rmsprop_normalized" on g/(‖g‖ + 1e-16); the rmsprop
//!         grafts with clip_by_scaled_gradient_norm c: D ← D/max(1, ‖D‖/(sqrt(n)·c))
//! (7.7.5) S ← S·‖D‖_F/(‖S‖_F + 1e-16)                   (norms over the whole parameter)
//! (7.7.7) M ← β1·M + w·S;  M_D ← β1·M_D + w·D   (w = 1, or 1 − β1 with moving_average_for_momentum)
//! (7.7.8) U ← w·S + β1·M if nesterov else M;  p ← (1 − lr·wd)·p − lr·U     (decoupled decay; with
//!         decoupled_weight_decay false, optax's coupled (7.7.6) S ← S + wd·p, D ← D + wd·p before
//!         7.7.7 instead); for the first start_preconditioning_step steps (optax's 0-based count) the
//!         step takes D and M_D in place of S and M
//! ```
//!
//! As optax (google-research's scalable_shampoo at 01aac34, and precondition-opt 0.3.0), M is fed
//! from the first step (S is computed before preconditioning starts, with the roots of the
//! statistics so far) and M_D until preconditioning starts, for every graft (an earlier
//! scalable_shampoo, e190129, shared one buffer under SQRT_N). A parameter driven by the graft alone
//! has one momentum, of D (optax's two hold the same values there).
//!
//! Checkpoints written before the graft had its own momentum held one buffer, fed by the graft
//! before start_preconditioning_step and by Shampoo after; it seeds both (exact once
//! preconditioning has started; before, M starts from the graft's momentum instead of optax's sum of
//! grafted Shampoo directions).
//!
//! Conventions (gpuopt's, written down because the references differ): the ridge of the roots is
//! absolute (`A + matrix_eps·I`, as facebookresearch/optimizers) rather than optax's relative one
//! (`relative_matrix_epsilon: true` gives optax's: matrix_eps·λ_max, λ_max by power iteration);
//! weight decay is decoupled (the issue's contract; optax's default is coupled). As optax, a
//! parameter of rank below `skip_preconditioning_rank_lt` (as given, default 1: only scalars) or with
//! a dimension above `skip_preconditioning_dim_size_gt` (default 4096) uses the graft direction
//! alone, and vectors are preconditioned like any rank-1 block (L^{−1/2}); small matrices merge into
//! vectors (a 64×64 matrix is one 4096-vector, split into `block_size` pieces).
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

use super::{config_snapshot, update_config, GroupId, HostGuard, ParamId, ParamMeta, Snapshot, Stepper};
use crate::error::{Error, Result};
use crate::kernels::gemm::GemmDesc;
use crate::roots::{inv_root_unchecked, InvRootOptions, Mat, MatOps, Scale};
use serde::{Deserialize, Serialize};

use crate::{kernels::roots::GpuMats, reference::roots::CpuMats, Context};

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
    /// optax's SQRT_N: D = sign(g) (so ‖D‖ = sqrt(n) for a gradient without zeros).
    SqrtN,
    /// optax's ADAGRAD_NORMALIZED: AdaGrad on ĝ = g/(‖g‖ + 1e-16) (optax divides by ‖g‖ alone, NaN
    /// for a zero gradient; the 1e-16 changes nothing f32 can hold for ‖g‖ above ~1e-9).
    AdagradNormalized,
    /// optax's RMSPROP_NORMALIZED: RMSProp on ĝ = g/(‖g‖ + 1e-16).
    RmspropNormalized,
}

/// Shampoo's hyperparameters (ALGORITHMS.md §11.1 names). Defaults follow optax's
/// `distributed_shampoo` where it has one (beta1 0.9, beta2 0.999, diag_eps 1e-10, matrix_eps 1e-6,
/// start_preconditioning_step 5, precondition_frequency 1, nesterov, dimension merging up to 4096,
/// skipping dimensions above 4096 and only rank-0 parameters); `lr` 1e-3, `block_size` 1024
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
    /// true (default, issue 5's contract): decoupled decay, (1 − lr·wd)·p (optax's
    /// `decoupled_weight_decay=True` with `decoupled_learning_rate=False`; with its default
    /// `decoupled_learning_rate=True` optax applies lr twice, −lr·(U + lr·wd·p)). false: optax's
    /// default, coupled (7.7.6): wd·p added to each direction fed to a momentum (the grafted Shampoo
    /// direction, and the graft before preconditioning starts).
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
    /// optax's `best_effort_shape_interpretation`: merge adjacent dimensions before blocking.
    pub best_effort_shape_interpretation: bool,
    /// optax's `merge_small_dims_block_size`: adjacent dimensions merge while their product stays
    /// within this ([`merge_small_dims`]).
    pub merge_small_dims_block_size: usize,
    /// optax's `skip_preconditioning_dim_size_gt`: a parameter with a dimension (as given) above this
    /// uses the graft direction alone.
    pub skip_preconditioning_dim_size_gt: usize,
    /// optax's `skip_preconditioning_rank_lt`: a parameter whose rank (as given) is below this uses
    /// the graft direction alone (1: scalars only; 2: vectors too).
    pub skip_preconditioning_rank_lt: usize,
    /// optax's `statistics_compute_steps`: steps between statistics updates (1: every step).
    pub statistics_compute_steps: usize,
    /// optax's `exponent_override`: when > 0 (at most 32), the roots are L^{−1/exponent_override}
    /// instead of L^{−1/(2k)}.
    pub exponent_override: usize,
    /// optax's `moving_average_for_momentum`: the momentum averages (M ← β1·M + (1 − β1)·S) instead
    /// of summing.
    pub moving_average_for_momentum: bool,
    /// optax's `relative_matrix_epsilon` (its default is true): the roots' ridge is
    /// matrix_eps·λ_max(L) instead of matrix_eps.
    pub relative_matrix_epsilon: bool,
    /// optax's `clip_by_scaled_gradient_norm` (default none), for the "rmsprop" and
    /// "rmsprop_normalized" grafts only (optax ignores it for the others; here it is an error): the
    /// graft direction D is divided by max(1, (‖D‖/sqrt(n))/c), its root-mean-square clipped at c.
    pub clip_by_scaled_gradient_norm: Option<f64>,
    /// optax's `inverse_failure_threshold` (0.1): a refreshed root whose max|M − I| is NaN or at least
    /// this is discarded and the old one kept (counted by [`Shampoo::root_failures`]).
    pub inverse_failure_threshold: f64,
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
            best_effort_shape_interpretation: true,
            merge_small_dims_block_size: 4096,
            skip_preconditioning_dim_size_gt: 4096,
            skip_preconditioning_rank_lt: 1,
            statistics_compute_steps: 1,
            exponent_override: 0,
            moving_average_for_momentum: false,
            relative_matrix_epsilon: false,
            clip_by_scaled_gradient_norm: None,
            inverse_failure_threshold: 0.1,
        }
    }
}

impl ShampooConfig {
    /// Checks every hyperparameter's range (what [`Shampoo::new`] refuses).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: f64, reason: &str| {
            Err(Error::Hyperparameter { name: name.into(), value, reason: reason.into() })
        };
        for (name, v) in [("lr", self.lr), ("weight_decay", self.weight_decay)] {
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
        if self.statistics_compute_steps == 0 {
            return bad("statistics_compute_steps", 0.0, "must be at least 1");
        }
        if self.exponent_override > 32 {
            return bad("exponent_override", self.exponent_override as f64, "must be 0 (2·rank) or from 1 to 32");
        }
        // The roots need a ridge; the AdaGrad / RMSProp grafts divide by sqrt(a) + diag_eps.
        super::check_f32_eps("matrix_eps", self.matrix_eps)?;
        super::check_f32_eps("diag_eps", self.diag_eps)?;
        let t = self.inverse_failure_threshold;
        super::check_normal_f32("inverse_failure_threshold", t, "the roots' residuals are compared with it in f32")?;
        if let Some(c) = self.clip_by_scaled_gradient_norm {
            // c·sqrt(n) is the f32 limit ‖D‖ is divided by.
            super::check_normal_f32("clip_by_scaled_gradient_norm", c, "the clip divides by it")?;
            if !matches!(self.graft, Graft::Rmsprop | Graft::RmspropNormalized) {
                return Err(Error::Invalid(format!(
                    "shampoo: clip_by_scaled_gradient_norm clips the rmsprop grafts only; graft {:?} would ignore it",
                    self.graft
                )));
            }
        }
        Ok(())
    }
}

/// optax's `merge_small_dims`: adjacent dimensions merge while their product stays within `max_dim`
/// (a dimension of 1 merges into its neighbour; an all-ones shape is \[1\]).
///
/// ```
/// use gpuopt::optim::shampoo::merge_small_dims;
/// // optax's own examples.
/// assert_eq!(merge_small_dims(&[1, 2, 512, 1, 2048, 1, 3, 4], 1024), [1024, 2048, 12]);
/// assert_eq!(merge_small_dims(&[1, 2, 768, 1, 2048], 1024), [2, 768, 2048]);
/// assert_eq!(merge_small_dims(&[3, 3, 512, 512], 4096), [9, 512, 512]);
/// assert_eq!(merge_small_dims(&[64, 64], 4096), [4096]);
/// ```
pub fn merge_small_dims(shape: &[usize], max_dim: usize) -> Vec<usize> {
    if !shape.is_empty() && shape.iter().all(|&d| d == 1) {
        return vec![1];
    }
    let mut merged = Vec::new();
    let mut product = 1;
    for &d in shape {
        if product * d <= max_dim {
            product *= d;
        } else {
            if product > 1 {
                merged.push(product);
            }
            product = d;
        }
    }
    if product > 1 {
        merged.push(product);
    }
    merged
}

/// A parameter's layout under `cfg`: its merged shape (empty when it uses the graft alone) and its
/// blocks' offsets and extents in that shape (every dimension cut into pieces of at most
/// block_size, row-major order).
#[allow(clippy::type_complexity)]
fn layout(cfg: &ShampooConfig, shape: &[usize]) -> (Vec<usize>, Vec<(Vec<usize>, Vec<usize>)>) {
    let skip = shape.len() < cfg.skip_preconditioning_rank_lt
        || shape.iter().any(|&d| d > cfg.skip_preconditioning_dim_size_gt);
    let merged = match (skip, cfg.best_effort_shape_interpretation) {
        (true, _) => Vec::new(),
        (false, true) => merge_small_dims(shape, cfg.merge_small_dims_block_size),
        (false, false) => shape.to_vec(),
    };
    let bs = cfg.block_size;
    let mut ats: Vec<Vec<usize>> = if merged.is_empty() { Vec::new() } else { vec![Vec::new()] };
    for &d in &merged {
        ats = ats.into_iter().flat_map(|at| (0..d).step_by(bs).map(move |o| [&at[..], &[o]].concat())).collect();
    }
    let blocks = ats
        .into_iter()
        .map(|at| {
            let size = at.iter().zip(&merged).map(|(&o, &d)| bs.min(d - o)).collect();
            (at, size)
        })
        .collect();
    (merged, blocks)
}

/// The order p of the roots L^{−1/p} of a block of rank `rank` (after merging): `exponent_override`
/// when set, else 2·rank; None past the 32 that `inv_root` takes.
fn root_order(cfg: &ShampooConfig, rank: usize) -> Option<u32> {
    let p = if cfg.exponent_override > 0 { cfg.exponent_override } else { 2 * rank };
    u32::try_from(p).ok().filter(|&p| p <= 32)
}

/// One block of a parameter (reshaped as in the module's text) and its preconditioner state.
struct Block {
    /// Offset and extent per dimension of the merged shape.
    at: Vec<usize>,
    size: Vec<usize>,
    /// The block's gradient and direction (the parameter's own when it is one block).
    g: Mat,
    s: Mat,
    /// Scratch of the block's size.
    t: Mat,
    /// Per mode: statistic and root.
    stats: Vec<Mat>,
    roots: Vec<Mat>,
}

impl Block {
    /// (P, d, Q): the dimensions before mode i multiplied, mode i's, the ones after multiplied.
    fn split(&self, i: usize) -> (usize, usize, usize) {
        (self.size[..i].iter().product(), self.size[i], self.size[i + 1..].iter().product())
    }
}

impl Param {
    /// Each block's offset and extent in the merged shape.
    fn block_layout(&self) -> Vec<(&[usize], &[usize])> {
        self.blocks.iter().map(|b| (&b.at[..], &b.size[..])).collect()
    }
}

struct Param {
    shape: Vec<usize>,
    /// The shape after merging (empty when the parameter uses the graft alone).
    merged: Vec<usize>,
    rows: usize,
    cols: usize,
    p: Mat,
    grad: Mat,
    /// optax's `momentum`: of the grafted Shampoo direction, every step (of the graft direction for
    /// a graft-only parameter).
    momentum: Mat,
    /// optax's `diagonal_momentum`, of the graft direction, for a preconditioned parameter: fed and
    /// used until start_preconditioning_step (never read after, so no longer fed).
    graft_momentum: Option<Mat>,
    acc: Mat,
    d: Mat,
    s: Mat,
    u: Mat,
    norms: [Mat; 2],
    blocks: Vec<Block>,
}

/// The checkpoint name of a parameter's graft momentum.
const GRAFT_MOMENTUM: &str = "graft_momentum";

/// Handle of a parameter added to [`Shampoo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShampooParam(usize);

/// Shampoo over a [`MatOps`] backend.
pub struct Shampoo<O: MatOps> {
    ops: O,
    cfg: ShampooConfig,
    params: Vec<Param>,
    metas: Vec<ParamMeta>,
    step: usize,
    /// Non-finite gradients: written ones refused, the step skipped and counted.
    guard: HostGuard,
    root_failures: usize,
    /// The scalar 1 (the numerator of the normalised grafts' 1/(‖g‖ + 1e-16)).
    one: Mat,
}

impl Shampoo<GpuMats> {
    /// Shampoo on the GPU of `ctx`.
    pub fn gpu(ctx: &Context, cfg: ShampooConfig) -> Result<Self> {
        Self::new(GpuMats::new(ctx)?, cfg)
    }
}

impl Shampoo<CpuMats> {
    /// Shampoo's CPU twin (the same driver over the CPU matrix operations).
    pub fn cpu(cfg: ShampooConfig) -> Result<Self> {
        Self::new(CpuMats::default(), cfg)
    }
}

impl<O: MatOps> Shampoo<O> {
    /// An empty optimizer on `ops` (validates the configuration).
    pub fn new(ops: O, cfg: ShampooConfig) -> Result<Self> {
        cfg.validate()?;
        let mut ops = ops;
        let one = ops.upload(&[1.0], 1, 1, 1)?;
        Ok(Shampoo {
            ops,
            cfg,
            params: Vec::new(),
            metas: Vec::new(),
            step: 0,
            guard: HostGuard::default(),
            root_failures: 0,
            one,
        })
    }

    /// Adds a parameter of any rank, named `param{i}` in checkpoints (i = the order of adding; see
    /// [`Shampoo::add_named_param`]): merged, blocked and preconditioned as the module's text says, or
    /// driven by the graft alone (rank below `skip_preconditioning_rank_lt`, a dimension above
    /// `skip_preconditioning_dim_size_gt`).
    pub fn add_param(&mut self, data: &[f32], shape: &[usize]) -> Result<ShampooParam> {
        let name = format!("param{}", self.params.len());
        self.add_named_param(&name, data, shape)
    }

    /// As [`Shampoo::add_param`], under `name` (unique; checkpoints and errors use it, and a
    /// checkpoint loads only into a Shampoo whose parameters have its names and shapes).
    pub fn add_named_param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<ShampooParam> {
        if self.metas.iter().any(|m| m.name == name) {
            return Err(Error::Invalid(format!("shampoo: a parameter is already named {name:?}")));
        }
        let n: usize = shape.iter().product();
        if n != data.len() || n == 0 {
            return Err(Error::Shape {
                what: "shampoo parameter".into(),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        let cfg = &self.cfg;
        let (merged, blocks_at) = layout(cfg, shape);
        if root_order(cfg, merged.len()).is_none() {
            return Err(Error::Invalid(format!(
                "shampoo parameter of shape {shape:?}: rank {} after merging needs a root of order {} (at most 32)",
                merged.len(),
                2 * merged.len()
            )));
        }
        let whole = blocks_at.len() == 1;
        for (_, size) in &blocks_at {
            // A middle mode's batched products (P matrices) and the block copies (the third
            // dimension from the end) put their matrices in one grid dimension.
            let k = size.len();
            let middle = (1..k.saturating_sub(1)).map(|i| size[..i].iter().product::<usize>());
            let batch = middle.chain((k >= 3).then(|| size[k - 3])).max().unwrap_or(1);
            if batch > self.ops.max_batch() {
                return Err(Error::Invalid(format!(
                    "shampoo parameter of shape {shape:?}: a block of {size:?} needs batches of {batch} matrices, \
                     more than this backend's {} (use a smaller block_size or merge_small_dims_block_size)",
                    self.ops.max_batch()
                )));
            }
        }
        let (rows, cols) = if shape.len() >= 2 { (shape[0], n / shape[0]) } else { (1, n) };
        let ops = &mut self.ops;
        let p = ops.upload(data, 1, rows, cols)?;
        let [grad, momentum, acc, d, s, u] = [(); 6].map(|_| ops.alloc(1, rows, cols));
        let (grad, s) = (grad?, s?);
        let eps = self.cfg.matrix_eps as f32;
        let eye = |ops: &mut O, k: usize, v: f32| -> Result<Mat> {
            let m = ops.alloc(1, k, k)?;
            ops.affine(m, None, 0.0, Scale::One, 0.0, v)?;
            Ok(m)
        };
        let mut blocks = Vec::new();
        for (at, size) in blocks_at {
            let count: usize = size.iter().product();
            let mut block = Block {
                at,
                size: size.clone(),
                g: if whole { grad } else { ops.alloc(1, 1, count)? },
                s: if whole { s } else { ops.alloc(1, 1, count)? },
                t: ops.alloc(1, 1, count)?,
                stats: Vec::new(),
                roots: Vec::new(),
            };
            for &dim in &size {
                block.stats.push(eye(ops, dim, eps)?);
                block.roots.push(eye(ops, dim, 1.0)?);
            }
            blocks.push(block);
        }
        let norms = [ops.alloc(1, 1, 1)?, ops.alloc(1, 1, 1)?];
        // Allocated whatever the graft: a checkpoint's settings (its graft among them) replace these.
        let graft_momentum = if blocks.is_empty() { None } else { Some(ops.alloc(1, rows, cols)?) };
        // Every allocation has succeeded: the bookkeeping grows together (an error above left it
        // as it was).
        let (momentum, acc, d, u) = (momentum?, acc?, d?, u?);
        self.metas.push(ParamMeta { name: name.to_string(), shape: shape.to_vec(), group: 0 });
        self.guard.add_param();
        self.params.push(Param {
            shape: shape.to_vec(),
            merged,
            rows,
            cols,
            p,
            grad,
            momentum,
            graft_momentum,
            acc,
            d,
            s,
            u,
            norms,
            blocks,
        });
        Ok(ShampooParam(self.params.len() - 1))
    }

    /// Parameter `id`, checking that it exists and, unless `len` is usize::MAX, that `len` values fit
    /// it (`what` names them in the error).
    fn param(&self, id: ParamId, len: usize, what: &str) -> Result<&Param> {
        let p = self
            .params
            .get(id.0)
            .ok_or_else(|| Error::Invalid(format!("shampoo: no parameter {} (it has {})", id.0, self.params.len())))?;
        if len != usize::MAX && len != p.rows * p.cols {
            return Err(Error::Shape {
                what: format!("{what} of {}", self.metas[id.0].name),
                expected: p.shape.clone(),
                got: vec![len],
            });
        }
        Ok(p)
    }

    /// Steps taken (skipped steps are not counted).
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Steps skipped because a gradient held NaN or Inf.
    pub fn skipped_steps(&self) -> usize {
        self.guard.skipped() as usize
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

    /// How the parameter is preconditioned: its shape after merging (empty when it uses the graft
    /// alone) and each block's offset and extent in that shape, to set beside optax's
    /// `Preconditioner` for the same settings.
    ///
    /// ```
    /// use gpuopt::optim::shampoo::{Shampoo, ShampooConfig};
    /// use gpuopt::reference::roots::CpuMats;
    /// let mut opt = Shampoo::new(CpuMats::default(), ShampooConfig { block_size: 128, ..Default::default() })?;
    /// let conv = opt.add_param(&vec![0.0; 3 * 3 * 64 * 64], &[3, 3, 64, 64])?;
    /// let bias = opt.add_param(&[0.0; 10], &[10])?;
    /// let (merged, blocks) = opt.layout(conv);
    /// assert_eq!(merged, [576, 64]); // 3·3·64 = 576 <= 4096, then 576·64 > 4096
    /// assert_eq!(blocks.len(), 5); // 576 = 4·128 + 64 rows of blocks, one column
    /// assert_eq!(blocks[4], (&[512, 0][..], &[64, 64][..]));
    /// assert_eq!(opt.layout(bias).0, [10]); // vectors are preconditioned, as in optax
    /// # Ok::<(), gpuopt::Error>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn layout(&self, id: ShampooParam) -> (&[usize], Vec<(&[usize], &[usize])>) {
        let p = &self.params[id.0];
        (&p.merged, p.block_layout())
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
    /// the graft's momentum (a preconditioned parameter), and per block its statistics and roots:
    /// `l/i`, `r/i`, `pl/i`, `pr/i` for a matrix block (the names of checkpoints from before rank-k
    /// blocks), `l{mode}/i` and `pl{mode}/i` for other ranks.
    fn state_names(p: &Param) -> Vec<String> {
        let mut v = vec!["momentum".to_string(), "graft".to_string()];
        v.extend(p.graft_momentum.map(|_| GRAFT_MOMENTUM.to_string()));
        for (i, b) in p.blocks.iter().enumerate() {
            let stats: Vec<String> = match b.size.len() {
                2 => vec!["l".into(), "r".into()],
                k => (0..k).map(|m| format!("l{m}")).collect(),
            };
            v.extend(stats.iter().map(|n| format!("{n}/{i}")));
            v.extend(stats.iter().map(|n| format!("p{n}/{i}")));
        }
        v
    }

    fn state_mats(p: &Param) -> Vec<Mat> {
        let mut v = vec![p.momentum, p.acc];
        v.extend(p.graft_momentum);
        for b in &p.blocks {
            v.extend(&b.stats);
            v.extend(&b.roots);
        }
        v
    }

    /// One step with host gradients, one per parameter in the order they were added (each written as
    /// by [`Stepper::write_grad`], then [`Stepper::step`]). A gradient with NaN or Inf is not written
    /// and skips the whole step: parameters and state do not change (the finite gradients are written
    /// to [`Shampoo::grad_mat`]); [`Shampoo::skipped_steps`] counts it.
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
        for (i, (g, p)) in grads.iter().zip(&self.params).enumerate() {
            if self.guard.admit(i, g) {
                self.ops.write(p.grad, g)?;
            }
        }
        Stepper::step(self)
    }

    /// One step with the gradients already in [`Shampoo::grad_mat`]. As in [`Shampoo::step`], a
    /// gradient holding NaN or Inf skips the whole step (counted by [`Shampoo::skipped_steps`]); the
    /// test is each gradient's Frobenius norm (computed overflow-safely), read back: one number per
    /// parameter, one synchronisation per step. A gradient refused by [`Stepper::write_grad`] since
    /// the last step skips it too, as it would [`Stepper::step`].
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
        if self.guard.skip_step_with(!finite?) {
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
        // Each phase views a parameter's gradient and direction in its blocks' shapes and gives them
        // back their own shape afterwards (on an error too, so that the parameter stays usable).
        let restore = |ops: &mut O, p: &Param, r: Result<()>| {
            ops.reshape(p.grad, 1, p.rows, p.cols)?;
            ops.reshape(p.s, 1, p.rows, p.cols)?;
            r
        };
        let update = (t - 1).is_multiple_of(cfg.statistics_compute_steps);
        for p in &self.params {
            let r = statistics(ops, p, update, b2, w2);
            restore(ops, p, r)?;
        }
        if refresh {
            refresh_roots(ops, &self.params, &cfg, &mut self.root_failures)?;
        }
        for p in &self.params {
            // Graft direction D; the normalised grafts scale g into p.u first (p.u is written again
            // below, after D has been computed from it).
            let eps = cfg.diag_eps as f32;
            let normalised = |ops: &mut O| -> Result<Mat> {
                ops.frobenius(p.grad, p.norms[0])?;
                ops.affine(p.u, Some(p.grad), 1.0, Scale::Ratio(self.one, p.norms[0]), 0.0, 0.0)?;
                Ok(p.u)
            };
            // optax's clip_by_scaled_gradient_norm: D/max(1, ‖D‖/(sqrt(n)·c)), through p.u.
            let clip = |ops: &mut O| -> Result<()> {
                if let Some(c) = cfg.clip_by_scaled_gradient_norm {
                    let limit = ((p.rows * p.cols) as f64).sqrt() * c;
                    ops.frobenius(p.d, p.norms[0])?;
                    ops.affine(p.u, Some(p.d), 1.0, Scale::Clip(p.norms[0], limit as f32), 0.0, 0.0)?;
                    ops.affine(p.d, Some(p.u), 1.0, Scale::One, 0.0, 0.0)?;
                }
                Ok(())
            };
            match cfg.graft {
                Graft::Sgd => ops.affine(p.d, Some(p.grad), 1.0, Scale::One, 0.0, 0.0)?,
                Graft::Adagrad => ops.graft(p.acc, p.grad, p.d, 1.0, 1.0, eps)?,
                Graft::Rmsprop => {
                    ops.graft(p.acc, p.grad, p.d, b2, w2, eps)?;
                    clip(ops)?
                }
                Graft::SqrtN => ops.sign(p.grad, p.d)?,
                Graft::AdagradNormalized => {
                    let g = normalised(ops)?;
                    ops.graft(p.acc, g, p.d, 1.0, 1.0, eps)?
                }
                Graft::RmspropNormalized => {
                    let g = normalised(ops)?;
                    ops.graft(p.acc, g, p.d, b2, w2, eps)?;
                    clip(ops)?
                }
            }
            // optax keeps the grafted Shampoo direction's momentum and the graft's apart: the former
            // is fed from the first step, so a preconditioned parameter computes S before
            // start_preconditioning_step too; the graft's is not read once preconditioning has
            // started, and is no longer fed.
            let shampoo = !p.blocks.is_empty();
            let preconditioned = precondition && shampoo;
            if shampoo {
                let r = direction(ops, p);
                restore(ops, p, r)?;
                // (7.7.5) graft: S·‖D‖/(‖S‖ + 1e-16), into p.u.
                ops.frobenius(p.d, p.norms[0])?;
                ops.frobenius(p.s, p.norms[1])?;
                ops.affine(p.u, Some(p.s), 1.0, Scale::Ratio(p.norms[0], p.norms[1]), 0.0, 0.0)?;
            }
            // (direction, its momentum) pairs fed this step, and the one the step takes.
            let (shampoo_pair, graft_pair) = ((p.u, p.momentum), (p.d, p.graft_momentum.unwrap_or(p.momentum)));
            let fed = [shampoo.then_some(shampoo_pair), (!preconditioned).then_some(graft_pair)];
            let (dir, momentum) = if preconditioned { shampoo_pair } else { graft_pair };
            // (7.7.6) coupled decay: wd·p joins each direction fed to a momentum (this step's own
            // buffers).
            let wd = cfg.weight_decay as f32;
            if !cfg.decoupled_weight_decay && wd != 0.0 {
                for (d, _) in fed.iter().flatten() {
                    ops.affine(*d, Some(p.p), wd, Scale::One, 1.0, 0.0)?;
                }
            }
            // (7.7.7): M ← β1·M + w·S.
            let b1 = cfg.beta1 as f32;
            let w = if cfg.moving_average_for_momentum { (1.0 - cfg.beta1) as f32 } else { 1.0 };
            for (d, m) in fed.iter().flatten() {
                ops.affine(*m, Some(*d), w, Scale::One, b1, 0.0)?;
            }
            // (7.7.8): U ← w·S + β1·M or M (p.s, the raw direction, is free by now).
            let step_dir = if cfg.nesterov {
                ops.affine(p.s, Some(momentum), b1, Scale::One, 0.0, 0.0)?;
                ops.affine(p.s, Some(dir), w, Scale::One, 1.0, 0.0)?;
                p.s
            } else {
                momentum
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

/// Shampoo as a [`Stepper`], for loops written once for every optimizer: [`ParamId`]`(i)` is the
/// i-th parameter added ([`ShampooParam`] converts), one group (group 0: the configuration's lr and
/// weight decay, which [`Stepper::set_lr`] / [`Stepper::set_weight_decay`] change for a schedule; as
/// optax's callable learning rate, the momenta are not rescaled). The state names of
/// [`Stepper::read_state`] are the checkpoint's: "momentum", "graft", "graft_momentum" (a preconditioned
/// parameter), and per block its statistics and roots ("l/0", "pl/0", …). A non-finite gradient given
/// to [`Stepper::write_grad`] is not written and skips the next step unless rewritten.
impl<O: MatOps> Stepper for Shampoo<O> {
    fn step(&mut self) -> Result<()> {
        if self.guard.skip_step() {
            return Ok(());
        }
        self.apply_step()
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        let p = self.param(id, grad.len(), "gradient")?;
        let m = p.grad;
        if self.guard.admit(id.0, grad) {
            self.ops.write(m, grad)?;
        }
        Ok(())
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        let m = self.param(id, data.len(), "values")?.p;
        self.ops.write(m, data)
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        let m = self.param(id, usize::MAX, "")?.p;
        self.ops.read(m)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        let p = self.param(id, usize::MAX, "")?;
        let names = Self::state_names(p);
        let Some(k) = names.iter().position(|n| n == state) else {
            return Err(Error::Invalid(format!(
                "shampoo: {} has no state {state:?} ({})",
                self.metas[id.0].name,
                names.join(", ")
            )));
        };
        let m = Self::state_mats(p)[k];
        self.ops.read(m)
    }

    fn step_count(&mut self) -> Result<u64> {
        Ok(self.step as u64)
    }

    fn found_non_finite(&mut self) -> Result<bool> {
        Ok(self.guard.last_skipped())
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.guard.skipped())
    }

    fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        update_config(&mut self.cfg, group, |c| c.lr = lr, ShampooConfig::validate)
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(&mut self.cfg, group, |c| c.weight_decay = wd, ShampooConfig::validate)
    }

    /// Everything needed to resume: step counts, hyperparameters, parameters, momentum, graft
    /// statistics, and every block's statistics and roots.
    fn snapshot(&mut self) -> Result<Snapshot> {
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
        let mut s = config_snapshot(
            "shampoo",
            &self.cfg,
            (self.cfg.lr, self.cfg.weight_decay),
            self.step as u64,
            &self.metas,
            values,
            states,
        );
        s.skipped = self.guard.skipped();
        // A counter, not a hyperparameter: kept beside them (the format allows optimizer extras).
        s.hyper["root_failures"] = serde_json::json!(self.root_failures);
        Ok(s)
    }

    /// Restores a snapshot of a Shampoo with the same parameters and the same layout (the blocks that
    /// its block size, merging and skipping settings give each parameter); a mismatch is an error and
    /// changes nothing.
    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: "<snapshot>".into(), reason };
        s.check_common("shampoo", &self.metas)?;
        // Checkpoints from before dimension merging had no such keys; their layout is what these
        // values give for matrices and vectors (rank >= 3 was flattened then: those do not load).
        let mut hyper = s.hyper.clone();
        if let Some(h) = hyper.as_object_mut().filter(|h| !h.contains_key("best_effort_shape_interpretation")) {
            h.insert("best_effort_shape_interpretation".into(), false.into());
            h.insert("skip_preconditioning_dim_size_gt".into(), usize::MAX.into());
            h.insert("skip_preconditioning_rank_lt".into(), 2.into());
        }
        let cfg: ShampooConfig = serde_json::from_value(hyper).map_err(|e| bad(format!("shampoo config: {e}")))?;
        cfg.validate()?;
        // Checkpoints written before the counter was saved have none: 0.
        let root_failures = match s.hyper.get("root_failures") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| bad(format!("root_failures {v} is not a count")))? as usize,
        };
        // The file's settings must give every parameter the blocks it was added with (and a root
        // order inv_root takes).
        for (p, meta) in self.params.iter().zip(&self.metas) {
            if root_order(&cfg, p.merged.len()).is_none() {
                return Err(bad(format!(
                    "{} has rank {} after merging: the file's exponent_override 0 would need roots of order {} \
                     (at most 32)",
                    meta.name,
                    p.merged.len(),
                    2 * p.merged.len()
                )));
            }
            let (merged, blocks) = layout(&cfg, &p.shape);
            let file: Vec<(&[usize], &[usize])> = blocks.iter().map(|(a, s)| (&a[..], &s[..])).collect();
            if merged != p.merged || file != p.block_layout() {
                let settings = |c: &ShampooConfig| {
                    format!(
                        "block_size {}, best_effort_shape_interpretation {}, merge_small_dims_block_size {}, \
                         skip_preconditioning_dim_size_gt {}, skip_preconditioning_rank_lt {}",
                        c.block_size,
                        c.best_effort_shape_interpretation,
                        c.merge_small_dims_block_size,
                        c.skip_preconditioning_dim_size_gt,
                        c.skip_preconditioning_rank_lt
                    )
                };
                return Err(bad(format!(
                    "{} of shape {:?}: the file's layout settings ({}) give it other blocks than this \
                     Shampoo's ({})",
                    meta.name,
                    p.shape,
                    settings(&cfg),
                    settings(&self.cfg)
                )));
            }
        }
        // Per parameter, the state tensors of this layout (their names carry the block count), each of
        // its matrix's size.
        let mut checked = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let names = Self::state_names(p);
            // Checkpoints from before the graft had its own momentum kept one buffer, fed by the graft
            // until start_preconditioning_step and by Shampoo after: it seeds both.
            let legacy = p.graft_momentum.is_some()
                && s.states.get(i).is_some_and(|st| st.iter().all(|(n, _)| n != GRAFT_MOMENTUM));
            let refs: Vec<&str> =
                names.iter().map(String::as_str).filter(|n| !legacy || *n != GRAFT_MOMENTUM).collect();
            let mut st = s.states_of(i, &refs)?;
            if legacy {
                st.insert(2, st[0]);
            }
            for ((name, v), m) in names.iter().zip(&st).zip(Self::state_mats(p)) {
                let (b, r, c) = self.ops.shape(m);
                if v.len() != b * r * c {
                    return Err(bad(format!(
                        "state {name} of {} has {} values, expected {}",
                        self.metas[i].name,
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
        self.guard.reset(s.skipped);
        self.root_failures = root_failures;
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.metas
    }
}

impl From<ShampooParam> for ParamId {
    fn from(p: ShampooParam) -> ParamId {
        ParamId(p.0)
    }
}

/// Gathers every block of p from p.grad (when p has several; the direction reads them too) and,
/// when `update`, (7.7.1) for each. Leaves p.grad viewed in a block's shape: the caller restores it.
fn statistics(ops: &mut impl MatOps, p: &Param, update: bool, b2: f32, w2: f32) -> Result<()> {
    for b in &p.blocks {
        if p.blocks.len() > 1 {
            copy_block(ops, (p.grad, &p.merged), (b.g, &b.size), &b.at, true)?;
        }
        for i in (0..b.stats.len()).filter(|_| update) {
            statistic(ops, b, i, b2, w2)?;
        }
    }
    Ok(())
}

/// (7.7.3) for every block of p, scattered into p.s when p has several. Leaves p.grad and p.s
/// viewed in a block's shape: the caller restores them.
fn direction(ops: &mut impl MatOps, p: &Param) -> Result<()> {
    for b in &p.blocks {
        precondition_block(ops, b)?;
        if p.blocks.len() > 1 {
            copy_block(ops, (p.s, &p.merged), (b.s, &b.size), &b.at, false)?;
        }
    }
    Ok(())
}

/// (7.7.2) every statistic's root, (L + matrix_eps·I)^{−1/(2k)} by the coupled Newton iteration,
/// statistics of the same size and order (k) across all parameters and blocks batched into one
/// iteration (each matrix converges, is checked and fails on its own). A root that fails (max|M − I| NaN
/// or ≥ inverse_failure_threshold, or statistics that are not finite) keeps the old one and is counted in
/// `root_failures`; the scratch is released either way.
fn refresh_roots(
    ops: &mut impl MatOps,
    params: &[Param],
    cfg: &ShampooConfig,
    root_failures: &mut usize,
) -> Result<()> {
    let mut groups: std::collections::BTreeMap<(usize, u32), Vec<(Mat, Mat)>> = Default::default();
    for p in params {
        // Every parameter's order was checked when it was added (and at restore).
        let order = root_order(cfg, p.merged.len()).expect("a root order within 32");
        for b in &p.blocks {
            for ((&stat, &root), &n) in b.stats.iter().zip(&b.roots).zip(&b.size) {
                groups.entry((n, order)).or_default().push((stat, root));
            }
        }
    }
    let opts = InvRootOptions {
        eps: cfg.matrix_eps as f32,
        eps_relative: cfg.relative_matrix_epsilon,
        max_iters: cfg.root_iters,
        tol: 1e-6,
    };
    for ((n, order), pairs) in groups {
        let per_batch = ops.max_batch().min(ops.max_elements() / (n * n)).max(1);
        for chunk in pairs.chunks(per_batch) {
            let mark = ops.mark();
            let r = roots_of(ops, chunk, n, order, opts, cfg.inverse_failure_threshold as f32, root_failures);
            ops.release(mark);
            r?;
        }
    }
    Ok(())
}

/// The roots of one batch of n×n statistics (see [`refresh_roots`]).
fn roots_of(
    ops: &mut impl MatOps,
    pairs: &[(Mat, Mat)],
    n: usize,
    order: u32,
    opts: InvRootOptions,
    threshold: f32,
    root_failures: &mut usize,
) -> Result<()> {
    let stats = match pairs {
        [(stat, _)] => *stat,
        _ => {
            let batch = ops.alloc(pairs.len(), n, n)?;
            for (z, &(stat, _)) in pairs.iter().enumerate() {
                ops.copy_batch(batch, z, stat, 0, 1)?;
            }
            batch
        }
    };
    // Statistics that are not finite (or whose norm overflows) fail at once, each on its own: the
    // rest run without them (an infinite statistic stays infinite, and would otherwise cost a
    // refused batch and one root per statistic at every refresh).
    let norms = ops.alloc(pairs.len(), 1, 1)?;
    ops.frobenius(stats, norms)?;
    let finite: Vec<bool> = ops.read(norms)?.iter().map(|v| v.is_finite()).collect();
    if finite.contains(&false) {
        let bad = finite.iter().filter(|&&f| !f).count();
        *root_failures += bad;
        log::warn!("shampoo: {bad} statistics are not finite; keeping their old roots");
        let good: Vec<(Mat, Mat)> = pairs.iter().zip(&finite).filter(|(_, &f)| f).map(|(&p, _)| p).collect();
        return if good.is_empty() { Ok(()) } else { roots_of(ops, &good, n, order, opts, threshold, root_failures) };
    }
    match inv_root_unchecked(ops, stats, order, opts) {
        // A batch refused whole for any other reason runs each statistic on its own, so that one
        // bad statistic stops only its own refresh.
        Err(_) if pairs.len() > 1 => {
            for pair in pairs {
                let mark = ops.mark();
                let r = roots_of(ops, std::slice::from_ref(pair), n, order, opts, threshold, root_failures);
                ops.release(mark);
                r?;
            }
        }
        Ok(r) => {
            for (z, &(_, root)) in pairs.iter().enumerate() {
                if r.err[z].is_finite() && r.err[z] < threshold {
                    ops.copy_batch(root, 0, r.x, z, 1)?;
                } else {
                    *root_failures += 1;
                    log::warn!("shampoo: inverse root failed (max|M - I| = {}); keeping the old one", r.err[z]);
                }
            }
        }
        Err(e) => {
            *root_failures += pairs.len();
            log::warn!("shampoo: {} inverse roots failed ({e}); keeping the old ones", pairs.len());
        }
    }
    Ok(())
}

/// Copies a block between the parameter's tensor (`full`, of the merged shape) and the block's
/// own (`block`, of the block's extents) at offset `at`: gathers into the block when `gather`,
/// else scatters it back. Both are viewed with their last three dimensions (padded with leading
/// ones) as batch × rows × cols: one copy for rank <= 3, one per index of the leading dimensions
/// above.
fn copy_block(
    ops: &mut impl MatOps,
    full: (Mat, &[usize]),
    block: (Mat, &[usize]),
    at: &[usize],
    gather: bool,
) -> Result<()> {
    let pad = |v: &[usize], fill: usize| [vec![fill; 3usize.saturating_sub(v.len())], v.to_vec()].concat();
    let (fd, bd, o) = (pad(full.1, 1), pad(block.1, 1), pad(at, 0));
    let m = fd.len();
    for (mat, d) in [(full.0, &fd), (block.0, &bd)] {
        ops.reshape(mat, d[..m - 2].iter().product(), d[m - 2], d[m - 1])?;
    }
    let outer = &bd[..m - 3];
    for lin in 0..outer.iter().product::<usize>() {
        // The block's leading index u (row-major in `outer`) and the full tensor's batch it starts.
        let mut u = vec![0; m - 3];
        let mut rest = lin;
        for j in (0..m - 3).rev() {
            u[j] = rest % outer[j];
            rest /= outer[j];
        }
        let full_z = (0..m - 3).fold(0, |acc, j| acc * fd[j] + o[j] + u[j]) * fd[m - 3] + o[m - 3];
        let (f_at, b_at) = ([full_z, o[m - 2], o[m - 1]], [lin * bd[m - 3], 0, 0]);
        let size = [bd[m - 3], bd[m - 2], bd[m - 1]];
        if gather {
            ops.copy_window(block.0, b_at, full.0, f_at, size)?;
        } else {
            ops.copy_window(full.0, f_at, block.0, b_at, size)?;
        }
    }
    Ok(())
}

/// (7.7.1) for mode i of block b: stat ← β2·stat + w2·G_(i)·G_(i)ᵀ, a Gram half-product with the
/// statistic as its own addend. With G viewed as P × d × Q: the first mode (P = 1) is the Gram of a
/// d × Q matrix, the last (Q = 1) the Gᵀ·G of a P × d one; a middle mode first transposes each of the
/// P slices ([`MatOps::transpose`], O(P·d·Q)) so that the slices stack into a (P·Q) × d
/// matrix whose Gᵀ·G is the sum over the slices.
fn statistic(ops: &mut impl MatOps, b: &Block, i: usize, beta2: f32, w2: f32) -> Result<()> {
    let ((p, d, q), stat) = (b.split(i), b.stats[i]);
    if p == 1 {
        ops.reshape(b.g, 1, d, q)?;
        return ops.gemm(GemmDesc { alpha: w2, beta: beta2, ..GemmDesc::gram(d, q) }, b.g, b.g, stat, Some(stat));
    }
    // The last mode's unfolding is the block viewed (P·Q) × d with Q = 1; a middle mode's needs each
    // of its P slices (d × Q) transposed first.
    let x = if q == 1 {
        ops.reshape(b.g, 1, p, d)?;
        b.g
    } else {
        ops.reshape(b.g, p, d, q)?;
        ops.reshape(b.t, p, q, d)?;
        ops.transpose(b.g, b.t)?;
        ops.reshape(b.t, 1, p * q, d)?;
        b.t
    };
    let desc = GemmDesc { alpha: w2, beta: beta2, trans_a: true, symmetric: true, ..GemmDesc::new(d, d, p * q) };
    ops.gemm(desc, x, x, stat, Some(stat))
}

/// (7.7.3) b.s ← G ×_1 P_1 … ×_k P_k, each mode product one GEMM (the first mode P·G, the last
/// G·P, a middle one P times each slice, batched), alternating between b.t and b.s so that the last
/// lands in b.s.
fn precondition_block(ops: &mut impl MatOps, b: &Block) -> Result<()> {
    let k = b.size.len();
    let mut x = b.g;
    for (i, &root) in b.roots.iter().enumerate() {
        let y = if (k - 1 - i).is_multiple_of(2) { b.s } else { b.t };
        let (p, d, q) = b.split(i);
        if p == 1 {
            ops.reshape(x, 1, d, q)?;
            ops.reshape(y, 1, d, q)?;
            ops.gemm(GemmDesc::new(d, q, d), root, x, y, None)?;
        } else if q == 1 {
            ops.reshape(x, 1, p, d)?;
            ops.reshape(y, 1, p, d)?;
            ops.gemm(GemmDesc::new(p, d, d), x, root, y, None)?;
        } else {
            ops.reshape(x, p, d, q)?;
            ops.reshape(y, p, d, q)?;
            ops.gemm(GemmDesc { batch: p, ..GemmDesc::new(d, q, d) }, root, x, y, None)?;
        }
        x = y;
    }
    Ok(())
}
