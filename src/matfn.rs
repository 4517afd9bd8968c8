//! `gpuopt matfn CASE_DIR`: matrix functions on the GPU or the CPU reference, so they can be held
//! against scipy or the papers' code. `case.json` is `{"function": NAME, ...}`, `inputs.npz` holds `a`
//! (float32); the result goes to `outputs.npz` as `y`. Functions (ALGORITHMS.md §11.4):
//! - `newton_schulz5` (keys `steps`, default 5, below 100, and `ns_coefficients`, default Muon's
//!   (3.4445, −4.7750, 2.0315)): `a` is [m, n] or [b, m, n];
//! - `polar` (key `max_iters`, default 100, from 1 to [`MAX_ITERS`]): `a` is [m, n]; non-convergence is
//!   an error; a result that is not orthonormal (‖YᵀY − I‖_F > 1e-3·√r on the r = min(m, n) side: a
//!   rank-deficient `a`, whose result is the partial isometry, or an ill-conditioned one stopped at
//!   the f32 floor) is written with a warning;
//! - `sqrt`, `inv_sqrt` (key `method`: "newton_schulz" with `iters` (default 5, from 1 to
//!   [`MAX_ITERS`]) and optional `tol` (finite, > 0), "mtp" with `degree` (default 10, from 1 to
//!   [`MAX_MTP_DEGREE`]), "mpa" with `degree` (default 5, from 1 to [`MAX_MPA_DEGREE`]); for `inv_sqrt`
//!   also "polar_express", ASGO's root, with `iters` (default 10, from 1 to 100) and `eps` (default 0,
//!   inside its normalising norm)): `a` is [n, n] or [b, n, n], symmetric positive definite (checked
//!   on the host: symmetry and an f64 Cholesky factorisation); a result holding NaN or Inf is an error;
//! - `inv_root` (keys `p` (required: 1 to 32), `eps` (default 1e-6, an absolute ridge, >= 0),
//!   `eps_relative` (default false: ridge = eps·λ_max), `max_iters` (100, from 1 to [`MAX_ITERS`]),
//!   `tol` (1e-6, finite, > 0)): `a` is [n, n] or [b, n, n] symmetric positive semi-definite; a final
//!   max|M − I| above 0.1 is an error.
//!
//! A bad case is an error of one line and writes no `outputs.npz` (a stale one is removed first); a
//! key outside its range is named with the value given and the range allowed; a key the function
//! does not read is ignored with a warning. No `y` holding NaN or Inf is written: it is an error.

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

/// The most iterations `matfn` runs: `max_iters` of `polar` and `inv_root`, `iters` of the coupled
/// Newton–Schulz root. Each converges within about 50 in f32 (the slowest phase grows a singular value
/// or eigenvalue by ~1.5× per iteration from the f32 floor); more only costs time.
pub const MAX_ITERS: usize = 1000;

/// The highest `degree` of method "mtp": the Taylor series converges like (1 − λ_min/‖A‖_F)^K, so a
/// condition number κ needs K of about 17·κ; past this, "newton_schulz" is the method to use.
pub const MAX_MTP_DEGREE: usize = 10_000;

/// The highest `degree` N of method "mpa" (the [N/N] Padé approximant). P and Q are evaluated in f32 in
/// the monomial basis, where their terms cancel: Q(1)/Σ|q_j| is 1.5e-5 at N = 8 and 5e-7 at N = 10, so
/// past 8 rounding outweighs what the higher degree gains (measured at κ = 2 … 1e6: the error is
/// smallest at N = 6–9 and grows from 10, where Q or P stops being positive definite in f32).
pub const MAX_MPA_DEGREE: usize = 8;

/// The most Hutchinson `samples`: the estimate's f32 running sum loses about √N·ε (N·ε at worst) to
/// rounding, which past ~2^20 is no longer small against the sampling error 1/√N.
pub const MAX_SAMPLES: usize = 1 << 20;

/// The most probe elements (samples·n) a Hutchinson case may hold at once (2^28: 1 GiB of f32 on the
/// CPU; the GPU holds them twice, Z and A·Zᵀ, and also refuses what its bindings cannot hold).
pub const MAX_PROBE_ELEMENTS: usize = 1 << 28;

