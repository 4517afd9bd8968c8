//! OASIS (ALGORITHMS.md §6.5) and SANIA / PSPS (§6.6): Hessian-diagonal (OASIS) and Polyak-type
//! (SANIA) methods whose step size comes from global sums over all parameters, so the parameters are
//! kept in one flat vector and each step runs three dispatches from `shaders/oasis.wgsl` (stats with
//! partial sums, the scalar on one workgroup, the update), with nothing read back. [`FlatOptimizer`]
//! runs either on the GPU or as the CPU twin ([`FlatOptimizer::cpu`]), which mirrors the shader
//! line by line (sums in f64). A gradient or Hessian sample holding NaN or Inf is not written, and
//! it (or a NaN / infinite SANIA loss) skips the next step.
//!
//! OASIS (adaptive version, the paper's (6.5.0)–(6.5.6)); at step 1 the diagonal is the given
//! estimate itself (the warm start D_0) and η = lr (η_0); afterwards
//! ```text
//! D ← β2·D + (1−β2)·ĥ;  D̂ = max(|D|, α)
//! η ← min(sqrt(1 + θ)·η_prev, ‖w − w_prev‖_D̂ / (2·‖g − g_prev‖*_D̂));  θ ← η/η_prev
//! w_prev ← w;  g_prev ← g;  w ← (1 − lr·wd)·w − η·g/D̂
//! ```
//! with g_prev the previous step's gradient (the deterministic form; the stochastic form's second
//! gradient at w_prev on the same batch is the caller's to supply as that gradient). β2 and α
//! (`hess_floor`) have no confirmed defaults and must be given.
//!
//! SANIA (`variant` "sania", (6.6.2)) or PSPS ("psps", (6.6.1)) with the Adam-SQR (bias-corrected EMA
//! of g², default) or AdaGrad-SQR (sum of g²) preconditioner B, `sqrt_precond` using sqrt(B):
//! ```text
//! P = B (or sqrt(B)) + eps;  G = Σ g²/P;  λ = 1 − sqrt(1 − 2f/G) if 2f ≤ G else 1   (PSPS: λ = f/G)
//! w ← (1 − lr·wd)·w − lr·λ·g/P                         (G = 0: no step)
//! ```
//! f, the loss at this step (≥ 0, interpolation setting), is given with [`Stepper::write_loss`].
//!
//! A caution measured in `tests/oasis.rs`: when 2f > G SANIA takes the whole step g/P, which for a
//! square-free preconditioner with eps = 1e-8 is about 1/|g_i| on small coordinates, and a plain
//! least-squares problem diverged; the authors' PyTorch `SANIA_AdamSQR` uses eps = 0.1 (as a floor),
//! which converges, as do `sqrt_precond` and every PSPS form.

use super::{config_snapshot, update_config, GroupId, HostGuard, ParamId, ParamMeta, Snapshot, Stepper};
use crate::error::{Error, Result};
use crate::gpu::{Binding, BoundKernel, Context, KernelSpec, Tensor, WORKGROUP_SIZE};
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// OASIS: D EMA and the partial sums.
pub const OASIS_STATS: KernelSpec = KernelSpec {
    module: "oasis",
    entry: "oasis_stats",
    bindings: &[(0, U), (1, W), (2, R), (3, W), (4, W), (5, W), (6, R), (7, W)],
};
/// OASIS: η on one workgroup.
pub const OASIS_ETA: KernelSpec =
    KernelSpec { module: "oasis", entry: "oasis_eta", bindings: &[(0, U), (7, W), (8, W)] };
/// OASIS: the update.
pub const OASIS_APPLY: KernelSpec = KernelSpec {
    module: "oasis",
    entry: "oasis_apply",
    bindings: &[(0, U), (1, W), (2, R), (3, W), (4, W), (5, W), (8, W)],
};
/// SANIA: the statistic and the partial sums of G.
pub const SANIA_STATS: KernelSpec =
    KernelSpec { module: "oasis", entry: "sania_stats", bindings: &[(0, U), (2, R), (5, W), (7, W)] };
/// SANIA: λ on one workgroup.
pub const SANIA_LAMBDA: KernelSpec =
    KernelSpec { module: "oasis", entry: "sania_lambda", bindings: &[(0, U), (7, W), (8, W)] };
