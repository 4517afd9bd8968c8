//! The optimizers' configurations (defaults = ALGORITHMS.md §11.2, the reference implementations'),
//! their validation, and the per-step scalars each kernel reads from its [`Hyper`] slot.
//!
//! Scalars that depend only on the step `t` (bias corrections, Anolog's β1(t), AdEMAMix's α(t) and
//! β3(t), AdaBound's bounds) are computed here in f64 and rounded once to f32, as the PyTorch
//! references do with Python floats (ALGORITHMS.md §1). Both the GPU optimizer and the CPU reference
//! read the same [`Hyper`], so a parity test compares the kernels, not two copies of this code.

use crate::error::{Error, Result};
use crate::gpu::KernelSpec;
use crate::kernels::arena::Hyper;
use crate::kernels::{adaptive as ka, hessian as kh, lion_k as kl, sign_momentum as ks};
use serde::{Deserialize, Serialize};

macro_rules! config {
    ($(#[$meta:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty = $default:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        impl Default for $name {
            fn default() -> Self { Self { $($field: $default),* } }
        }
    };
}

config!(
    /// SGD with momentum / Nesterov (torch.optim.SGD, ALGORITHMS.md §4.1). `weight_decay` is L2
    /// unless `weight_decouple` (then DW-B, pytorch-optimizer SGDW).
    Sgd { /** learning rate */ lr: f64 = 1e-3, /** μ */ momentum: f64 = 0.0, /** τ */ dampening: f64 = 0.0,
          /** Nesterov form */ nesterov: bool = false, /** decay */ weight_decay: f64 = 0.0,
          /** DW-B instead of L2 */ weight_decouple: bool = false }
);
config!(
    /// signSGD (MXNet signsgd_update, §4.2); decay DW-B.
    SignSgd { /** learning rate */ lr: f64 = 0.01, /** DW-B decay */ weight_decay: f64 = 0.0 }
);
config!(
    /// Signum (MXNet Signum, §4.3); `weight_decay` is MXNet's `wd_lh` (DW-B).
    Signum { /** learning rate */ lr: f64 = 0.01, /** μ */ momentum: f64 = 0.9, /** DW-B decay */ weight_decay: f64 = 0.0 }
);
/// Lion-K's map ∇K, which replaces Lion's `sign` (ALGORITHMS.md §4.5; `k_map` in §11.1). The
/// discriminants are the map numbers `shaders/lion_k.wgsl` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KMap {
    /// K = ‖x‖₁: `sign(c)`, plain Lion.
    #[default]
    Sign = 0,
    /// K = ‖x‖₂ per tensor: `c / ‖c‖₂` (normalised momentum).
    L2 = 1,
    /// K = ‖x‖_p per tensor (`k_p` > 1): `sign(c)·|c|^(p−1) / ‖c‖_p^(p−1)`.
    Lp = 2,
    /// K = Σ Huber with knee a = `k_scale`: `clip(c / a, −1, 1)`.
    Huber = 3,
    /// K = Σ log(cosh(s·x)) / s with s = `k_scale`: `tanh(s·c)`.
    Tanh = 4,
    /// K = Σ sqrt(x² + a²) with a = `k_scale`: `c / sqrt(c² + a²)`.
    Relativistic = 5,
}

impl KMap {
    /// The Lion settings this map reads (`k_p`, `k_scale`).
    pub fn reads(self) -> &'static [&'static str] {
        match self {
            KMap::Sign | KMap::L2 => &[],
            KMap::Lp => &["k_p"],
            KMap::Huber | KMap::Tanh | KMap::Relativistic => &["k_scale"],
        }
    }

    /// Whether the map needs a per-tensor norm of c first (two extra passes).
    pub fn per_tensor(self) -> bool {
        matches!(self, KMap::L2 | KMap::Lp)
    }
}