/// The text of an error for wrapping into another message: without the "invalid argument: " that
/// [`Error::Invalid`] prints, so a wrapped message says it once.
fn message(e: &Error) -> String {
    match e {
        Error::Invalid(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON value as given, for a message (cut at 40 characters).
fn shown(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// An integer key from `min` to `max` (`default` when absent); `what` ends the message (e.g. the
/// method it belongs to and why the range).
fn key_int(
    json: &serde_json::Value,
    key: &str,
    default: usize,
    (min, max): (usize, usize),
    what: &str,
    path: &Path,
) -> Result<usize> {
    let Some(v) = json.get(key) else { return Ok(default) };
    match v.as_u64() {
        Some(x) if (min as u64..=max as u64).contains(&x) => Ok(x as usize),
        _ => Err(invalid(path, format!("\"{key}\" = {}: must be an integer from {min} to {max}{what}", shown(v)))),
    }
}

fn key_f32(json: &serde_json::Value, key: &str, default: f32, path: &Path) -> Result<f32> {
    match json.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| invalid(path, format!("\"{key}\" = {}: must be a finite number (in f32)", shown(v)))),
    }
}

/// A tolerance: finite and > 0.
fn key_tol(json: &serde_json::Value, default: f32, path: &Path) -> Result<f32> {
    let tol = key_f32(json, "tol", default, path)?;
    if tol <= 0.0 {
        return Err(invalid(path, format!("\"tol\" = {}: must be finite and > 0", shown(&json["tol"]))));
    }
    Ok(tol)
}

/// A ridge or regulariser: finite and >= 0.
fn key_eps(json: &serde_json::Value, default: f32, what: &str, path: &Path) -> Result<f32> {
    let eps = key_f32(json, "eps", default, path)?;
    if eps < 0.0 {
        return Err(invalid(path, format!("\"eps\" = {}: must be finite and >= 0{what}", shown(&json["eps"]))));
    }
    Ok(eps)
}

fn sqrt_method(json: &serde_json::Value, path: &Path) -> Result<SqrtMethod> {
    let method = match json.get("method") {
        None => "newton_schulz",
        Some(v) => v.as_str().ok_or_else(|| invalid(path, format!("\"method\" = {}: must be a string", shown(v))))?,
    };
    Ok(match method {
        "newton_schulz" => SqrtMethod::NewtonSchulz {
            iters: key_int(json, "iters", 5, (1, MAX_ITERS), " for method \"newton_schulz\"", path)?,
            tol: json.get("tol").map(|_| key_tol(json, 0.0, path)).transpose()?,
        },
        "mtp" => SqrtMethod::Mtp {
            degree: key_int(
                json,
                "degree",
                10,
                (1, MAX_MTP_DEGREE),
                " for method \"mtp\" (past that, use \"newton_schulz\")",
                path,
            )?,
        },
        "mpa" => SqrtMethod::Mpa {
            degree: key_int(
                json,
                "degree",
                5,
                (1, MAX_MPA_DEGREE),
                " for method \"mpa\" (in f32 the Padé terms cancel: higher degrees lose more to rounding \
                 than they gain)",
                path,
            )?,
        },
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
        crate::kernels::hutchinson::check_symmetric(a, n)
            .map_err(|e| Error::Invalid(format!("matrix {z}: {}", message(&e))))?;
        if definite {
            let mat = nalgebra::DMatrix::from_fn(n, n, |i, j| a[i * n + j] as f64);
            if nalgebra::Cholesky::new(mat).is_none() {
                return Err(Error::Invalid(format!("matrix {z} is not positive definite (Cholesky failed)")));
            }
        }
    }
    Ok(())
}

/// ‖YᵀY − I‖_F (m ≥ n) or ‖YYᵀ − I‖_F (m < n) of the m×n row-major `y`, in f64: how far `y` is from
/// orthonormal columns (rows).
fn orthonormality_error(y: &[f32], m: usize, n: usize) -> f64 {
    let y = nalgebra::DMatrix::from_fn(m, n, |i, j| y[i * n + j] as f64);
    let g = if m >= n { y.tr_mul(&y) } else { &y * y.transpose() };
    let r = g.nrows();
    (g - nalgebra::DMatrix::<f64>::identity(r, r)).norm()
}

/// The polar factor's orthonormality bound, relative to √r: ten times the tests' 1e-4 (long f32 inner
/// products), far below the √(r − rank) of a partial isometry.
const POLAR_ORTHONORMALITY: f64 = 1e-3;

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
            RootFn::InvRoot(p, opts) => {
                let r = roots::inv_root(ops, a, p, opts)?;
                // Past tol but within the failure threshold (the growth guard or the iteration cap
                // stopped it): a result, less accurate than asked, which the caller should hear.
                for (z, (e, iters)) in r.err.iter().zip(&r.iters).enumerate().filter(|(_, (e, _))| **e > opts.tol) {
                    log::warn!(
                        "inv_root: matrix {z} stopped at max|M - I| = {e:e} after {iters} iteration(s), above tol = \
                         {:e} (under the {} failure threshold): a larger eps or max_iters may help",
                        opts.tol,
                        roots::INV_ROOT_FAILURE
                    );
                }
                r.x
            }
        };
        ops.read(y)
    }
    match ctx {
        Some(ctx) => on(&mut GpuMats::new(&ctx)?, data, b, n, f),
        None => on(&mut CpuMats::default(), data, b, n, f),
    }
}