/// SANIA: the update.
pub const SANIA_APPLY: KernelSpec =
    KernelSpec { module: "oasis", entry: "sania_apply", bindings: &[(0, U), (1, W), (2, R), (5, W), (8, W)] };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[OASIS_STATS, OASIS_ETA, OASIS_APPLY, SANIA_STATS, SANIA_LAMBDA, SANIA_APPLY];

const CHUNK: usize = 4096;

fn default_lr() -> f64 {
    1.0
}

/// OASIS's hyperparameters. `beta2` and `hess_floor` are required (ALGORITHMS.md §6.5(b): the
/// paper's recommended values are unconfirmed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OasisConfig {
    /// η_0, the first step's size (and the fixed step without `adaptive`).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// EMA coefficient of the diagonal.
    pub beta2: f64,
    /// α: |D| is truncated below at this value.
    pub hess_floor: f64,
    /// Decoupled decay (DW-B; 0 in the paper).
    #[serde(default)]
    pub weight_decay: f64,
    /// Adaptive η from the local Lipschitz estimate (the paper's algorithm); false: η = lr.
    #[serde(default = "yes")]
    pub adaptive: bool,
}

fn yes() -> bool {
    true
}

impl OasisConfig {
    /// A configuration with the two required values.
    pub fn new(lr: f64, beta2: f64, hess_floor: f64) -> Self {
        OasisConfig { lr, beta2, hess_floor, weight_decay: 0.0, adaptive: true }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        check_nonneg("lr", self.lr)?;
        check_nonneg("weight_decay", self.weight_decay)?;
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(hyper("beta2", self.beta2, "must be in [0, 1)"));
        }
        // It bounds the division by the Hessian diagonal.
        super::check_f32_eps("hess_floor", self.hess_floor)?;
        Ok(())
    }
}

/// SANIA's preconditioner (§6.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaniaPreconditioner {
    /// B = EMA(g², β2)/(1 − β2^t) (`SANIA_AdamSQR`).
    #[default]
    AdamSqr,
    /// B = Σ g² (`SANIA_AdagradSQR`).
    AdagradSqr,
}

/// Which model of the loss sets the step (§6.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaniaVariant {
    /// The second-order model (6.6.2).
    #[default]
    Sania,
    /// The first-order model (6.6.1), PSPS.
    Psps,
}

/// SANIA's hyperparameters; defaults are the authors' code's (lr 1, β2 0.999, eps 1e-8 as the NumPy
/// version, no square root).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaniaConfig {
    /// Learning rate (scales the Polyak step).
    pub lr: f64,
    /// EMA coefficient of the Adam-SQR statistic.
    pub beta2: f64,
    /// Added to the preconditioner.
    pub eps: f64,
    /// Decoupled decay (DW-B).
    pub weight_decay: f64,
    /// Precondition with sqrt(B) (not scale invariant).
    pub sqrt_precond: bool,
    /// Adam-SQR or AdaGrad-SQR.
    pub preconditioner: SaniaPreconditioner,
    /// SANIA or PSPS.
    pub variant: SaniaVariant,
}

impl Default for SaniaConfig {
    fn default() -> Self {
        SaniaConfig {
            lr: 1.0,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            sqrt_precond: false,
            preconditioner: SaniaPreconditioner::AdamSqr,
            variant: SaniaVariant::Sania,
        }
    }
}

impl SaniaConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        check_nonneg("lr", self.lr)?;
        check_nonneg("weight_decay", self.weight_decay)?;
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(hyper("beta2", self.beta2, "must be in [0, 1)"));
        }
        super::check_f32_eps("eps", self.eps)?;
        Ok(())
    }
}

fn hyper(name: &str, value: f64, reason: &str) -> Error {
    Error::Hyperparameter { name: name.into(), value, reason: reason.into() }
}

fn check_nonneg(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(hyper(name, v, "must be finite and >= 0"))
    }
}

/// OASIS or SANIA.
#[derive(Clone, Debug, PartialEq)]
pub enum FlatAlgorithm {
    /// OASIS.
    Oasis(OasisConfig),
    /// SANIA / PSPS.
    Sania(SaniaConfig),
}

