//! Kernel specs of `shaders/distributed_lion.wgsl` (Distributed Lion, ALGORITHMS.md §4.6): the workers'
//! sign compression, and the server's majority vote or average fused with the shared update. The bit layout is
//! in the shader's header; the CPU twin is `reference::distributed_lion`.

use crate::gpu::{Binding, KernelSpec};
use bytemuck::{Pod, Zeroable};
use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};

/// Every worker's δ (packed) and momentum update, one dispatch for all workers.
pub const COMPRESS: KernelSpec =
    KernelSpec { module: "distributed_lion", entry: "dlion_compress", bindings: &[(0, U), (1, R), (2, W), (3, W)] };
/// MaVo: Δ = sign(Σ δ_i), packed like δ, and x ← (1 − lr·wd)·x − lr·Δ.
pub const VOTE_APPLY: KernelSpec =
    KernelSpec { module: "distributed_lion", entry: "dlion_vote_apply", bindings: &[(0, U), (3, W), (4, W), (5, W)] };
/// Avg: Σ δ_i as one signed byte per element, and x ← (1 − lr·wd)·x − lr·(Σ δ_i)/N.
pub const AVERAGE_APPLY: KernelSpec = KernelSpec {
    module: "distributed_lion",
    entry: "dlion_average_apply",
    bindings: &[(0, U), (3, W), (4, W), (5, W)],
};

/// All specs of this module.
pub const SPECS: &[KernelSpec] = &[COMPRESS, VOTE_APPLY, AVERAGE_APPLY];

/// Uniform of `shaders/distributed_lion.wgsl`. Keep in sync with `struct DlionParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct DlionParams {
    /// 32-element words per worker.
    pub words: u32,
    /// Number of workers N.
    pub workers: u32,
    /// Padding.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
    /// Learning rate.
    pub lr: f32,
    /// 1 − lr·weight_decay.
    pub decay: f32,
    /// β1.
    pub beta1: f32,
    /// 1 − β1, rounded once from f64.
    pub omb1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2.
    pub omb2: f32,
    /// Padding.
    pub _pad2: f32,
    /// Padding.
    pub _pad3: f32,
}
const _: () = assert!(std::mem::size_of::<DlionParams>() == 48);