/// The error of an MPA solve that refused its system, told as what it is: `a` passed the host's SPD
/// check, so in exact arithmetic the Padé denominator (numerator for inv_sqrt) is positive definite;
/// in f32 its cancelling terms made it not so. Other errors pass through.
fn mpa_error(e: Error, function: &str, degree: usize) -> Error {
    match &e {
        Error::Invalid(s) if s.contains("solve_spd") && s.contains("not positive definite") => {
            let z = s.split("matrix ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("?");
            let (which, poly) = if function == "inv_sqrt" { ("numerator", "P") } else { ("denominator", "Q") };
            Error::Invalid(format!(
                "{function} by mpa, degree {degree}: for matrix {z} the f32 Padé {which} {poly}(I - A/|A|_F) is not \
                 numerically positive definite, although a passed the host's SPD check (f32 rounding at this \
                 degree and condition number); try a lower degree or method \"newton_schulz\""
            ))
        }
        _ => e,
    }
}

/// The keys each function reads (besides "function"), and `gpuopt hutchinson`'s; `None` for an unknown
/// function.
fn known_keys(function: &str, method: Option<&str>) -> Option<&'static [&'static str]> {
    Some(match (function, method) {
        ("newton_schulz5", _) => &["steps", "ns_coefficients"],
        ("polar", _) => &["max_iters"],
        ("inv_sqrt", Some("polar_express")) => &["method", "iters", "eps"],
        ("sqrt" | "inv_sqrt", Some("mtp" | "mpa")) => &["method", "degree"],
        ("sqrt" | "inv_sqrt", _) => &["method", "iters", "tol"],
        ("inv_root", _) => &["p", "eps", "eps_relative", "max_iters", "tol"],
        ("hutchinson", _) => &["samples", "seed"],
        _ => return None,
    })
}