impl FlatAlgorithm {
    /// The replay name.
    pub fn name(&self) -> &'static str {
        match self {
            FlatAlgorithm::Oasis(_) => "oasis",
            FlatAlgorithm::Sania(_) => "sania",
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            FlatAlgorithm::Oasis(c) => c.validate(),
            FlatAlgorithm::Sania(c) => c.validate(),
        }
    }

    fn lr_wd(&self) -> (f64, f64) {
        match self {
            FlatAlgorithm::Oasis(c) => (c.lr, c.weight_decay),
            FlatAlgorithm::Sania(c) => (c.lr, c.weight_decay),
        }
    }

    /// Names of the state tensors: per parameter, then the shared scalars in each parameter's
    /// "scalars" ([eta_prev, theta_prev, step scalar, 0]).
    pub fn states(&self) -> &'static [&'static str] {
        match self {
            FlatAlgorithm::Oasis(_) => &["d", "w_prev", "g_prev", "scalars"],
            FlatAlgorithm::Sania(_) => &["b", "scalars"],
        }
    }
}

/// Uniform of `shaders/oasis.wgsl`. Keep in sync with `struct FlatParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct FlatParams {
    len: u32,
    chunks: u32,
    first: u32,
    adaptive: u32,
    beta2: f32,
    omb2: f32,
    floor: f32,
    decay: f32,
    lr: f32,
    loss: f32,
    eps: f32,
    bc2: f32,
    sqrt_precond: u32,
    psps: u32,
    _p: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<FlatParams>() == 64);

impl FlatAlgorithm {
    fn params(&self, len: usize, t: u64, loss: f32) -> FlatParams {
        let chunks = len.div_ceil(CHUNK).max(1) as u32;
        match self {
            FlatAlgorithm::Oasis(c) => FlatParams {
                len: len as u32,
                chunks,
                first: (t == 1) as u32,
                adaptive: c.adaptive as u32,
                beta2: c.beta2 as f32,
                omb2: (1.0 - c.beta2) as f32,
                floor: c.hess_floor as f32,
                decay: (1.0 - c.lr * c.weight_decay) as f32,
                lr: c.lr as f32,
                ..Default::default()
            },
            FlatAlgorithm::Sania(c) => {
                let adam = c.preconditioner == SaniaPreconditioner::AdamSqr;
                FlatParams {
                    len: len as u32,
                    chunks,
                    beta2: if adam { c.beta2 as f32 } else { 1.0 },
                    omb2: if adam { (1.0 - c.beta2) as f32 } else { 1.0 },
                    decay: (1.0 - c.lr * c.weight_decay) as f32,
                    lr: c.lr as f32,
                    loss,
                    eps: c.eps as f32,
                    bc2: if adam { (1.0 - c.beta2.powi(t as i32)) as f32 } else { 1.0 },
                    sqrt_precond: c.sqrt_precond as u32,
                    psps: (c.variant == SaniaVariant::Psps) as u32,
                    ..Default::default()
                }
            }
        }
    }
}

struct GpuFlat {
    ctx: Context,
    uniform: wgpu::Buffer,
    // p, g, w_prev, g_prev, d, hess, partials, scal
    bufs: Vec<Tensor>,
    passes: [BoundKernel; 3],
}

/// The CPU twin's state.
#[derive(Clone, Debug, Default)]
struct CpuFlat {
    p: Vec<f32>,
    g: Vec<f32>,
    wp: Vec<f32>,
    gp: Vec<f32>,
    d: Vec<f32>,
    hd: Vec<f32>,
    scal: [f32; 4],
}

enum Store {
    Gpu(GpuFlat),
    Cpu(CpuFlat),
}

/// OASIS or SANIA over all parameters as one flat vector, on the GPU or the CPU.
///
/// ```
/// use gpuopt::optim::{FlatAlgorithm, FlatOptimizer, OasisConfig, ParamId, Stepper};
/// let alg = FlatAlgorithm::Oasis(OasisConfig::new(1.0, 0.9, 1e-3)); // lr (η₀), beta2, hess_floor
/// let mut opt = FlatOptimizer::cpu(alg, &[("w".into(), vec![2.0, -4.0], vec![2])])?;
/// // f(w) = ½(w₀² + 4w₁²): gradient (w₀, 4w₁), Hessian diagonal (1, 4); D̂⁻¹∇f = w, so one step with
/// // η₀ = 1 lands on the minimum.
/// opt.write_grad(ParamId(0), &[2.0, -16.0])?;
/// opt.write_hess_diag(ParamId(0), &[1.0, 4.0])?;
/// opt.step()?;
/// assert_eq!(opt.read_param(ParamId(0))?, vec![0.0, 0.0]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub struct FlatOptimizer {
    algorithm: FlatAlgorithm,
    params: Vec<ParamMeta>,
    offsets: Vec<usize>,
    len: usize,
    t: u64,
    loss: Option<f32>,
    store: Store,
    /// NaN/Inf in a gradient (slot i), a Hessian diagonal (slot n + i) or SANIA's loss (slot 2n)
    /// skips the step.
    guard: HostGuard,
}

