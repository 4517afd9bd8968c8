//! Kernel specs of `shaders/adaptive.wgsl` and `shaders/mars_norm.wgsl` (AdamW, AMSGrad,
//! AdaBound/AMSBound, AdaMomentum, AdEMAMix, MARS). Update rules: ALGORITHMS.md §8, numbered in the
//! shader's comments; the CPU twin is `reference::adaptive`.

use super::{ARENA_S2, ARENA_S3};
use crate::gpu::{Binding, KernelSpec};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// AdamW (8.1).
pub const ADAMW: KernelSpec = KernelSpec { module: "adaptive", entry: "adamw_step", bindings: ARENA_S2 };
/// AdamW with AMSGrad (8.2).
pub const ADAMW_AMSGRAD: KernelSpec =
    KernelSpec { module: "adaptive", entry: "adamw_amsgrad_step", bindings: ARENA_S3 };
/// AdaBound (8.3).
pub const ADABOUND: KernelSpec = KernelSpec { module: "adaptive", entry: "adabound_step", bindings: ARENA_S2 };
/// AMSBound (8.3).
pub const AMSBOUND: KernelSpec = KernelSpec { module: "adaptive", entry: "amsbound_step", bindings: ARENA_S3 };
/// AdaMomentum (8.4).
pub const ADAMOMENTUM: KernelSpec = KernelSpec { module: "adaptive", entry: "adamomentum_step", bindings: ARENA_S2 };
/// AdEMAMix (8.5).
pub const ADEMAMIX: KernelSpec = KernelSpec { module: "adaptive", entry: "ademamix_step", bindings: ARENA_S3 };
/// MARS-AdamW update (8.6.4–8.6.6), after the per-tensor norm passes.
pub const MARS_ADAMW: KernelSpec = KernelSpec {
    module: "adaptive",
    entry: "mars_adamw_step",
    bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (6, W), (7, W), (8, R)],
};
/// MARS-Lion update (8.6.7).
pub const MARS_LION: KernelSpec = KernelSpec {
    module: "adaptive",
    entry: "mars_lion_step",
    bindings: &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (7, W), (8, R)],
};
/// MARS pass 1: per block, the sums of squares of c (small and down-scaled large elements).
pub const MARS_PARTIAL: KernelSpec =
    KernelSpec { module: "mars_norm", entry: "mars_partial", bindings: &[(0, U), (1, R), (4, R), (7, R), (9, W)] };
/// MARS pass 2: per tensor ‖c‖₂ from its blocks.
pub const MARS_NORM: KernelSpec =
    KernelSpec { module: "mars_norm", entry: "mars_norm", bindings: &[(8, W), (9, W), (10, R)] };

/// All specs of this module.
pub const SPECS: &[KernelSpec] =
    &[ADAMW, ADAMW_AMSGRAD, ADABOUND, AMSBOUND, ADAMOMENTUM, ADEMAMIX, MARS_ADAMW, MARS_LION, MARS_PARTIAL, MARS_NORM];
