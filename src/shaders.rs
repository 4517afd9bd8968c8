//! WGSL sources and the tiny `#import` step that composes them.
//!
//! Every shader lives in `shaders/`; shared pieces live in `shaders/shared/` and are pulled in with a
//! line `#import shared/NAME`. Sources are embedded at compile time, so the library needs no files at
//! run time. `tests/shaders.rs` validates every composed module with naga.

use crate::error::{Error, Result};

/// A WGSL module as the library ships it: (name, source before composition).
const SOURCES: &[(&str, &str)] = &[
    ("shared/arena", include_str!("../shaders/shared/arena.wgsl")),
    (
        "sign_momentum",
        include_str!("../shaders/sign_momentum.wgsl"),
    ),
    ("adaptive", include_str!("../shaders/adaptive.wgsl")),
    ("mars_norm", include_str!("../shaders/mars_norm.wgsl")),
    ("check", include_str!("../shaders/check.wgsl")),
    ("copy", include_str!("../shaders/copy.wgsl")),
];

/// Names of the modules that are compiled into pipelines (everything outside `shared/`).
pub fn module_names() -> impl Iterator<Item = &'static str> {
    SOURCES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !name.starts_with("shared/"))
}

fn raw(name: &str) -> Result<&'static str> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::Shader {
            name: name.to_string(),
            message: "no such shader".into(),
        })
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