/// The shader's `truncate`: max(|d|, floor), NaN staying NaN.
fn truncate(d: f32, floor: f32) -> f32 {
    let a = d.abs();
    if a < floor {
        floor
    } else {
        a
    }
}

fn flatten(params: &[(String, Vec<f32>, Vec<usize>)]) -> Result<(Vec<ParamMeta>, Vec<usize>, Vec<f32>)> {
    let mut metas = Vec::new();
    let mut offsets = Vec::new();
    let mut flat = Vec::new();
    for (name, data, shape) in params {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape { what: name.clone(), expected: shape.clone(), got: vec![data.len()] });
        }
        if metas.iter().any(|m: &ParamMeta| &m.name == name) {
            return Err(Error::Invalid(format!("duplicate parameter name {name:?}")));
        }
        offsets.push(flat.len());
        flat.extend_from_slice(data);
        metas.push(ParamMeta { name: name.clone(), shape: shape.clone(), group: 0 });
    }
    if flat.is_empty() {
        return Err(Error::Invalid("the optimizer needs at least one non-empty parameter".into()));
    }
    if flat.len() > 65_535 * CHUNK {
        return Err(Error::Invalid(format!(
            "{} elements in one flat optimizer: at most {} (65,535 partial-sum workgroups of {CHUNK})",
            flat.len(),
            65_535 * CHUNK
        )));
    }
    Ok((metas, offsets, flat))
}

impl FlatOptimizer {
    /// The GPU optimizer over `params` (name, values, shape).
    pub fn new(ctx: &Context, algorithm: FlatAlgorithm, params: &[(String, Vec<f32>, Vec<usize>)]) -> Result<Self> {
        algorithm.validate()?;
        let (metas, offsets, flat) = flatten(params)?;
        let n = flat.len();
        let chunks = n.div_ceil(CHUNK).max(1);
        let mut bufs = vec![Tensor::from_slice(ctx, &flat, &[n])?];
        for _ in 0..5 {
            bufs.push(Tensor::zeros(ctx, &[n])?);
        }
        bufs.push(Tensor::zeros(ctx, &[chunks, 2])?);
        bufs.push(Tensor::zeros(ctx, &[4])?);
        let uniform = ctx.uniform_buffer("oasis/sania params", 64);
        let b = |i: usize| bufs[i].buffer();
        let passes = match algorithm {
            FlatAlgorithm::Oasis(_) => [
                ctx.bind(&OASIS_STATS, &[&uniform, b(0), b(1), b(2), b(3), b(4), b(5), b(6)])?,
                ctx.bind(&OASIS_ETA, &[&uniform, b(6), b(7)])?,
                ctx.bind(&OASIS_APPLY, &[&uniform, b(0), b(1), b(2), b(3), b(4), b(7)])?,
            ],
            FlatAlgorithm::Sania(_) => [
                ctx.bind(&SANIA_STATS, &[&uniform, b(1), b(4), b(6)])?,
                ctx.bind(&SANIA_LAMBDA, &[&uniform, b(6), b(7)])?,
                ctx.bind(&SANIA_APPLY, &[&uniform, b(0), b(1), b(4), b(7)])?,
            ],
        };
        let store = Store::Gpu(GpuFlat { ctx: ctx.clone(), uniform, bufs, passes });
        let guard = HostGuard::new(2 * metas.len() + 1);
        Ok(FlatOptimizer { algorithm, params: metas, offsets, len: n, t: 0, loss: None, store, guard })
    }