config!(
    /// Lion (google/automl lion_pytorch.py, §4.4); decay DW-B. With `k_map` other than `"sign"` it is
    /// Lion-K (§4.5, no official code; defaults as Lion): `k_p` is required by `"lp"`, `k_scale` (a or
    /// s, default 1: optax-style `"refined"` clipping is Huber with a = 1) is read by `"huber"`,
    /// `"tanh"` and `"relativistic"`. The ℓ2 and ℓp norms are taken per parameter tensor.
    Lion { /** learning rate */ lr: f64 = 1e-4, /** interpolation β1 */ beta1: f64 = 0.9,
           /** momentum EMA β2 */ beta2: f64 = 0.99, /** DW-B decay */ weight_decay: f64 = 0.0,
           /** Lion-K map */ k_map: KMap = KMap::Sign, /** p of the ℓp map */ k_p: Option<f64> = None,
           /** a or s of the elementwise maps */ k_scale: f64 = 1.0 }
);
config!(
    /// Ano and Anolog (PyPI ano-optimizer 1.0.0, §4.7); decay DW-B. Anolog ignores `beta1`.
    Ano { /** learning rate */ lr: f64 = 1e-4, /** β1 */ beta1: f64 = 0.92, /** β2 (≥ 0.5) */ beta2: f64 = 0.99,
          /** inside the square root */ eps: f64 = 1e-8, /** DW-B decay */ weight_decay: f64 = 0.0 }
);
config!(
    /// AdamW (torch.optim.AdamW, §8.1–8.2); decay DW-B.
    AdamW { /** learning rate */ lr: f64 = 1e-3, /** β1 */ beta1: f64 = 0.9, /** β2 */ beta2: f64 = 0.999,
            /** after the bias-corrected root */ eps: f64 = 1e-8, /** DW-B decay */ weight_decay: f64 = 0.01,
            /** running max of v */ amsgrad: bool = false }
);
config!(
    /// AdaBound / AMSBound (Luolc/AdaBound, §8.3); decay L2 unless `weight_decouple` (DW-B).
    AdaBound { /** learning rate */ lr: f64 = 1e-3, /** β1 */ beta1: f64 = 0.9, /** β2 */ beta2: f64 = 0.999,
               /** on the uncorrected root */ eps: f64 = 1e-8, /** decay */ weight_decay: f64 = 0.0,
               /** target SGD lr */ final_lr: f64 = 0.1, /** bound speed */ gamma: f64 = 1e-3,
               /** AMSBound */ amsbound: bool = false, /** DW-B instead of L2 */ weight_decouple: bool = false }
);
config!(
    /// AdaMomentum (§8.4); decay DW-B. `rectify` is the authors' RAdam-style rectified update
    /// (wyzjack/AdaM3 `AdaM3.py`, whose GAN code defaults it to true): while the variance estimate's
    /// degrees of freedom N_sma stay below 5 the step is lr·m/(1 − β1^t) (`degenerated_to_sgd`) or none,
    /// after it lr·r_t·m/((1 − β1^t)·(sqrt(v) + eps)).
    AdaMomentum { /** learning rate */ lr: f64 = 1e-3, /** β1 */ beta1: f64 = 0.9, /** β2 */ beta2: f64 = 0.999,
                  /** added to the stored v every step */ eps: f64 = 1e-8, /** DW-B decay */ weight_decay: f64 = 0.0,
                  /** the rectified update */ rectify: bool = false,
                  /** with `rectify`, SGD steps while N_sma < 5 (else none) */ degenerated_to_sgd: bool = true }
);
config!(
    /// AdEMAMix (apple/ml-ademamix PyTorch, §8.5); decay DW-B. Warm-ups of 0 mean none;
    /// `t_alpha` / `t_beta3` override `t_alpha_beta3` when they must differ.
    AdEMAMix { /** learning rate */ lr: f64 = 1e-3, /** fast EMA β1 */ beta1: f64 = 0.9, /** β2 */ beta2: f64 = 0.999,
               /** slow EMA β3 */ beta3: f64 = 0.9999, /** mixing weight */ alpha: f64 = 2.0,
               /** epsilon */ eps: f64 = 1e-8, /** DW-B decay */ weight_decay: f64 = 0.0,
               /** shared warm-up length */ t_alpha_beta3: f64 = 0.0,
               /** α warm-up override */ t_alpha: Option<f64> = None,
               /** β3 warm-up override */ t_beta3: Option<f64> = None }
);

/// MARS instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarsVariant {
    /// MARS-AdamW.
    #[default]
    Adamw,
    /// MARS-Lion.
    Lion,
}

config!(
    /// MARS, approximate variant (pytorch-optimizer 4.1.0 `MARS` eps placement, §8.6); decay DW-B.
    Mars { /** learning rate */ lr: f64 = 3e-3, /** β1 */ beta1: f64 = 0.95, /** β2 */ beta2: f64 = 0.99,
           /** epsilon */ eps: f64 = 1e-8, /** DW-B decay */ weight_decay: f64 = 0.0,
           /** variance-reduction scale */ gamma: f64 = 0.025, /** "adamw" | "lion" */ variant: MarsVariant = MarsVariant::Adamw }
);

config!(
    /// AdaHessian (amirgholami/adahessian image_classification, §6.3); decay DW-B. The Hessian
    /// diagonal of each step is written with `write_hess_diag`.
    AdaHessian { /** learning rate */ lr: f64 = 0.15, /** β1 */ beta1: f64 = 0.9, /** β2 */ beta2: f64 = 0.999,
                 /** after the power */ eps: f64 = 1e-4, /** DW-B decay */ weight_decay: f64 = 0.0,
                 /** k in [0, 1] */ hessian_power: f64 = 1.0 }
);

/// Sophia's form (ALGORITHMS.md §11.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SophiaVariant {
    /// Liuhong99/Sophia's order with max(rho·h, eps) (rho scales h).
    #[default]
    Sophiag,
    /// pytorch-optimizer `SophiaH` (rho is the clip bound; the EMA is updated before the step).
    Sophiah,
}