/// Keys the function does not read are ignored, each with a warning ([`crate::case`]'s rule).
fn warn_unknown_keys(json: &serde_json::Value, function: &str, path: &Path) {
    let method = json.get("method").and_then(|v| v.as_str());
    let (Some(known), Some(given)) = (known_keys(function, method), json.as_object()) else { return };
    // "function" is matfn's own key (hutchinson has none).
    let own = |k: &str| k == "function" && function != "hutchinson";
    let what = method.map_or(function.to_string(), |m| format!("{function} with method {m:?}"));
    crate::case::warn_unknown_keys(path, given.keys().filter(|k| !own(k)), known, "key", &what);
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
    warn_unknown_keys(&json, function, &case_path);
    let (npz_path, mut npz) = open_inputs(dir)?;
    let a = read_array(&npz_path, &mut npz, "a", "float32")?;
    if a.iter().any(|v| !v.is_finite()) {
        return Err(invalid(&npz_path, "\"a\" holds NaN or Inf"));
    }
    let data: Vec<f32> = a.iter().copied().collect();
    let shape = a.shape().to_vec();
    let (b, m, n) = batch_shape(&shape).map_err(|e| invalid(&npz_path, message(&e)))?;
    if b * m * n == 0 {
        return Err(invalid(&npz_path, format!("\"a\" is empty: shape {shape:?}")));
    }
    let y = match function {
        "newton_schulz5" => {
            let steps = key_int(&json, "steps", 5, (0, 99), " for newton_schulz5", &case_path)?;
            let coefficients = match json.get("ns_coefficients") {
                None => NS5_COEFFICIENTS,
                Some(v) => {
                    let bad = || {
                        invalid(
                            &case_path,
                            format!("\"ns_coefficients\" = {}: must be [a, b, c], finite in f32", shown(v)),
                        )
                    };
                    let c: [f64; 3] = serde_json::from_value(v.clone()).map_err(|_| bad())?;
                    ns::ns_coefficients(c).map_err(|_| bad())?
                }
            };
            match backend()? {
                Some(ctx) => {
                    ns::newton_schulz5_with(&ctx, &Tensor::from_slice(&ctx, &data, &shape)?, steps, coefficients)?
                }
                None => reference::newton_schulz::newton_schulz5(&data, b, m, n, steps, coefficients),
            }
        }
        "polar" => {
            let max_iters = key_int(&json, "max_iters", 100, (1, MAX_ITERS), " for polar", &case_path)?;
            if shape.len() != 2 {
                return Err(invalid(&npz_path, format!("polar takes a = [m, n], got {shape:?}")));
            }
            let (y, iters) = match backend()? {
                Some(ctx) => {
                    let p = ns::polar(&ctx, &Tensor::from_slice(&ctx, &data, &shape)?, max_iters)?;
                    (p.q, p.iters)
                }
                None => reference::newton_schulz::polar(&data, m, n, max_iters)?,
            };
            let r = m.min(n) as f64;
            // (A NaN result gives a NaN dev, no warning, and the error after the match.)
            let dev = orthonormality_error(&y, m, n) / r.sqrt();
            // ALGORITHMS.md §5.4 defines the result for a rank-deficient a (the partial isometry) and
            // §11.4 when to stop (at the f32 floor, which an ill-conditioned a can reach while its
            // small singular values are still growing): both are results, not errors, but neither
            // is orthonormal, which a caller comparing with scipy's polar factor should hear.
            if dev > POLAR_ORTHONORMALITY {
                let side = if m >= n { "Y^T Y" } else { "Y Y^T" };
                log::warn!(
                    "{}: polar: the result is not orthonormal (|{side} - I|_F/sqrt({r}) = {dev:.3e} after {iters} \
                     iteration(s)): a is rank-deficient (the result is the partial isometry, ALGORITHMS.md §5.4; \
                     its polar factor is not unique) or ill-conditioned (the §11.4 rule stopped at the f32 floor)",
                    npz_path.display()
                );
            }
            y
        }
        "sqrt" | "inv_sqrt" if json.get("method").and_then(|v| v.as_str()) == Some("polar_express") => {
            if function == "sqrt" {
                return Err(invalid(
                    &case_path,
                    "method \"polar_express\" computes inverse square roots only (inv_sqrt)",
                ));
            }
            let max = crate::optim::asgo::MAX_ROOT_ITERS;
            let iters = key_int(&json, "iters", 10, (1, max), " for method \"polar_express\"", &case_path)?;
            let eps = key_eps(&json, 0.0, " for method \"polar_express\"", &case_path)?;
            check_spd(&data, b, m, n, true).map_err(|e| invalid(&npz_path, message(&e)))?;
            root_fn(backend()?, &data, b, n, RootFn::PolarExpress(eps, iters))?
        }
        "sqrt" | "inv_sqrt" => {
            let method = sqrt_method(&json, &case_path)?;
            check_spd(&data, b, m, n, true).map_err(|e| invalid(&npz_path, message(&e)))?;
            let inverse = function == "inv_sqrt";
            root_fn(backend()?, &data, b, n, RootFn::Root(method, inverse)).map_err(|e| match method {
                SqrtMethod::Mpa { degree } => mpa_error(e, function, degree),
                _ => e,
            })?
        }
        "inv_root" => {
            let p = match json.get("p") {
                None => return Err(invalid(&case_path, "\"p\" is required (an integer from 1 to 32)")),
                Some(v) => match v.as_u64() {
                    Some(p) if (1..=32).contains(&p) => p as u32,
                    _ => {
                        return Err(invalid(
                            &case_path,
                            format!("\"p\" = {}: must be an integer from 1 to 32", shown(v)),
                        ))
                    }
                },
            };
            let opts = InvRootOptions {
                eps: key_eps(&json, 1e-6, " for inv_root", &case_path)?,
                eps_relative: match json.get("eps_relative") {
                    None => false,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        invalid(&case_path, format!("\"eps_relative\" = {}: must be true or false", shown(v)))
                    })?,
                },
                max_iters: key_int(&json, "max_iters", 100, (1, MAX_ITERS), " for inv_root", &case_path)?,
                tol: key_tol(&json, 1e-6, &case_path)?,
            };
            check_spd(&data, b, m, n, false).map_err(|e| invalid(&npz_path, message(&e)))?;
            root_fn(backend()?, &data, b, n, RootFn::InvRoot(p, opts))?
        }
        other => {
            return Err(invalid(&case_path, format!("unknown function {other:?} (known: {})", FUNCTIONS.join(", "))))
        }
    };
    // One check for every function: no outputs.npz holds NaN or Inf (a polar or Polar Express
    // iteration, or a root, that broke down in f32).
    if reference::has_non_finite(&y) {
        return Err(invalid(
            &npz_path,
            format!("{function}: the result holds NaN or Inf: f32 broke down (a is too close to singular, or too large or small, for f32)"),
        ));
    }
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| Error::Invalid(e.to_string()))?;
    write_outputs(&out, &[("y", &y)])
}