    /// The CPU twin over the same parameters.
    pub fn cpu(algorithm: FlatAlgorithm, params: &[(String, Vec<f32>, Vec<usize>)]) -> Result<Self> {
        algorithm.validate()?;
        let (metas, offsets, flat) = flatten(params)?;
        let n = flat.len();
        let z = vec![0.0; n];
        let store = Store::Cpu(CpuFlat {
            p: flat,
            g: z.clone(),
            wp: z.clone(),
            gp: z.clone(),
            d: z.clone(),
            hd: z,
            scal: [0.0; 4],
        });
        let guard = HostGuard::new(2 * metas.len() + 1);
        Ok(FlatOptimizer { algorithm, params: metas, offsets, len: n, t: 0, loss: None, store, guard })
    }

    /// The algorithm and its hyperparameters.
    pub fn algorithm(&self) -> &FlatAlgorithm {
        &self.algorithm
    }

    fn range(&self, id: ParamId, len: Option<usize>) -> Result<std::ops::Range<usize>> {
        let meta = self.params.get(id.0).ok_or_else(|| Error::Invalid(format!("no parameter {}", id.0)))?;
        if let Some(len) = len {
            if len != meta.len() {
                return Err(Error::Shape { what: meta.name.clone(), expected: meta.shape.clone(), got: vec![len] });
            }
        }
        Ok(self.offsets[id.0]..self.offsets[id.0] + meta.len())
    }

    /// Index into the store's vectors: 0 p, 1 g, 2 w_prev, 3 g_prev, 4 d, 5 hess, 7 scalars.
    /// Writes tensor `which` of parameter `id`; a gradient (1) or Hessian diagonal (5) holding NaN
    /// or Inf is not written, and the next step is skipped unless it is rewritten.
    fn write(&mut self, which: usize, id: ParamId, data: &[f32]) -> Result<()> {
        let r = self.range(id, Some(data.len()))?;
        let slot = match which {
            1 => Some(id.0),
            5 => Some(self.params.len() + id.0),
            _ => None,
        };
        if slot.is_some_and(|i| !self.guard.admit(i, data)) {
            return Ok(());
        }
        match &mut self.store {
            Store::Gpu(s) => {
                if !data.is_empty() {
                    s.ctx.queue().write_buffer(s.bufs[which].buffer(), 4 * r.start as u64, bytemuck::cast_slice(data));
                }
            }
            Store::Cpu(c) => {
                let v = [&mut c.p, &mut c.g, &mut c.wp, &mut c.gp, &mut c.d, &mut c.hd][which].as_mut_slice();
                v[r].copy_from_slice(data);
            }
        }
        Ok(())
    }

    fn read(&self, which: usize, id: ParamId) -> Result<Vec<f32>> {
        let r = self.range(id, None)?;
        match &self.store {
            Store::Gpu(s) => {
                if r.is_empty() {
                    return Ok(Vec::new());
                }
                s.ctx.read_f32(s.bufs[which].buffer(), 4 * r.start as u64, r.len())
            }
            Store::Cpu(c) => Ok([&c.p, &c.g, &c.wp, &c.gp, &c.d, &c.hd][which][r].to_vec()),
        }
    }

    fn scalars(&self) -> Result<Vec<f32>> {
        match &self.store {
            Store::Gpu(s) => s.bufs[7].to_vec(&s.ctx),
            Store::Cpu(c) => Ok(c.scal.to_vec()),
        }
    }

