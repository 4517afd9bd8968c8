//! Host side of the WGSL kernels: the uniform/storage mirrors of the shader structs, the arena layout,
//! and one [`KernelSpec`] per entry point (module, entry, bindings).
//!
//! Names mirror the shaders: `shaders/sign_momentum.wgsl` ↔ [`sign_momentum`] ↔
//! `reference::sign_momentum`, and likewise for `adaptive`.

pub mod adaptive;
pub mod arena;
pub mod distributed_lion;
pub mod gemm;
pub mod hessian;
pub mod hutchinson;
pub mod lion_k;
pub mod newton_schulz;
pub mod random;
pub mod roots;
pub mod sign_momentum;

use crate::gpu::{Binding, KernelSpec};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// Bindings shared by every arena kernel: hyper, blocks, skip flag, params, grads.
pub(crate) const ARENA: &[(u32, Binding)] = &[(0, U), (1, R), (2, R), (3, W), (4, R)];
pub(crate) const ARENA_S1: &[(u32, Binding)] = &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W)];
pub(crate) const ARENA_S2: &[(u32, Binding)] = &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (6, W)];
pub(crate) const ARENA_S3: &[(u32, Binding)] = &[(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (6, W), (7, W)];

/// The non-finite guard: `flag[0] = 1` if any element of `data` is NaN or ±Inf.
pub const FIND_NON_FINITE: KernelSpec =
    KernelSpec { module: "check", entry: "find_non_finite", bindings: &[(0, R), (1, W)] };

/// The bandwidth baseline: `dst <- src` in vec4s.
pub const COPY_VEC4: KernelSpec = KernelSpec { module: "copy", entry: "copy_vec4", bindings: &[(0, R), (1, W)] };

/// Every kernel spec the library dispatches (the naga reflection test checks each against its shader).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut v = vec![FIND_NON_FINITE, COPY_VEC4];
    v.extend_from_slice(sign_momentum::SPECS);
    v.extend_from_slice(lion_k::SPECS);
    v.extend_from_slice(distributed_lion::SPECS);
    v.extend_from_slice(adaptive::SPECS);
    v.extend_from_slice(hessian::SPECS);
    v.extend_from_slice(gemm::SPECS);
    v.extend_from_slice(newton_schulz::SPECS);
    v.extend_from_slice(random::SPECS);
    v.extend_from_slice(roots::SPECS);
    v.extend_from_slice(hutchinson::SPECS);
    v.extend_from_slice(crate::hvp::softmax::SPECS);
    v.extend_from_slice(crate::optim::muon::SPECS);
    v.extend_from_slice(crate::optim::auon::SPECS);
    v.extend_from_slice(crate::optim::reg::SPECS);
    v.extend_from_slice(crate::optim::dasgo::SPECS);
    v.extend_from_slice(crate::optim::oasis::SPECS);
    v.extend_from_slice(crate::mlp::SPECS);
    v
}
