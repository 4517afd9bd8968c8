//! # gpuopt
//!
//! GPU-accelerated optimizer kernels: WGSL compute shaders for the fused updates of modern optimizers,
//! dispatched through wgpu (Vulkan, Metal, DX12; lavapipe without a GPU), each held to a CPU
//! reference written plainly over ndarray.
//!
//! - [`Context`] opens the best adapter and reports its limits ([`Context::info`]).
//! - [`optim::OptimizerBuilder`] collects parameters in groups and builds an [`optim::Optimizer`]:
//!   parameters, gradients and state in flat arenas, one fused dispatch per step.
//! - [`reference`](mod@reference) holds the CPU twin of every kernel and [`reference::CpuOptimizer`].
//! - [`replay`], [`parity`] and [`bench`](mod@bench) back the `gpuopt` command line.
//!
//! Update rules follow `ALGORITHMS.md`; names, defaults and weight-decay conventions follow its §11.
#![warn(missing_docs)]

pub mod bench;
mod case;
pub mod error;
pub mod gpu;
pub mod hvp;
pub mod kernels;
pub mod matfn;
pub mod mlp;
pub mod optim;
pub mod parity;

pub mod reference;
pub mod replay;
pub mod roots;

pub mod shaders;

pub use error::{Error, Result};
pub use gpu::{Context, ContextOptions, Tensor, TensorView};

/// The README's code blocks, compiled as doctests so the front door never shows code that does not build.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
