//! Kernel specs of `shaders/hessian.wgsl` (AdaHessian, Sophia). Update rules: ALGORITHMS.md §6.3–6.4,
//! numbered in the shader; the CPU twin is `reference::hessian`.

use crate::gpu::{Binding, KernelSpec};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

const HESS: &[(u32, Binding)] = &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (6, W), (7, R)];
/// AdaHessian (6.3).
pub const ADAHESSIAN: KernelSpec = KernelSpec { module: "hessian", entry: "adahessian_step", bindings: HESS };
/// AdaHessian with hessian_power = 1 (no pow).
pub const ADAHESSIAN_K1: KernelSpec = KernelSpec { module: "hessian", entry: "adahessian_k1_step", bindings: HESS };
/// Sophia, official code's order (6.4).
pub const SOPHIAG: KernelSpec = KernelSpec { module: "hessian", entry: "sophiag_step", bindings: HESS };
/// Sophia-H, pytorch-optimizer's form (§11.2).
pub const SOPHIAH: KernelSpec = KernelSpec { module: "hessian", entry: "sophiah_step", bindings: HESS };
/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[ADAHESSIAN, ADAHESSIAN_K1, SOPHIAG, SOPHIAH];
