//! Kernel specs of `shaders/lion_k.wgsl`: Lion-K (ALGORITHMS.md §4.5), Lion with `sign` replaced by
//! the gradient of a convex K. The maps and their hyper slots are in the shader's header; the CPU twin
//! is `reference::lion_k`. K = ‖·‖₁ (the `sign` map) is plain Lion, `sign_momentum::LION`.

use super::ARENA_S1;
use crate::gpu::{Binding, KernelSpec};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// The elementwise maps (Huber clip, tanh, relativistic).
pub const LION_K: KernelSpec = KernelSpec { module: "lion_k", entry: "lion_k_step", bindings: ARENA_S1 };
/// The per-tensor norm maps (ℓ2, ℓp), after the two norm passes.
pub const LION_K_NORM_STEP: KernelSpec = KernelSpec {
    module: "lion_k",
    entry: "lion_k_norm_step",
    bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (8, W)],
};
/// Norm pass 1: per block, (max |c|, Σ (|c| / max)^p) of c = β1·m + (1 − β1)·g.
pub const LION_K_PARTIAL: KernelSpec =
    KernelSpec { module: "lion_k", entry: "lion_k_partial", bindings: &[(0, U), (1, R), (4, R), (5, W), (9, W)] };
/// Norm pass 2: per tensor, (max |c|, S^(1/p)) from its blocks.
pub const LION_K_NORM: KernelSpec =
    KernelSpec { module: "lion_k", entry: "lion_k_norm", bindings: &[(0, U), (1, R), (8, W), (9, W), (10, R)] };

/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[LION_K, LION_K_NORM_STEP, LION_K_PARTIAL, LION_K_NORM];