config!(
    /// Sophia (§6.4, §11.2); decay DW-B. The Hessian diagonal of each step is written with
    /// `write_hess_diag`; it enters the EMA every `hess_interval` steps.
    Sophia { /** learning rate */ lr: f64 = 1e-4, /** β1 */ beta1: f64 = 0.965, /** β2 */ beta2: f64 = 0.99,
             /** see `variant` */ rho: f64 = 0.04, /** floor of the denominator */ eps: f64 = 1e-15,
             /** DW-B decay */ weight_decay: f64 = 0.1, /** steps between EMA updates */ hess_interval: u64 = 10,
             /** "sophiag" | "sophiah" */ variant: SophiaVariant = SophiaVariant::Sophiag }
);

/// One of the elementwise optimizers. The replay names are [`Algorithm::name`].
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// `sgd`
    Sgd(Sgd),
    /// `signsgd`
    SignSgd(SignSgd),
    /// `signum`
    Signum(Signum),
    /// `lion`
    Lion(Lion),
    /// `ano`
    Ano(Ano),
    /// `anolog`
    Anolog(Ano),
    /// `adamw`
    AdamW(AdamW),
    /// `adabound`
    AdaBound(AdaBound),
    /// `adamomentum`
    AdaMomentum(AdaMomentum),
    /// `ademamix`
    AdEMAMix(AdEMAMix),
    /// `mars`
    Mars(Mars),
    /// `adahessian`
    AdaHessian(AdaHessian),
    /// `sophia`
    Sophia(Sophia),
}

/// The replay names of every elementwise optimizer.
pub const NAMES: &[&str] = &[
    "sgd",
    "signsgd",
    "signum",
    "lion",
    "ano",
    "anolog",
    "adamw",
    "adabound",
    "adamomentum",
    "ademamix",
    "mars",
    "adahessian",
    "sophia",
];

fn check_finite(name: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Hyperparameter { name: name.into(), value: v, reason: "must be finite".into() })
    }
}

fn check_nonneg(name: &str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v < 0.0 {
        return Err(Error::Hyperparameter { name: name.into(), value: v, reason: "must be >= 0".into() });
    }
    Ok(())
}

fn check_positive(name: &str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v <= 0.0 {
        return Err(Error::Hyperparameter { name: name.into(), value: v, reason: "must be > 0".into() });
    }
    Ok(())
}

fn check_beta(name: &str, v: f64, lo: f64) -> Result<()> {
    check_finite(name, v)?;
    if !(lo..1.0).contains(&v) {
        return Err(Error::Hyperparameter { name: name.into(), value: v, reason: format!("must lie in [{lo}, 1)") });
    }
    Ok(())
}

/// Checks lr and weight_decay (also used for per-group overrides).
pub(crate) fn check_lr_wd(lr: f64, wd: f64) -> Result<()> {
    check_nonneg("lr", lr)?;
    check_nonneg("weight_decay", wd)
}

impl Algorithm {
    /// Checks a parameter group's values as the builder and `set_lr` would (a checkpoint's groups
    /// come from a file): lr and weight decay finite and >= 0, and base_lr too (> 0 for AdaBound,
    /// whose bounds divide by it).
    pub(crate) fn check_group(&self, g: &super::GroupState) -> Result<()> {
        check_lr_wd(g.lr, g.weight_decay)?;
        match self {
            Algorithm::AdaBound(_) => check_positive("base_lr (a group's initial lr)", g.base_lr),
            _ => check_nonneg("base_lr", g.base_lr),
        }
    }
}

fn f(x: f64) -> f32 {
    x as f32
}

/// AdEMAMix's β3 warm-up (8.5.3), with the reference's `+ 1e-8` inside the half-life.
pub fn ademamix_beta3(t: u64, beta1: f64, beta3: f64, warmup: f64) -> f64 {
    if warmup > 0.0 && (t as f64) < warmup {
        let half = |b: f64| 0.5f64.ln() / (b + 1e-8).ln() - 1.0;
        let a = t as f64 / warmup;
        let h = (1.0 - a) * half(beta1) + a * half(beta3);
        0.5f64.powf(1.0 / (h + 1.0))
    } else {
        beta3
    }
}

/// AdEMAMix's linear α warm-up from 0 (8.5.2).
pub fn ademamix_alpha(t: u64, alpha: f64, warmup: f64) -> f64 {
    if warmup > 0.0 && (t as f64) < warmup {
        alpha * (t as f64 / warmup)
    } else {
        alpha
    }
}

/// Anolog's β1(t) = 1 − 1/ln(max(2, t)) (4.7.1), returned with 1 − β1.
pub fn anolog_beta1(t: u64) -> (f64, f64) {
    let inv = 1.0 / (t.max(2) as f64).ln();
    (1.0 - inv, inv)
}

