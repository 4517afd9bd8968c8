//! `gpuopt matfn CASE_DIR`: matrix functions on the GPU or the CPU reference, so they can be held
//! against scipy or the papers' code. `case.json` is `{"function": NAME, ...}`, `inputs.npz` holds `a`
//! (float32); the result goes to `outputs.npz` as `y`. Functions (ALGORITHMS.md §11.4):
//! - `newton_schulz5` (key `steps`, default 5): `a` is [m, n] or [b, m, n];
//! - `polar` (key `max_iters`, default 100): `a` is [m, n]; non-convergence is an error;
//! - `sqrt`, `inv_sqrt` (key `method`: "newton_schulz" with `iters` (default 5) and optional `tol`,
//!   "mtp" or "mpa" with `degree` (defaults 10 and 5); for `inv_sqrt` also "polar_express", ASGO's
//!   root, with `iters` (default 10) and `eps` (default 0, inside its normalising norm)): `a` is
//!   [n, n] or [b, n, n], symmetric positive definite (checked on the host: symmetry and an f64
//!   Cholesky factorisation); a result holding NaN or Inf is an error;
//! - `inv_root` (keys `p` (required: 1, 2, 4, …, 32), `eps` (default 1e-6, an absolute ridge),
//!   `eps_relative` (default false: ridge = eps·λ_max), `max_iters` (100), `tol` (1e-6)): `a` is
//!   [n, n] or [b, n, n] symmetric positive semi-definite; a final max|M − I| above 0.1 is an error.
//!
//! A bad case is an error and writes no `outputs.npz` (a stale one is removed first).

use crate::case::{clear_output, invalid, open_inputs, read_array, read_json, write_outputs};
use crate::error::{Error, Result};
use crate::kernels::newton_schulz::{self as ns, batch_shape, NS5_COEFFICIENTS};
use crate::kernels::roots::GpuMats;
use crate::reference::roots::CpuMats;
use crate::roots::{self, InvRootOptions, MatOps, SqrtMethod};
use crate::{reference, Context, Tensor};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;

/// The matrix functions `matfn` knows.
pub const FUNCTIONS: &[&str] = &["newton_schulz5", "polar", "sqrt", "inv_sqrt", "inv_root"];

fn key_usize(json: &serde_json::Value, key: &str, default: usize, path: &Path) -> Result<usize> {
    match json.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| invalid(path, format!("\"{key}\" must be a non-negative integer"))),
    }
}

fn key_f32(json: &serde_json::Value, key: &str, default: f32, path: &Path) -> Result<f32> {
    match json.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|v| v.is_finite())
            .map(|v| v as f32)
            .ok_or_else(|| invalid(path, format!("\"{key}\" must be a finite number"))),
    }
}

fn sqrt_method(json: &serde_json::Value, path: &Path) -> Result<SqrtMethod> {
    let method = match json.get("method") {
        None => "newton_schulz",
        Some(v) => v.as_str().ok_or_else(|| invalid(path, "\"method\" must be a string"))?,
    };
    Ok(match method {
        "newton_schulz" => SqrtMethod::NewtonSchulz {
            iters: key_usize(json, "iters", 5, path)?,
            tol: json.get("tol").map(|_| key_f32(json, "tol", 0.0, path)).transpose()?,
        },
        "mtp" => SqrtMethod::Mtp { degree: key_usize(json, "degree", 10, path)? },
        "mpa" => {
            let degree = key_usize(json, "degree", 5, path)?;
            if degree == 0 {
                return Err(invalid(path, "\"degree\" of mpa must be at least 1"));
            }
            SqrtMethod::Mpa { degree }
        }
        other => {
            return Err(invalid(
                path,
                format!("unknown method {other:?} (known: newton_schulz, mtp, mpa; polar_express for inv_sqrt)"),
            ))
        }
    })
}

/// Square, symmetric (relative 1e-6) and, with `definite`, positive definite by an f64 Cholesky
/// factorisation, for every matrix of the batch.
fn check_spd(data: &[f32], b: usize, m: usize, n: usize, definite: bool) -> Result<()> {
    if m != n {
        return Err(Error::Invalid(format!("\"a\" must hold square matrices, got {m}x{n}")));
    }
    for z in 0..b {
        let a = &data[z * n * n..(z + 1) * n * n];
        crate::kernels::hutchinson::check_symmetric(a, n).map_err(|e| Error::Invalid(format!("matrix {z}: {e}")))?;
        if definite {
            let mat = nalgebra::DMatrix::from_fn(n, n, |i, j| a[i * n + j] as f64);
            if nalgebra::Cholesky::new(mat).is_none() {
                return Err(Error::Invalid(format!("matrix {z} is not positive definite (Cholesky failed)")));
            }
        }
    }
    Ok(())
}

