//! Kernel specs of `shaders/sign_momentum.wgsl` (SGD baseline, signSGD, Signum, Lion, Ano/Anolog).
//! The update rules, numbered as in ALGORITHMS.md §4, are in the shader's comments; the CPU twin is
//! `reference::sign_momentum`.

use super::{ARENA, ARENA_S1, ARENA_S2};
use crate::gpu::KernelSpec;

/// SGD without momentum (4.1): `p <- decay·p − lr·(g + wd·p)`.
pub const SGD: KernelSpec = KernelSpec { module: "sign_momentum", entry: "sgd_step", bindings: ARENA };
/// SGD with a momentum buffer, optionally Nesterov (4.1.2–4.1.3).
pub const SGD_MOMENTUM: KernelSpec =
    KernelSpec { module: "sign_momentum", entry: "sgd_momentum_step", bindings: ARENA_S1 };
/// signSGD (4.2.1).
pub const SIGNSGD: KernelSpec = KernelSpec { module: "sign_momentum", entry: "signsgd_step", bindings: ARENA };
/// Signum (4.3).
pub const SIGNUM: KernelSpec = KernelSpec { module: "sign_momentum", entry: "signum_step", bindings: ARENA_S1 };
/// Lion (4.4).
pub const LION: KernelSpec = KernelSpec { module: "sign_momentum", entry: "lion_step", bindings: ARENA_S1 };
/// Ano and Anolog (4.7); Anolog differs only in the host-computed β1(t).
pub const ANO: KernelSpec = KernelSpec { module: "sign_momentum", entry: "ano_step", bindings: ARENA_S2 };

/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[SGD, SGD_MOMENTUM, SIGNSGD, SIGNUM, LION, ANO];