impl Algorithm {
    /// The optimizer's replay name (ALGORITHMS.md §11.2).
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Sgd(_) => "sgd",
            Algorithm::SignSgd(_) => "signsgd",
            Algorithm::Signum(_) => "signum",
            Algorithm::Lion(_) => "lion",
            Algorithm::Ano(_) => "ano",
            Algorithm::Anolog(_) => "anolog",
            Algorithm::AdamW(_) => "adamw",
            Algorithm::AdaBound(_) => "adabound",
            Algorithm::AdaMomentum(_) => "adamomentum",
            Algorithm::AdEMAMix(_) => "ademamix",
            Algorithm::Mars(_) => "mars",
            Algorithm::AdaHessian(_) => "adahessian",
            Algorithm::Sophia(_) => "sophia",
        }
    }

    /// Builds an optimizer from its replay name and a JSON object of hyperparameters (canonical names;
    /// omitted ones take the reference defaults, unknown keys are ignored), and validates it.
    ///
    /// ```
    /// use gpuopt::optim::Algorithm;
    /// let lion = Algorithm::from_name("lion", &serde_json::json!({"lr": 3e-4}))?;
    /// assert_eq!(lion.lr_wd(), (3e-4, 0.0)); // weight_decay: the reference default
    /// assert!(Algorithm::from_name("lion", &serde_json::json!({"beta1": 1.5})).is_err());
    /// assert!(Algorithm::from_name("nope", &serde_json::json!({})).is_err());
    /// # Ok::<(), gpuopt::Error>(())
    /// ```
    pub fn from_name(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T> {
            let v = if v.is_null() { serde_json::json!({}) } else { v.clone() };
            serde_json::from_value(v).map_err(|e| Error::Invalid(format!("hyperparameters: {e}")))
        }
        let a = match name {
            "sgd" => Algorithm::Sgd(parse(hyper)?),
            "signsgd" => Algorithm::SignSgd(parse(hyper)?),
            "signum" => Algorithm::Signum(parse(hyper)?),
            "lion" => Algorithm::Lion(parse(hyper)?),
            "ano" => Algorithm::Ano(parse(hyper)?),
            "anolog" => Algorithm::Anolog(parse(hyper)?),
            "adamw" => Algorithm::AdamW(parse(hyper)?),
            "adabound" => Algorithm::AdaBound(parse(hyper)?),
            "adamomentum" => Algorithm::AdaMomentum(parse(hyper)?),
            "ademamix" => Algorithm::AdEMAMix(parse(hyper)?),
            "mars" => Algorithm::Mars(parse(hyper)?),
            "adahessian" => Algorithm::AdaHessian(parse(hyper)?),
            "sophia" => Algorithm::Sophia(parse(hyper)?),
            other => return Err(Error::Invalid(format!("unknown optimizer {other:?} (known: {})", NAMES.join(", ")))),
        };
        a.validate()?;
        Ok(a)
    }

    /// The hyperparameters as a JSON object (canonical names), the inverse of [`Algorithm::from_name`].
    pub fn hyper_json(&self) -> serde_json::Value {
        let v = match self {
            Algorithm::Sgd(c) => serde_json::to_value(c),
            Algorithm::SignSgd(c) => serde_json::to_value(c),
            Algorithm::Signum(c) => serde_json::to_value(c),
            Algorithm::Lion(c) => serde_json::to_value(c),
            Algorithm::Ano(c) | Algorithm::Anolog(c) => serde_json::to_value(c),
            Algorithm::AdamW(c) => serde_json::to_value(c),
            Algorithm::AdaBound(c) => serde_json::to_value(c),
            Algorithm::AdaMomentum(c) => serde_json::to_value(c),
            Algorithm::AdEMAMix(c) => serde_json::to_value(c),
            Algorithm::Mars(c) => serde_json::to_value(c),
            Algorithm::AdaHessian(c) => serde_json::to_value(c),
            Algorithm::Sophia(c) => serde_json::to_value(c),
        };
        v.expect("configs serialise")
    }

    /// The default learning rate and weight decay of this configuration.
    pub fn lr_wd(&self) -> (f64, f64) {
        match self {
            Algorithm::Sgd(c) => (c.lr, c.weight_decay),
            Algorithm::SignSgd(c) => (c.lr, c.weight_decay),
            Algorithm::Signum(c) => (c.lr, c.weight_decay),
            Algorithm::Lion(c) => (c.lr, c.weight_decay),
            Algorithm::Ano(c) | Algorithm::Anolog(c) => (c.lr, c.weight_decay),
            Algorithm::AdamW(c) => (c.lr, c.weight_decay),
            Algorithm::AdaBound(c) => (c.lr, c.weight_decay),
            Algorithm::AdaMomentum(c) => (c.lr, c.weight_decay),
            Algorithm::AdEMAMix(c) => (c.lr, c.weight_decay),
            Algorithm::Mars(c) => (c.lr, c.weight_decay),
            Algorithm::AdaHessian(c) => (c.lr, c.weight_decay),
            Algorithm::Sophia(c) => (c.lr, c.weight_decay),
        }
    }

    /// Settings given a non-default value that this configuration does not read (Lion's `k_p` /
    /// `k_scale` for a map that ignores them): the builders warn about each, since a typo'd map would
    /// otherwise run silently as another.
    ///
    /// ```
    /// use gpuopt::optim::{Algorithm, KMap, Lion};
    /// let a: Algorithm = Lion { k_map: KMap::Huber, k_p: Some(3.0), ..Lion::default() }.into();
    /// assert_eq!(a.unread_settings(), ["k_p"]);
    /// ```
    pub fn unread_settings(&self) -> Vec<&'static str> {
        let Algorithm::Lion(c) = self else { return Vec::new() };
        let given = [("k_p", c.k_p.is_some()), ("k_scale", c.k_scale != 1.0)];
        given.into_iter().filter(|&(name, set)| set && !c.k_map.reads().contains(&name)).map(|(n, _)| n).collect()
    }

    /// Rejects non-finite or out-of-range hyperparameters (ALGORITHMS.md §11.2).
    pub fn validate(&self) -> Result<()> {
        let (lr, wd) = self.lr_wd();
        check_lr_wd(lr, wd)?;
        match self {
            Algorithm::Sgd(c) => {
                check_beta("momentum", c.momentum, 0.0)?;
                check_finite("dampening", c.dampening)?;
                if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
                    return Err(Error::Invalid("nesterov needs momentum > 0 and dampening = 0".into()));
                }
            }
            Algorithm::SignSgd(_) => {}
            Algorithm::Signum(c) => check_beta("momentum", c.momentum, 0.0)?,
            Algorithm::Lion(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                // The shader holds both in f32: k_scale must stay a normal f32 (1e-50 became 0 and
                // gave 0/0 at c = 0, 1e39 became Inf), k_p a finite one.
                super::check_f32_eps("k_scale", c.k_scale)?;
                match (c.k_map, c.k_p) {
                    (KMap::Lp, None) => return Err(Error::Invalid("k_map \"lp\" needs k_p (> 1)".into())),
                    (KMap::Lp, Some(p)) if !(p.is_finite() && p > 1.0 && (p as f32).is_finite()) => {
                        return Err(Error::Hyperparameter {
                            name: "k_p".into(),
                            value: p,
                            reason: "must be finite (in f32) and > 1 (p = 1 is the \"sign\" map)".into(),
                        })
                    }
                    _ => {}
                }
            }
            Algorithm::Ano(c) | Algorithm::Anolog(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.5)?;
                super::check_f32_eps("eps", c.eps)?;
            }
            Algorithm::AdamW(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                super::check_f32_eps("eps", c.eps)?;
            }
            Algorithm::AdaBound(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                super::check_f32_eps("eps", c.eps)?;
                check_positive("final_lr", c.final_lr)?;
                check_positive("gamma", c.gamma)?;
                check_positive("lr", c.lr)?;
            }
            Algorithm::AdaMomentum(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                super::check_f32_eps("eps", c.eps)?;
            }
            Algorithm::AdEMAMix(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                check_beta("beta3", c.beta3, 0.0)?;
                // apple/ml-ademamix refuses alpha < 0 (the slow EMA's weight).
                check_nonneg("alpha", c.alpha)?;
                super::check_f32_eps("eps", c.eps)?;
                check_nonneg("t_alpha_beta3", c.t_alpha_beta3)?;
                if let Some(t) = c.t_alpha {
                    check_nonneg("t_alpha", t)?;
                }
                if let Some(t) = c.t_beta3 {
                    check_nonneg("t_beta3", t)?;
                }
            }
            Algorithm::Mars(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                super::check_f32_eps("eps", c.eps)?;
                check_finite("gamma", c.gamma)?;
                // k = γ·β1/(1 − β1) is formed in f32: an Inf would make 0·Inf = NaN for a whole tensor.
                if !((c.gamma * c.beta1 / (1.0 - c.beta1)) as f32).is_finite() {
                    return Err(Error::Hyperparameter {
                        name: "gamma".into(),
                        value: c.gamma,
                        reason: "gamma·beta1/(1 − beta1) must be finite in f32".into(),
                    });
                }
            }
            Algorithm::AdaHessian(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                super::check_f32_eps("eps", c.eps)?;
                check_finite("hessian_power", c.hessian_power)?;
                if !(0.0..=1.0).contains(&c.hessian_power) {
                    return Err(Error::Hyperparameter {
                        name: "hessian_power".into(),
                        value: c.hessian_power,
                        reason: "must lie in [0, 1]".into(),
                    });
                }
            }
            Algorithm::Sophia(c) => {
                check_beta("beta1", c.beta1, 0.0)?;
                check_beta("beta2", c.beta2, 0.0)?;
                // Both references take rho >= 0: 0 makes sophiag a sign step and sophiah a decay alone.
                // The kernel holds it in f32: 1e39 would be Inf there (Inf·0 = NaN at h = 0).
                check_nonneg("rho", c.rho)?;
                if !(c.rho as f32).is_finite() {
                    return Err(Error::Hyperparameter {
                        name: "rho".into(),
                        value: c.rho,
                        reason: "must be finite in f32".into(),
                    });
                }
                super::check_f32_eps("eps", c.eps)?;
                if c.hess_interval == 0 {
                    return Err(Error::Hyperparameter {
                        name: "hess_interval".into(),
                        value: 0.0,
                        reason: "must be >= 1".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Names of the per-parameter state tensors, with the shader binding each is bound to.
    pub fn states(&self) -> &'static [(&'static str, u32)] {
        match self {
            Algorithm::Sgd(c) if c.momentum != 0.0 => &[("momentum_buffer", 5)],
            Algorithm::Sgd(_) | Algorithm::SignSgd(_) => &[],
            Algorithm::Signum(_) | Algorithm::Lion(_) => &[("m", 5)],
            Algorithm::Ano(_) | Algorithm::Anolog(_) | Algorithm::AdaMomentum(_) => &[("m", 5), ("v", 6)],
            Algorithm::AdamW(c) if c.amsgrad => &[("m", 5), ("v", 6), ("v_max", 7)],
            Algorithm::AdaBound(c) if c.amsbound => &[("m", 5), ("v", 6), ("v_max", 7)],
            Algorithm::AdamW(_) | Algorithm::AdaBound(_) => &[("m", 5), ("v", 6)],
            Algorithm::AdEMAMix(_) => &[("m1", 5), ("m2", 6), ("v", 7)],
            Algorithm::Mars(c) if c.variant == MarsVariant::Lion => &[("m", 5), ("g_prev", 7)],
            Algorithm::Mars(_) => &[("m", 5), ("v", 6), ("g_prev", 7)],
            Algorithm::AdaHessian(_) => &[("m", 5), ("v", 6)],
            Algorithm::Sophia(_) => &[("m", 5), ("h", 6)],
        }
    }

    /// The update kernel.
    pub fn kernel(&self) -> KernelSpec {
        match self {
            Algorithm::Sgd(c) if c.momentum != 0.0 => ks::SGD_MOMENTUM,
            Algorithm::Sgd(_) => ks::SGD,
            Algorithm::SignSgd(_) => ks::SIGNSGD,
            Algorithm::Signum(_) => ks::SIGNUM,
            Algorithm::Lion(c) if c.k_map == KMap::Sign => ks::LION,
            Algorithm::Lion(c) if c.k_map.per_tensor() => kl::LION_K_NORM_STEP,
            Algorithm::Lion(_) => kl::LION_K,
            Algorithm::Ano(_) | Algorithm::Anolog(_) => ks::ANO,
            Algorithm::AdamW(c) if c.amsgrad => ka::ADAMW_AMSGRAD,
            Algorithm::AdamW(_) => ka::ADAMW,
            Algorithm::AdaBound(c) if c.amsbound => ka::AMSBOUND,
            Algorithm::AdaBound(_) => ka::ADABOUND,
            Algorithm::AdaMomentum(_) => ka::ADAMOMENTUM,
            Algorithm::AdEMAMix(_) => ka::ADEMAMIX,
            Algorithm::Mars(c) if c.variant == MarsVariant::Lion => ka::MARS_LION,
            Algorithm::Mars(_) => ka::MARS_ADAMW,
            Algorithm::AdaHessian(c) if c.hessian_power == 1.0 => kh::ADAHESSIAN_K1,
            Algorithm::AdaHessian(_) => kh::ADAHESSIAN,
            Algorithm::Sophia(c) if c.variant == SophiaVariant::Sophiah => kh::SOPHIAH,
            Algorithm::Sophia(_) => kh::SOPHIAG,
        }
    }

    /// Whether the update needs a per-tensor norm first (MARS, Lion-K's ℓ2 and ℓp maps).
    pub fn needs_norm(&self) -> bool {
        self.norm_passes().is_some()
    }

    /// The two per-tensor norm passes (per block, then per tensor) and the state tensor the first
    /// one reads besides the gradient.
    pub(crate) fn norm_passes(&self) -> Option<(KernelSpec, KernelSpec, &'static str)> {
        match self {
            Algorithm::Mars(_) => Some((ka::MARS_PARTIAL, ka::MARS_NORM, "g_prev")),
            Algorithm::Lion(c) if c.k_map.per_tensor() => Some((kl::LION_K_PARTIAL, kl::LION_K_NORM, "m")),
            _ => None,
        }
    }

    /// Whether each step takes a Hessian-diagonal estimate (`write_hess_diag`).
    pub fn needs_hessian(&self) -> bool {
        matches!(self, Algorithm::AdaHessian(_) | Algorithm::Sophia(_))
    }

    /// Bytes the fused update must move per parameter (ALGORITHMS.md §3), for bandwidth figures.
    /// The norm passes (MARS, Lion-K's ℓ2/ℓp maps) add 8 B: g and the state they read.
    pub fn bytes_per_param(&self) -> usize {
        let states = self.states().len();
        // read p, g and every state; write p and every state
        let base = 4 * (3 + 2 * states) + if self.needs_hessian() { 4 } else { 0 };
        if self.needs_norm() {
            base + 8
        } else {
            base
        }
    }

    /// The per-group scalars for step `t` (1-based) with the group's `lr`, `wd` and the lr it had
    /// when the optimizer was built (`base_lr`, used by AdaBound's bounds).
    pub fn hyper(&self, t: u64, lr: f64, wd: f64, base_lr: f64) -> Hyper {
        let tf = t as f64;
        let bc = |b: f64| 1.0 - b.powf(tf);
        let dwb = f(1.0 - lr * wd);
        let mut h = Hyper { lr: f(lr), decay: 1.0, ..Hyper::default() };
        let betas = |h: &mut Hyper, b1: f64, b2: f64| {
            h.beta1 = f(b1);
            h.omb1 = f(1.0 - b1);
            h.beta2 = f(b2);
            h.omb2 = f(1.0 - b2);
        };
        match self {
            Algorithm::Sgd(c) => {
                h.beta1 = f(c.momentum);
                if c.weight_decouple {
                    h.decay = dwb;
                } else {
                    h.c[0] = f(wd);
                }
                h.c[1] = f(1.0 - c.dampening);
                h.c[2] = if t == 1 { 1.0 } else { 0.0 };
                h.c[3] = if c.nesterov { 1.0 } else { 0.0 };
            }
            Algorithm::SignSgd(_) => h.decay = dwb,
            Algorithm::Signum(c) => {
                h.decay = dwb;
                betas(&mut h, c.momentum, 0.0);
            }
            Algorithm::Lion(c) => {
                h.decay = dwb;
                betas(&mut h, c.beta1, c.beta2);
                let p = match c.k_map {
                    KMap::L2 => 2.0,
                    KMap::Lp => c.k_p.unwrap_or(2.0),
                    _ => c.k_scale,
                };
                h.c[0] = c.k_map as u32 as f32;
                h.c[1] = f(p);
                h.c[2] = f(p - 1.0);
            }
            Algorithm::Ano(c) | Algorithm::Anolog(c) => {
                h.decay = dwb;
                betas(&mut h, c.beta1, c.beta2);
                if let Algorithm::Anolog(_) = self {
                    let (b1, omb1) = anolog_beta1(t);
                    h.beta1 = f(b1);
                    h.omb1 = f(omb1);
                }
                h.eps = f(c.eps);
                h.c[0] = f(bc(c.beta2));
            }
            Algorithm::AdamW(c) => {
                h.decay = dwb;
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                h.c[0] = f(lr / bc(c.beta1));
                h.c[1] = f(bc(c.beta2).sqrt());
            }
            Algorithm::AdaBound(c) => {
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                if c.weight_decouple {
                    h.decay = dwb;
                } else {
                    h.c[0] = f(wd);
                }
                h.c[1] = f(lr * bc(c.beta2).sqrt() / bc(c.beta1));
                let final_lr = c.final_lr * lr / base_lr;
                h.c[2] = f(final_lr * (1.0 - 1.0 / (c.gamma * tf + 1.0)));
                h.c[3] = f(final_lr * (1.0 + 1.0 / (c.gamma * tf)));
            }
            Algorithm::AdaMomentum(c) => {
                h.decay = dwb;
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                h.c[1] = f(bc(c.beta2).sqrt());
                // c[2], the update's form: 0 m/(sqrt(v)/sqrt(bc2)); rectified: 1 m/(sqrt(v) + eps),
                // 2 m alone (SGD), 3 none. c[0] its factor.
                let (mode, factor) = if !c.rectify {
                    (0.0, lr / bc(c.beta1))
                } else {
                    let b2t = c.beta2.powf(tf);
                    let n_max = 2.0 / (1.0 - c.beta2) - 1.0;
                    let n = n_max - 2.0 * tf * b2t / (1.0 - b2t);
                    if n >= 5.0 {
                        let r =
                            ((1.0 - b2t) * (n - 4.0) / (n_max - 4.0) * (n - 2.0) / n * n_max / (n_max - 2.0)).sqrt();
                        (1.0, lr * r / bc(c.beta1))
                    } else if c.degenerated_to_sgd {
                        (2.0, lr / bc(c.beta1))
                    } else {
                        (3.0, 0.0)
                    }
                };
                h.c[0] = f(factor);
                h.c[2] = mode;
            }
            Algorithm::AdEMAMix(c) => {
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                let b3 = ademamix_beta3(t, c.beta1, c.beta3, c.t_beta3.unwrap_or(c.t_alpha_beta3));
                h.c[0] = f(b3);
                h.c[1] = f(1.0 - b3);
                h.c[2] = f(ademamix_alpha(t, c.alpha, c.t_alpha.unwrap_or(c.t_alpha_beta3)));
                h.c[3] = f(bc(c.beta1));
                h.c[4] = f(bc(c.beta2).sqrt());
                h.c[5] = f(wd);
            }
            Algorithm::Mars(c) => {
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                h.c[0] = f(c.gamma * c.beta1 / (1.0 - c.beta1));
                h.c[1] = f(bc(c.beta1));
                h.c[2] = f(bc(c.beta2).sqrt());
                h.c[3] = f(wd);
            }
            Algorithm::AdaHessian(c) => {
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                // Reciprocals, so the update divides once (by denom), not three times: the official
                // code's m/bc1 and sqrt(v)/sqrt(bc2) become products (≤ 1 ulp apart).
                h.c[0] = f(1.0 / bc(c.beta1));
                h.c[1] = f(1.0 / bc(c.beta2).sqrt());
                h.c[2] = f(c.hessian_power);
                h.c[3] = f(wd);
            }
            Algorithm::Sophia(c) => {
                h.decay = dwb;
                betas(&mut h, c.beta1, c.beta2);
                h.eps = f(c.eps);
                h.c[0] = f(c.rho);
                let fold = match c.variant {
                    SophiaVariant::Sophiag => t.is_multiple_of(c.hess_interval),
                    SophiaVariant::Sophiah => (t - 1).is_multiple_of(c.hess_interval),
                };
                h.c[1] = if fold { 1.0 } else { 0.0 };
            }
        }
        h
    }
}

macro_rules! from_config {
    ($($cfg:ident => $variant:ident),*) => {$(
        impl From<$cfg> for Algorithm {
            fn from(c: $cfg) -> Self { Algorithm::$variant(c) }
        }
    )*};
}
from_config!(AdaHessian => AdaHessian, Sophia => Sophia, Sgd => Sgd, SignSgd => SignSgd, Signum => Signum, Lion => Lion, Ano => Ano, AdamW => AdamW,
             AdaBound => AdaBound, AdaMomentum => AdaMomentum, AdEMAMix => AdEMAMix, Mars => Mars);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anolog_beta1_matches_the_tabulated_values() {
        // ALGORITHMS.md (4.7.1): t = 1, 2: -0.44270; t = 3: 0.08976; t = 4: 0.27865; t = 5: 0.37867
        for (t, want) in [(1, -0.44270), (2, -0.44270), (3, 0.08976), (4, 0.27865), (5, 0.37867)] {
            assert!((anolog_beta1(t).0 - want).abs() < 1e-5, "t = {t}");
        }
    }

    #[test]
    fn ademamix_beta3_warmup_matches_the_tabulated_values() {
        // ALGORITHMS.md §8.5 example: T = 100, beta1 = 0.9, beta3 = 0.9999
        for (t, want) in [(1, 0.99090), (10, 0.99901), (50, 0.99980), (100, 0.9999), (150, 0.9999)] {
            let b = ademamix_beta3(t, 0.9, 0.9999, 100.0);
            assert!((b - want).abs() < 1e-5, "t = {t}: {b}");
        }
        assert_eq!(ademamix_alpha(25, 8.0, 100.0), 2.0);
        assert_eq!(ademamix_alpha(100, 8.0, 100.0), 8.0);
    }

    #[test]
    fn from_name_takes_reference_defaults_and_rejects_bad_values() {
        let a = Algorithm::from_name("adamw", &serde_json::json!({"lr": 0.5, "unknown": 1})).unwrap();
        assert_eq!(a, Algorithm::AdamW(AdamW { lr: 0.5, ..AdamW::default() }));
        assert_eq!(AdamW::default().weight_decay, 0.01);
        assert_eq!(Lion::default().lr, 1e-4);
        assert!(Algorithm::from_name("lion", &serde_json::json!({"beta1": 1.5})).is_err());
        assert!(Algorithm::from_name("ano", &serde_json::json!({"beta2": 0.4})).is_err());
        assert!(Algorithm::from_name("nope", &serde_json::json!({})).is_err());
        let mars = Algorithm::from_name("mars", &serde_json::json!({"variant": "lion"})).unwrap();
        assert_eq!(mars.kernel().entry, "mars_lion_step");
    }

    #[test]
    fn adamw_first_step_scalars() {
        let h = Algorithm::AdamW(AdamW::default()).hyper(1, 1e-3, 0.01, 1e-3);
        assert_eq!(h.decay, (1.0f64 - 1e-5) as f32);
        assert_eq!(h.c[0], (1e-3f64 / (1.0 - 0.9)) as f32);
        assert_eq!(h.c[1], ((1.0f64 - 0.999).sqrt()) as f32);
    }
}