    fn cpu_step(alg: &FlatAlgorithm, fp: &FlatParams, c: &mut CpuFlat) {
        let n = c.p.len();
        match alg {
            FlatAlgorithm::Oasis(_) => {
                let (mut a, mut b) = (0.0f64, 0.0f64);
                for i in 0..n {
                    let di = if fp.first != 0 { c.hd[i] } else { fp.beta2 * c.d[i] + fp.omb2 * c.hd[i] };
                    c.d[i] = di;
                    let dh = truncate(di, fp.floor);
                    let (dw, dg) = (c.p[i] - c.wp[i], c.g[i] - c.gp[i]);
                    a += (dh * dw * dw) as f64;
                    b += (dg * dg / dh) as f64;
                }
                let (a, b) = (a as f32, b as f32);
                let (eta_prev, theta) = (c.scal[0], c.scal[1]);
                let mut eta = fp.lr;
                if fp.first == 0 && fp.adaptive != 0 {
                    let mut have = false;
                    if theta >= 0.0 {
                        eta = (1.0 + theta).sqrt() * eta_prev;
                        have = true;
                    }
                    if b > 0.0 {
                        let lip = a.sqrt() / (2.0 * b.sqrt());
                        if !have || lip < eta {
                            eta = lip;
                        }
                        have = true;
                    }
                    if !have {
                        eta = eta_prev;
                    }
                }
                c.scal[1] = if fp.first != 0 { -1.0 } else { eta / eta_prev };
                c.scal[0] = eta;
                c.scal[2] = eta;
                for i in 0..n {
                    let dh = truncate(c.d[i], fp.floor);
                    let (w, gi) = (c.p[i], c.g[i]);
                    c.wp[i] = w;
                    c.gp[i] = gi;
                    c.p[i] = fp.decay * w - eta * gi / dh;
                }
            }
            FlatAlgorithm::Sania(_) => {
                let precond = |di: f32| {
                    let mut b = di / fp.bc2;
                    if fp.sqrt_precond != 0 {
                        b = b.sqrt();
                    }
                    b + fp.eps
                };
                let mut big_g = 0.0f64;
                for i in 0..n {
                    let gi = c.g[i];
                    let di = fp.beta2 * c.d[i] + fp.omb2 * gi * gi;
                    c.d[i] = di;
                    big_g += (gi * gi / precond(di)) as f64;
                }
                let (big_g, f) = (big_g as f32, fp.loss);
                let mut lambda = 0.0;
                if big_g > 0.0 && big_g.is_finite() {
                    lambda = if fp.psps != 0 {
                        f / big_g
                    } else if 2.0 * f <= big_g {
                        1.0 - (1.0 - 2.0 * f / big_g).max(0.0).sqrt()
                    } else {
                        1.0
                    };
                }
                c.scal[2] = lambda;
                for i in 0..n {
                    c.p[i] = fp.decay * c.p[i] - fp.lr * lambda * c.g[i] / precond(c.d[i]);
                }
            }
        }
    }
}

impl Stepper for FlatOptimizer {
    fn step(&mut self) -> Result<()> {
        let loss = match (&self.algorithm, self.loss.take()) {
            (FlatAlgorithm::Sania(_), None) => {
                return Err(Error::Invalid("sania needs this step's loss: call write_loss before step".into()))
            }
            (_, l) => l.unwrap_or(0.0),
        };
        // A gradient or diagonal with NaN or Inf (not rewritten since) skips the step.
        if self.guard.skip_step() {
            return Ok(());
        }
        let t = self.t + 1;
        let fp = self.algorithm.params(self.len, t, loss);
        match &mut self.store {
            Store::Gpu(s) => {
                s.ctx.queue().write_buffer(&s.uniform, 0, bytemuck::bytes_of(&fp));
                let mut enc = s.ctx.encoder("oasis/sania step");
                let mut pass = crate::gpu::compute_pass(&mut enc, "oasis/sania step");
                s.ctx.scoped("oasis/sania step", || {
                    s.passes[0].record_3d(&mut pass, (fp.chunks, 1, 1));
                    s.passes[1].record_3d(&mut pass, (1, 1, 1));
                    s.passes[2].record(&s.ctx, &mut pass, (self.len as u32).div_ceil(WORKGROUP_SIZE));
                })?;
                drop(pass);
                s.ctx.submit(enc);
            }
            Store::Cpu(c) => Self::cpu_step(&self.algorithm, &fp, c),
        }
        self.t = t;
        Ok(())
    }

    fn write_grad(&mut self, id: ParamId, grad: &[f32]) -> Result<()> {
        self.write(1, id, grad)
    }

    fn write_param(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        self.write(0, id, data)
    }

    fn write_hess_diag(&mut self, id: ParamId, diag: &[f32]) -> Result<()> {
        match self.algorithm {
            FlatAlgorithm::Oasis(_) => self.write(5, id, diag),
            FlatAlgorithm::Sania(_) => Err(Error::Invalid("sania takes no Hessian diagonal".into())),
        }
    }

