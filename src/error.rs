//! The one error type of the crate. Every public function returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong in gpuopt, as a value (the library does not panic on bad input).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched; the message says how to get one.
    #[error("no GPU adapter found{detail}: install a Vulkan, Metal or DX12 driver; on Linux without a GPU run `apt-get install mesa-vulkan-drivers` (lavapipe, a CPU Vulkan driver), then check with `vulkaninfo --summary`")]
    NoAdapter {
        /// What was asked for (backend / name filter), for the message.
        detail: String,
    },
    /// The adapter refused to create a device.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    /// A wgpu validation or out-of-memory error caught by an error scope.
    #[error("GPU error in {context}: {message}")]
    Gpu {
        /// What gpuopt was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// A WGSL module failed to compile or a shader import could not be resolved.
    #[error("shader {name}: {message}")]
    Shader {
        /// Module name.
        name: String,
        /// The compiler's message.
        message: String,
    },
    /// Shapes or lengths that do not fit together.
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    Shape {
        /// The operation or tensor.
        what: String,
        /// The shape it needs.
        expected: Vec<usize>,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// A hyperparameter outside its valid range or not finite.
    #[error("invalid hyperparameter {name} = {value}: {reason}")]
    Hyperparameter {
        /// Canonical name (ALGORITHMS.md §11.1).
        name: String,
        /// The value given.
        value: f64,
        /// What is allowed.
        reason: String,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A buffer or binding larger than the device allows.
    #[error("{what} needs {bytes} bytes, over the device limit {limit_name} = {limit} bytes")]
    TooLarge {
        /// What was being allocated.
        what: String,
        /// The size asked for.
        bytes: u64,
        /// The wgpu limit's name.
        limit_name: &'static str,
        /// Its value on this device.
        limit: u64,
    },
    /// A checkpoint that is corrupt or does not match the optimizer.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading back GPU memory failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// File-system error with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with gpuopt's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