/// One of the SPD matrix functions, run by [`root_fn`].
enum RootFn {
    /// sqrt (`false`) or inv_sqrt (`true`) by `SqrtMethod`.
    Root(SqrtMethod, bool),
    /// inv_sqrt by Polar Express: eps, iterations.
    PolarExpress(f32, usize),
    /// inv_root: p, options.
    InvRoot(u32, InvRootOptions),
}

/// Runs `f` on the batch `data` ([b, n, n]) on the GPU (`ctx`) or the CPU twin; the result read back.
fn root_fn(ctx: Option<Context>, data: &[f32], b: usize, n: usize, f: RootFn) -> Result<Vec<f32>> {
    fn on(ops: &mut impl MatOps, data: &[f32], b: usize, n: usize, f: RootFn) -> Result<Vec<f32>> {
        let a = ops.upload(data, b, n, n)?;
        let y = match f {
            RootFn::Root(method, true) => roots::inv_sqrt(ops, a, method)?,
            RootFn::Root(method, false) => roots::sqrt(ops, a, method)?,
            RootFn::PolarExpress(eps, iters) => roots::inv_sqrt_polar_express(ops, a, eps, iters)?,
            RootFn::InvRoot(p, opts) => roots::inv_root(ops, a, p, opts)?.x,
        };
        ops.read(y)
    }
    match ctx {
        Some(ctx) => on(&mut GpuMats::new(&ctx)?, data, b, n, f),
        None => on(&mut CpuMats::default(), data, b, n, f),
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
        "sqrt" | "inv_sqrt" if json.get("method").and_then(|v| v.as_str()) == Some("polar_express") => {
            if function == "sqrt" {
                return Err(invalid(
                    &case_path,
                    "method \"polar_express\" computes inverse square roots only (inv_sqrt)",
                ));
            }
            let max = crate::optim::asgo::MAX_ROOT_ITERS;
            let iters = key_usize(&json, "iters", 10, &case_path)?;
            if !(1..=max).contains(&iters) {
                return Err(invalid(&case_path, format!("\"iters\" of polar_express must be from 1 to {max}")));
            }
            let eps = key_f32(&json, "eps", 0.0, &case_path)?;
            if !eps.is_finite() || eps < 0.0 {
                return Err(invalid(&case_path, "\"eps\" of polar_express must be >= 0 and finite in f32"));
            }
            check_spd(&data, b, m, n, true).map_err(|e| invalid(&npz_path, e))?;
            let y = root_fn(backend()?, &data, b, n, RootFn::PolarExpress(eps, iters))?;
            if reference::has_non_finite(&y) {
                return Err(Error::Invalid(format!(
                    "polar_express broke down (NaN or Inf after {iters} iterations): the matrix is too close to singular for f32"
                )));
            }
            y
        }
        "sqrt" | "inv_sqrt" => {
            let method = sqrt_method(&json, &case_path)?;
            check_spd(&data, b, m, n, true).map_err(|e| invalid(&npz_path, e))?;
            let inverse = function == "inv_sqrt";
            root_fn(backend()?, &data, b, n, RootFn::Root(method, inverse))?
        }
        "inv_root" => {
            let p = match json.get("p").and_then(|v| v.as_u64()) {
                Some(p) if p <= 32 && p.is_power_of_two() => p as u32,
                _ => return Err(invalid(&case_path, "\"p\" (a power of two from 1 to 32) is required")),
            };
            let opts = InvRootOptions {
                eps: key_f32(&json, "eps", 1e-6, &case_path)?,
                eps_relative: match json.get("eps_relative") {
                    None => false,
                    Some(v) => {
                        v.as_bool().ok_or_else(|| invalid(&case_path, "\"eps_relative\" must be true or false"))?
                    }
                },
                max_iters: key_usize(&json, "max_iters", 100, &case_path)?,
                tol: key_f32(&json, "tol", 1e-6, &case_path)?,
            };
            check_spd(&data, b, m, n, false).map_err(|e| invalid(&npz_path, e))?;
            root_fn(backend()?, &data, b, n, RootFn::InvRoot(p, opts))?
        }
        other => {
            return Err(invalid(&case_path, format!("unknown function {other:?} (known: {})", FUNCTIONS.join(", "))))
        }
    };
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| Error::Invalid(e.to_string()))?;
    write_outputs(&out, &[("y", &y)])
}

/// `gpuopt hutchinson CASE_DIR`: `case.json` `{"samples": N, "seed": S}`, `inputs.npz` `a`
/// (symmetric [n, n], the Hessian of ½xᵀAx) → `outputs.npz` `diag` \[n\] = (1/N)·Σ_k z_k ⊙ (A·z_k)
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
