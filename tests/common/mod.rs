//! Shared test helpers. GPU tests never skip: without an adapter they fail and say how to get one.
#![allow(dead_code)]

use gpuopt::{Context, ContextOptions};

/// The default context, or a panic that names the fix.
pub fn ctx() -> Context {
    ctx_with(ContextOptions::default())
}

/// A context with options (grid / binding caps), or a panic that names the fix.
pub fn ctx_with(opts: ContextOptions) -> Context {
    match Context::with_options(opts) {
        Ok(c) => c,
        Err(e) => panic!(
            "GPU tests need a GPU adapter and none could be opened: {e}\n\
             On Linux without a GPU: `apt-get install mesa-vulkan-drivers` (lavapipe), then rerun."
        ),
    }
}
