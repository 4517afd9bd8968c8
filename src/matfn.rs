//! `gpuopt matfn CASE_DIR`: matrix functions on the GPU or the CPU reference, so they can be held
//! against scipy or the papers' code. `case.json` is `{"function": NAME, ...}`, `inputs.npz` holds `a`
//! (float32); the result goes to `outputs.npz` as `y`. Functions (ALGORITHMS.md §11.4):
//! - `newton_schulz5` (key `steps`, default 5): `a` is [m, n] or [b, m, n];
//! - `polar` (key `max_iters`, default 100): `a` is [m, n]; non-convergence is an error.
//!
//! A bad case is an error and writes no `outputs.npz` (a stale one is removed first).

use crate::case::{clear_output, invalid, open_inputs, read_array, read_json, write_outputs};
use crate::error::{Error, Result};
use crate::kernels::newton_schulz::{self as ns, batch_shape, NS5_COEFFICIENTS};
use crate::{reference, Context, Tensor};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;

/// The matrix functions `matfn` knows.
pub const FUNCTIONS: &[&str] = &["newton_schulz5", "polar"];

fn key_usize(json: &serde_json::Value, key: &str, default: usize, path: &Path) -> Result<usize> {
    match json.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| invalid(path, format!("\"{key}\" must be a non-negative integer"))),
    }
}

/// Runs a case: validates everything before opening the backend (`backend()` gives the GPU context,
/// or `None` for the CPU reference).
pub fn run_case(dir: &Path, backend: impl FnOnce() -> Result<Option<Context>>) -> Result<()> {
    let out = clear_output(dir)?;
    let (case_path, json) = read_json(dir)?;
    let function = json
        .get("function")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid(&case_path, "missing string field \"function\""))?;
    let (npz_path, mut npz) = open_inputs(dir)?;
    let a = read_array(&npz_path, &mut npz, "a", "float32")?;
    if a.iter().any(|v| !v.is_finite()) {
        return Err(invalid(&npz_path, "\"a\" holds NaN or Inf"));
    }
    let data: Vec<f32> = a.iter().copied().collect();
    let shape = a.shape().to_vec();
    let (b, m, n) = batch_shape(&shape).map_err(|e| invalid(&npz_path, e))?;
    if b * m * n == 0 {
        return Err(invalid(&npz_path, format!("\"a\" is empty: shape {shape:?}")));
    }
    let y = match function {
        "newton_schulz5" => {
            let steps = key_usize(&json, "steps", 5, &case_path)?;
            if steps >= 100 {
                return Err(invalid(&case_path, "\"steps\" must be below 100"));
            }
            match backend()? {
                Some(ctx) => ns::newton_schulz5(&ctx, &Tensor::from_slice(&ctx, &data, &shape)?, steps)?,
                None => reference::newton_schulz::newton_schulz5(&data, b, m, n, steps, NS5_COEFFICIENTS),
            }
        }
        "polar" => {
            let max_iters = key_usize(&json, "max_iters", 100, &case_path)?;
            if shape.len() != 2 {
                return Err(invalid(&npz_path, format!("polar takes a = [m, n], got {shape:?}")));
            }
            match backend()? {
                Some(ctx) => ns::polar(&ctx, &Tensor::from_slice(&ctx, &data, &shape)?, max_iters)?.q,
                None => reference::newton_schulz::polar(&data, m, n, max_iters)?.0,
            }
        }
        other => {
            return Err(invalid(&case_path, format!("unknown function {other:?} (known: {})", FUNCTIONS.join(", "))))
        }
    };
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| Error::Invalid(e.to_string()))?;
    write_outputs(&out, &[("y", &y)])
}

/// `gpuopt hutchinson CASE_DIR`: `case.json` `{"samples": N, "seed": S}`, `inputs.npz` `a`
/// (symmetric [n, n], the Hessian of ½xᵀAx) → `outputs.npz` `diag` [n] = (1/N)·Σ_k z_k ⊙ (A·z_k)
/// with the library's Rademacher probes (ALGORITHMS.md §11.5). GPU and CPU draw identical probes.
pub fn run_hutchinson_case(dir: &Path, backend: impl FnOnce() -> Result<Option<Context>>) -> Result<()> {
    let out = clear_output(dir)?;
    let (case_path, json) = read_json(dir)?;
    let samples = key_usize(&json, "samples", 1, &case_path)?;
    if samples == 0 {
        return Err(invalid(&case_path, "\"samples\" must be at least 1"));
    }
    let seed = match json.get("seed") {
        None => 0,
        Some(v) => {
            v.as_u64().ok_or_else(|| invalid(&case_path, "\"seed\" must be a non-negative integer below 2^64"))?
        }
    };
    let (npz_path, mut npz) = open_inputs(dir)?;
    let a = read_array(&npz_path, &mut npz, "a", "float32")?;
    let n = match a.shape() {
        [r, c] if r == c => *r,
        other => return Err(invalid(&npz_path, format!("\"a\" must be square [n, n], got {other:?}"))),
    };
    let data: Vec<f32> = a.iter().copied().collect();
    crate::kernels::hutchinson::check_symmetric(&data, n).map_err(|e| invalid(&npz_path, e))?;
    let diag = match backend()? {
        Some(ctx) => crate::kernels::hutchinson::hutchinson_diag(
            &ctx,
            &Tensor::from_slice(&ctx, &data, &[n, n])?,
            samples,
            seed,
        )?,
        None => reference::hutchinson::hutchinson_diag(&data, n, samples, seed),
    };
    let y = ArrayD::from_shape_vec(IxDyn(&[n]), diag).map_err(|e| Error::Invalid(e.to_string()))?;
    write_outputs(&out, &[("diag", &y)])
}