/// `gpuopt hutchinson CASE_DIR`: `case.json` `{"samples": N, "seed": S}`, `inputs.npz` `a`
/// (symmetric [n, n], the Hessian of ½xᵀAx) → `outputs.npz` `diag` \[n\] = (1/N)·Σ_k z_k ⊙ (A·z_k)
/// with the library's Rademacher probes (ALGORITHMS.md §11.5). GPU and CPU draw identical probes.
/// `samples` is from 1 to [`MAX_SAMPLES`] (default 1), and samples·n at most [`MAX_PROBE_ELEMENTS`].
pub fn run_hutchinson_case(dir: &Path, backend: impl FnOnce() -> Result<Option<Context>>) -> Result<()> {
    let out = clear_output(dir)?;
    let (case_path, json) = read_json(dir)?;
    let samples = key_int(&json, "samples", 1, (1, MAX_SAMPLES), " (2^20)", &case_path)?;
    let seed = match json.get("seed") {
        None => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(&case_path, format!("\"seed\" = {}: must be an integer from 0 to 2^64 - 1", shown(v)))
        })?,
    };
    warn_unknown_keys(&json, "hutchinson", &case_path);
    let (npz_path, mut npz) = open_inputs(dir)?;
    let a = read_array(&npz_path, &mut npz, "a", "float32")?;
    let n = match a.shape() {
        [r, c] if r == c && *r > 0 => *r,
        other => return Err(invalid(&npz_path, format!("\"a\" must be square [n, n] with n >= 1, got {other:?}"))),
    };
    if samples.saturating_mul(n) > MAX_PROBE_ELEMENTS {
        return Err(invalid(
            &case_path,
            format!(
                "\"samples\" = {samples} with n = {n}: the probes would hold samples*n = {} elements, over 2^28; \
                 use at most {} samples",
                samples.saturating_mul(n),
                MAX_PROBE_ELEMENTS / n
            ),
        ));
    }
    let data: Vec<f32> = a.iter().copied().collect();
    crate::kernels::hutchinson::check_symmetric(&data, n).map_err(|e| invalid(&npz_path, message(&e)))?;
    let diag = match backend()? {
        Some(ctx) => crate::kernels::hutchinson::hutchinson_diag(
            &ctx,
            &Tensor::from_slice(&ctx, &data, &[n, n])?,
            samples,
            seed,
        )?,
        None => reference::hutchinson::hutchinson_diag(&data, n, samples, seed),
    };
    // A finite matrix can still overflow f32 in A·z (entries near 3.4e38): no Inf is written.
    if reference::has_non_finite(&diag) {
        return Err(invalid(&npz_path, "the estimate overflows f32 (A·z holds Inf): scale the matrix down"));
    }
    let y = ArrayD::from_shape_vec(IxDyn(&[n]), diag).map_err(|e| Error::Invalid(e.to_string()))?;
    write_outputs(&out, &[("diag", &y)])
}