    fn write_loss(&mut self, loss: f32) -> Result<()> {
        match self.algorithm {
            // A NaN or infinite loss (a diverged forward pass) skips the step, as a NaN gradient does.
            FlatAlgorithm::Sania(_) if !loss.is_finite() || loss >= 0.0 => {
                self.guard.admit(2 * self.params.len(), &[loss]);
                self.loss = Some(loss);
                Ok(())
            }
            FlatAlgorithm::Sania(_) => Err(Error::Invalid(format!(
                "sania needs a loss >= 0 (the interpolation setting; NaN or Inf skips the step), got {loss}"
            ))),
            FlatAlgorithm::Oasis(_) => Err(Error::Invalid("oasis takes no loss value".into())),
        }
    }

    fn read_param(&mut self, id: ParamId) -> Result<Vec<f32>> {
        self.read(0, id)
    }

    fn read_state(&mut self, id: ParamId, state: &str) -> Result<Vec<f32>> {
        match (state, &self.algorithm) {
            ("d", FlatAlgorithm::Oasis(_)) | ("b", FlatAlgorithm::Sania(_)) => self.read(4, id),
            ("w_prev", FlatAlgorithm::Oasis(_)) => self.read(2, id),
            ("g_prev", FlatAlgorithm::Oasis(_)) => self.read(3, id),
            ("scalars", _) => {
                self.range(id, None)?;
                self.scalars()
            }
            (other, a) => {
                Err(Error::Invalid(format!("{} has no state {other:?} ({})", a.name(), a.states().join(", "))))
            }
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
        update_config(
            &mut self.algorithm,
            group,
            |a| match a {
                FlatAlgorithm::Oasis(c) => c.lr = lr,
                FlatAlgorithm::Sania(c) => c.lr = lr,
            },
            FlatAlgorithm::validate,
        )
    }

    fn set_weight_decay(&mut self, group: GroupId, wd: f64) -> Result<()> {
        update_config(
            &mut self.algorithm,
            group,
            |a| match a {
                FlatAlgorithm::Oasis(c) => c.weight_decay = wd,
                FlatAlgorithm::Sania(c) => c.weight_decay = wd,
            },
            FlatAlgorithm::validate,
        )
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let (values, states) = super::read_params_and_states(self, self.algorithm.states())?;
        let hyper = match &self.algorithm {
            FlatAlgorithm::Oasis(c) => serde_json::to_value(c),
            FlatAlgorithm::Sania(c) => serde_json::to_value(c),
        }
        .expect("configs serialise");
        let mut s = config_snapshot(
            self.algorithm.name(),
            &hyper,
            self.algorithm.lr_wd(),
            self.t,
            &self.params,
            values,
            states,
        );
        s.skipped = self.guard.skipped();
        Ok(s)
    }

    fn restore(&mut self, s: Snapshot) -> Result<()> {
        let name = self.algorithm.name();
        let names = self.algorithm.states();
        let len = |p: &ParamMeta, k: &str| if k == "scalars" { 4 } else { p.len() };
        let (hyper, states) =
            super::check_config_snapshot::<serde_json::Value>(&s, name, &self.params, names, len, |_| Ok(()))?;
        let algorithm = match self.algorithm {
            FlatAlgorithm::Oasis(_) => FlatAlgorithm::Oasis(serde_json::from_value(hyper).map_err(bad_config)?),
            FlatAlgorithm::Sania(_) => FlatAlgorithm::Sania(serde_json::from_value(hyper).map_err(bad_config)?),
        };
        algorithm.validate()?;
        // Everything is checked: now write.
        for (i, st) in states.iter().enumerate() {
            let id = ParamId(i);
            self.write(0, id, &s.values[i])?;
            for (k, v) in names.iter().zip(st) {
                match *k {
                    "d" | "b" => self.write(4, id, v)?,
                    "w_prev" => self.write(2, id, v)?,
                    "g_prev" => self.write(3, id, v)?,
                    _ => {}
                }
            }
        }
        if let Some(sc) = states.first().and_then(|st| st.last()) {
            match &mut self.store {
                Store::Gpu(g) => g.bufs[7].write(&g.ctx, sc)?,
                Store::Cpu(c) => c.scal.copy_from_slice(sc),
            }
        }
        self.algorithm = algorithm;
        self.t = s.step;
        self.guard.reset(s.skipped);
        Ok(())
    }

    fn params(&self) -> &[ParamMeta] {
        &self.params
    }
}

fn bad_config(e: serde_json::Error) -> Error {
    Error::Checkpoint { path: "<snapshot>".into(), reason: format!("config: {e}") }
}
