//! WGSL sources and the tiny `#import` step that composes them.
//!
//! Every shader lives in `shaders/`; shared pieces live in `shaders/shared/` and are pulled in with a
//! line `#import shared/NAME`. A line `#arena_kernel ENTRY ELEM` expands to the entry point that every
//! arena update shares (see [`arena_kernel`]): it finds the workgroup's block and calls
//! `ELEM(h, i, tensor)` for each vec4 `i` the invocation owns, so a shader file holds only the math. Sources are embedded at compile time, so the library needs no files at
//! run time. `tests/shaders.rs` validates every composed module with naga.

use crate::error::{Error, Result};

/// A WGSL module as the library ships it: (name, source before composition).
const SOURCES: &[(&str, &str)] = &[
    ("shared/arena", include_str!("../shaders/shared/arena.wgsl")),
    ("shared/reduce", include_str!("../shaders/shared/reduce.wgsl")),
    ("shared/philox", include_str!("../shaders/shared/philox.wgsl")),
    ("shared/gemm_common", include_str!("../shaders/shared/gemm_common.wgsl")),
    ("shared/grid", include_str!("../shaders/shared/grid.wgsl")),
    ("shared/columns", include_str!("../shaders/shared/columns.wgsl")),
    ("sign_momentum", include_str!("../shaders/sign_momentum.wgsl")),
    ("lion_k", include_str!("../shaders/lion_k.wgsl")),
    ("distributed_lion", include_str!("../shaders/distributed_lion.wgsl")),
    ("adaptive", include_str!("../shaders/adaptive.wgsl")),
    ("mars_norm", include_str!("../shaders/mars_norm.wgsl")),
    ("hessian", include_str!("../shaders/hessian.wgsl")),
    ("check", include_str!("../shaders/check.wgsl")),
    ("copy", include_str!("../shaders/copy.wgsl")),
    ("gemm", include_str!("../shaders/gemm.wgsl")),
    ("gemm_panel", include_str!("../shaders/gemm_panel.wgsl")),
    ("random", include_str!("../shaders/random.wgsl")),
    ("hutchinson", include_str!("../shaders/hutchinson.wgsl")),
    ("softmax", include_str!("../shaders/softmax.wgsl")),
    ("fma_peak", include_str!("../shaders/fma_peak.wgsl")),
    ("newton_schulz", include_str!("../shaders/newton_schulz.wgsl")),
    ("muon", include_str!("../shaders/muon.wgsl")),
    ("auon", include_str!("../shaders/auon.wgsl")),
    ("racs", include_str!("../shaders/racs.wgsl")),
    ("dasgo", include_str!("../shaders/dasgo.wgsl")),
    ("roots", include_str!("../shaders/roots.wgsl")),
    ("oasis", include_str!("../shaders/oasis.wgsl")),
    ("mlp", include_str!("../shaders/mlp.wgsl")),
];

/// Modules that use subgroup operations (an optional WebGPU feature). Only compiled when the host
/// picked one of their kernels, which it does only on devices with subgroups (see
/// [`crate::kernels::gemm::GemmKernel::Panel`]).
pub const SUBGROUP_MODULES: &[&str] = &["gemm_panel"];

/// Whether module `name` needs subgroup operations.
pub fn needs_subgroups(name: &str) -> bool {
    SUBGROUP_MODULES.contains(&name)
}

/// Names of the modules that are compiled into pipelines (everything outside `shared/`).
pub fn module_names() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().map(|(name, _)| *name).filter(|name| !name.starts_with("shared/"))
}

fn raw(name: &str) -> Result<&'static str> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::Shader { name: name.to_string(), message: "no such shader".into() })
}

/// The module's source with every `#import` replaced by the imported file (each imported once).
pub fn composed(name: &str) -> Result<String> {
    let mut out = String::new();
    let mut seen = Vec::new();
    compose_into(name, &mut out, &mut seen)?;
    Ok(out)
}

fn compose_into(name: &str, out: &mut String, seen: &mut Vec<String>) -> Result<()> {
    if seen.iter().any(|s| s == name) {
        return Ok(());
    }
    seen.push(name.to_string());
    for line in raw(name)?.lines() {
        if let Some(args) = line.trim().strip_prefix("#arena_kernel ") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let [entry, elem] = parts[..] else {
                return Err(Error::Shader { name: name.to_string(), message: format!("bad directive: {line}") });
            };
            out.push_str(&arena_kernel(entry, elem));
            continue;
        }
        match line.trim().strip_prefix("#import ") {
            Some(dep) => compose_into(dep.trim(), out, seen).map_err(|e| Error::Shader {
                name: name.to_string(),
                message: format!("import {}: {e}", dep.trim()),
            })?,
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// The entry point of an arena update: one workgroup per block (2-D grid), each invocation calling
/// `elem(h, i, tensor)` for vec4s `start + lid`, `start + lid + 256`, ... of the block.
pub fn arena_kernel(entry: &str, elem: &str) -> String {
    format!(
        "@compute @workgroup_size(256)
fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let b = arena_block(wid, nwg);
    let h = hp.g[b.group];
    for (var i = b.start + lid; i < b.start + b.len; i = i + WG_SIZE) {{
        {elem}(h, i, b.tensor);
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_inlines_imports_once() {
        let src = composed("adaptive").unwrap();
        assert!(!src.contains("#import"));
        assert_eq!(src.matches("struct Hyper {").count(), 1);
    }

    #[test]
    fn compose_unknown_module_is_an_error() {
        assert!(matches!(composed("nope"), Err(Error::Shader { .. })));
    }
}
