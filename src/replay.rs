//! `gpuopt replay CASE_DIR`: run an optimizer over recorded gradients so its trajectory can be held
//! against PyTorch's or optax's.
//!
//! `CASE_DIR/case.json` is `{"optimizer": NAME, "steps": T, "hyper": {...}}` (unknown keys ignored;
//! omitted hyperparameters take the reference defaults of ALGORITHMS.md §11.2; `shampoo`'s are
//! [`crate::optim::ShampooConfig`]'s, under optax's names where §11.3 gives none). `CASE_DIR/inputs.npz`
//! holds `param` (f32, 1-D or 2-D, shape S) and `grads` (f32, [T, *S]), plus `hess_diag` ([T, *S]) for
//! `adahessian`, `sophia` and `oasis`, and `losses` (\[T\]) for `sania`. The result,
//! `CASE_DIR/outputs.npz`, holds `param` (after the last step) and `trajectory` ([T, *S], the
//! parameter after each step). A bad case is an error and writes no `outputs.npz` (a stale one is
//! removed first, so a failed run never leaves an old result looking current).

use crate::case::{clear_output, invalid, open_inputs, read_json, write_outputs};
use crate::error::{Error, Result};
use crate::kernels::roots::GpuMats;
use crate::optim::{
    Algorithm, Asgo, AsgoConfig, AuonBuilder, AuonConfig, Dasgo, DasgoConfig, FlatAlgorithm, FlatOptimizer,
    MuonBuilder, MuonConfig, OasisConfig, OptimizerBuilder, ParamId, RegBuilder, RegConfig, SaniaConfig, Shampoo,
    ShampooConfig, Stepper,
};
use crate::reference::roots::CpuMats;
use crate::roots::MatOps;
use crate::Context;
use ndarray::{ArrayD, Axis, IxDyn};
use std::path::Path;

/// Which optimizer a case runs.
#[derive(Clone, Debug)]
pub enum CaseOptimizer {
    /// An elementwise optimizer.
    Elementwise(Algorithm),
    /// Muon (2-D parameters only).
    Muon(MuonConfig),
    /// AuON (`hybrid` false) or Hybrid-AuON.
    Auon(AuonConfig, bool),
    /// REG, as the RACS operator of pytorch-optimizer.
    Reg(RegConfig),
    /// ASGO (matrix parameters only).
    Asgo(AsgoConfig),
    /// DASGO, ASGO's diagonal variant (matrix parameters only).
    Dasgo(DasgoConfig),
    /// Shampoo (optax's shapes: a vector is preconditioned too).
    Shampoo(ShampooConfig),
    /// OASIS or SANIA (global step sizes over a flat vector).
    Flat(FlatAlgorithm),
}

impl CaseOptimizer {
    /// The hyperparameters in force, as a JSON object under their canonical names.
    pub fn hyper_json(&self) -> serde_json::Value {
        let v = match self {
            CaseOptimizer::Elementwise(a) => return a.hyper_json(),
            CaseOptimizer::Muon(c) => serde_json::to_value(c),
            CaseOptimizer::Auon(c, _) => serde_json::to_value(c),
            CaseOptimizer::Reg(c) => serde_json::to_value(c),
            CaseOptimizer::Asgo(c) => serde_json::to_value(c),
            CaseOptimizer::Dasgo(c) => serde_json::to_value(c),
            CaseOptimizer::Shampoo(c) => serde_json::to_value(c),
            CaseOptimizer::Flat(FlatAlgorithm::Oasis(c)) => serde_json::to_value(c),
            CaseOptimizer::Flat(FlatAlgorithm::Sania(c)) => serde_json::to_value(c),
        };
        v.expect("configs serialise")
    }
}

/// Replay names of the matrix optimizers (beside the elementwise ones).
pub const MATRIX_NAMES: &[&str] = &["muon", "auon", "hybrid_auon", "reg", "asgo", "dasgo", "shampoo"];

/// Replay names of the flat-vector optimizers: `oasis` needs `hess_diag`, `sania` needs `losses` (\[T\],
/// the loss at each step) in inputs.npz.
pub const FLAT_NAMES: &[&str] = &["oasis", "sania"];

/// A parsed replay case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The optimizer with its hyperparameters.
    pub algorithm: CaseOptimizer,
    /// Steps to run.
    pub steps: usize,
    /// Initial parameter.
    pub param: ArrayD<f32>,
    /// Gradients, [T, *S].
    pub grads: ArrayD<f32>,
    /// Per-step Hessian diagonals, [T, *S] (AdaHessian, Sophia, OASIS; `hess_diag` in inputs.npz).
    pub hess: Option<ArrayD<f32>>,
    /// Per-step loss values, \[T\] (SANIA; `losses` in inputs.npz).
    pub losses: Option<Vec<f32>>,
}

/// Reads and validates `case.json` and `inputs.npz`.
pub fn load_case(dir: &Path) -> Result<Case> {
    let (case_path, json) = read_json(dir)?;
    let name = json
        .get("optimizer")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid(&case_path, "missing string field \"optimizer\""))?;
    let hyper = json.get("hyper").cloned().unwrap_or(serde_json::json!({}));
    if !hyper.is_object() {
        return Err(invalid(&case_path, "\"hyper\" must be an object"));
    }
    if !MATRIX_NAMES.contains(&name) && !FLAT_NAMES.contains(&name) && !crate::optim::algorithm::NAMES.contains(&name) {
        return Err(invalid(
            &case_path,
            format!(
                "unknown optimizer {name:?} (known: {}, {}, {})",
                crate::optim::algorithm::NAMES.join(", "),
                MATRIX_NAMES.join(", "),
                FLAT_NAMES.join(", ")
            ),
        ));
    }
    fn parse<T: serde::de::DeserializeOwned>(hyper: &serde_json::Value, path: &Path) -> Result<T> {
        serde_json::from_value(hyper.clone()).map_err(|e| invalid(path, format!("hyperparameters: {e}")))
    }
    let algorithm = if name == "muon" {
        let c: MuonConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Muon(c)
    } else if name == "reg" {
        let c: RegConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Reg(c)
    } else if name == "asgo" {
        let c: AsgoConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Asgo(c)
    } else if name == "dasgo" {
        let c: DasgoConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Dasgo(c)
    } else if name == "shampoo" {
        let c: ShampooConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Shampoo(c)
    } else if name == "oasis" {
        let c: OasisConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Flat(FlatAlgorithm::Oasis(c))
    } else if name == "sania" {
        let c: SaniaConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Flat(FlatAlgorithm::Sania(c))
    } else if name == "auon" || name == "hybrid_auon" {
        let c: AuonConfig = parse(&hyper, &case_path)?;
        c.validate().map_err(|e| invalid(&case_path, e))?;
        CaseOptimizer::Auon(c, name == "hybrid_auon")
    } else {
        CaseOptimizer::Elementwise(Algorithm::from_name(name, &hyper).map_err(|e| match e {
            Error::Invalid(msg) => invalid(&case_path, msg),
            other => invalid(&case_path, other),
        })?)
    };

    warn_unknown_keys(&hyper, &algorithm.hyper_json(), name, &case_path);
    let (npz_path, mut npz) = open_inputs(dir)?;
    let param: ArrayD<f32> =
        npz.by_name("param").map_err(|e| invalid(&npz_path, format!("array \"param\" (float32): {e}")))?;
    let grads: ArrayD<f32> =
        npz.by_name("grads").map_err(|e| invalid(&npz_path, format!("array \"grads\" (float32): {e}")))?;
    if !(1..=2).contains(&param.ndim()) {
        return Err(invalid(&npz_path, format!("param must be 1-D or 2-D, got shape {:?}", param.shape())));
    }
    if grads.ndim() != param.ndim() + 1 || grads.shape()[1..] != *param.shape() {
        return Err(Error::Shape {
            what: format!("{}: grads (expected [T, *param.shape])", npz_path.display()),
            expected: std::iter::once(grads.shape().first().copied().unwrap_or(0))
                .chain(param.shape().iter().copied())
                .collect(),
            got: grads.shape().to_vec(),
        });
    }
    if matches!(algorithm, CaseOptimizer::Muon(_) | CaseOptimizer::Asgo(_) | CaseOptimizer::Dasgo(_))
        && param.ndim() != 2
    {
        return Err(invalid(&npz_path, format!("{name} takes a 2-D param, got shape {:?}", param.shape())));
    }
    let needs_hess = matches!(&algorithm, CaseOptimizer::Elementwise(a) if a.needs_hessian())
        || matches!(&algorithm, CaseOptimizer::Flat(FlatAlgorithm::Oasis(_)));
    let hess = if needs_hess {
        let h: ArrayD<f32> = npz.by_name("hess_diag").map_err(|e| {
            invalid(&npz_path, format!("array \"hess_diag\" (float32, [T, *param.shape]) is required by {name}: {e}"))
        })?;
        if h.shape() != grads.shape() {
            return Err(Error::Shape {
                what: format!("{}: hess_diag (must match grads)", npz_path.display()),
                expected: grads.shape().to_vec(),
                got: h.shape().to_vec(),
            });
        }
        Some(h)
    } else {
        None
    };
    let available = grads.shape()[0];
    let steps = match json.get("steps") {
        None => available,
        Some(v) => v.as_u64().ok_or_else(|| invalid(&case_path, "\"steps\" must be a non-negative integer"))? as usize,
    };
    if steps > available {
        return Err(invalid(&npz_path, format!("case asks for {steps} steps but grads holds {available}")));
    }
    let losses = if matches!(&algorithm, CaseOptimizer::Flat(FlatAlgorithm::Sania(_))) {
        let l: ArrayD<f32> = npz
            .by_name("losses")
            .map_err(|e| invalid(&npz_path, format!("array \"losses\" (float32, [T]) is required by sania: {e}")))?;
        if l.ndim() != 1 || l.len() < steps {
            return Err(invalid(
                &npz_path,
                format!("\"losses\" must be 1-D with at least {steps} values, got shape {:?}", l.shape()),
            ));
        }
        // A NaN/Inf loss skips its step (as SANIA's write_loss does); a finite one must be >= 0.
        if let Some(t) = l.iter().take(steps).position(|v| v.is_finite() && *v < 0.0) {
            return Err(invalid(&npz_path, format!("\"losses\"[{t}] = {} must be >= 0 (or NaN/Inf to skip)", l[t])));
        }
        Some(l.iter().copied().collect())
    } else {
        None
    };
    Ok(Case { algorithm, steps, param, grads, hess, losses })
}

/// Unknown hyperparameters are ignored, each with a warning ([`crate::case`]'s rule).
fn warn_unknown_keys(hyper: &serde_json::Value, known: &serde_json::Value, name: &str, path: &Path) {
    let (Some(given), Some(known)) = (hyper.as_object(), known.as_object()) else { return };
    let names: Vec<&str> = known.keys().map(|k| k.as_str()).collect();
    crate::case::warn_unknown_keys(path, given.keys(), &names, "hyperparameter", name);
}

/// Runs a case on the GPU (`Some(ctx)`) or the CPU reference (`None`); returns the trajectory.
pub fn run(case: &Case, ctx: Option<&Context>) -> Result<ArrayD<f32>> {
    let data: Vec<f32> = case.param.iter().copied().collect();
    let (id, mut opt): (_, Box<dyn Stepper>) = match &case.algorithm {
        CaseOptimizer::Shampoo(c) => {
            fn boxed<O: MatOps + 'static>(
                mut o: Shampoo<O>,
                data: &[f32],
                shape: &[usize],
            ) -> Result<(ParamId, Box<dyn Stepper>)> {
                Ok((o.add_param(data, shape)?.into(), Box::new(o)))
            }
            match ctx {
                Some(ctx) => boxed(Shampoo::new(GpuMats::new(ctx)?, c.clone())?, &data, case.param.shape())?,
                None => boxed(Shampoo::new(CpuMats::default(), c.clone())?, &data, case.param.shape())?,
            }
        }
        CaseOptimizer::Elementwise(a) => {
            let mut b = OptimizerBuilder::new(a.clone());
            // As every other replay optimizer: a NaN/Inf gradient (or Hessian sample) skips its step.
            b.guard_non_finite(true);
            let id = b.param("param", &data, case.param.shape(), b.default_group())?;
            (
                id,
                match ctx {
                    Some(ctx) => Box::new(b.build(ctx)?),
                    None => Box::new(b.build_cpu()?),
                },
            )
        }
        CaseOptimizer::Reg(c) => {
            let mut b = RegBuilder::new(c.clone());
            let id = b.param("param", &data, case.param.shape())?;
            (
                id,
                match ctx {
                    Some(ctx) => Box::new(b.build(ctx)?),
                    None => Box::new(b.build_cpu()?),
                },
            )
        }
        CaseOptimizer::Auon(c, hybrid) => {
            let mut b = AuonBuilder::new(c.clone(), *hybrid);
            let id = b.param("param", &data, case.param.shape())?;
            (
                id,
                match ctx {
                    Some(ctx) => Box::new(b.build(ctx)?),
                    None => Box::new(b.build_cpu()?),
                },
            )
        }
        CaseOptimizer::Flat(a) => {
            let params = [("param".to_string(), data.clone(), case.param.shape().to_vec())];
            (
                crate::optim::ParamId(0),
                match ctx {
                    Some(ctx) => Box::new(FlatOptimizer::new(ctx, a.clone(), &params)?),
                    None => Box::new(FlatOptimizer::cpu(a.clone(), &params)?),
                },
            )
        }
        CaseOptimizer::Asgo(c) => {
            fn boxed<O: MatOps + 'static>(
                mut o: Asgo<O>,
                data: &[f32],
                shape: &[usize],
            ) -> Result<(ParamId, Box<dyn Stepper>)> {
                Ok((o.add_param("param", data, shape)?, Box::new(o)))
            }
            match ctx {
                Some(ctx) => boxed(Asgo::gpu(ctx, c.clone())?, &data, case.param.shape())?,
                None => boxed(Asgo::cpu(c.clone())?, &data, case.param.shape())?,
            }
        }
        CaseOptimizer::Dasgo(c) => {
            let mut o = match ctx {
                Some(ctx) => Dasgo::gpu(ctx, c.clone())?,
                None => Dasgo::cpu(c.clone())?,
            };
            (o.add_param("param", &data, case.param.shape())?, Box::new(o))
        }
        CaseOptimizer::Muon(c) => {
            let mut b = MuonBuilder::new(c.clone());
            let id = b.param("param", &data, case.param.shape())?;
            (
                id,
                match ctx {
                    Some(ctx) => Box::new(b.build(ctx)?),
                    None => Box::new(b.build_cpu()?),
                },
            )
        }
    };
    let mut traj = trajectory(case);
    for t in 0..case.steps {
        let g: Vec<f32> = case.grads.index_axis(Axis(0), t).iter().copied().collect();
        opt.write_grad(id, &g)?;
        if let Some(h) = &case.hess {
            let d: Vec<f32> = h.index_axis(Axis(0), t).iter().copied().collect();
            opt.write_hess_diag(id, &d)?;
        }
        if let Some(l) = &case.losses {
            opt.write_loss(l[t])?;
        }
        opt.step()?;
        let p = opt.read_param(id)?;
        traj.index_axis_mut(Axis(0), t).iter_mut().zip(p).for_each(|(d, s)| *d = s);
    }
    Ok(traj)
}

/// A zero trajectory, [T, *S].
fn trajectory(case: &Case) -> ArrayD<f32> {
    let shape: Vec<usize> = std::iter::once(case.steps).chain(case.param.shape().iter().copied()).collect();
    ArrayD::zeros(IxDyn(&shape))
}

/// `gpuopt replay`: load and validate the case, then open the backend (`backend()` returns the GPU
/// context, or `None` for the CPU reference), run, and write `outputs.npz` atomically.
///
/// ```
/// use ndarray_npy::{NpzReader, NpzWriter};
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("case.json"), r#"{"optimizer": "sgd", "hyper": {"lr": 0.5}}"#).unwrap();
/// let mut w = NpzWriter::new(std::fs::File::create(dir.path().join("inputs.npz")).unwrap());
/// w.add_array("param", &ndarray::arr1(&[1.0f32, 2.0])).unwrap();
/// w.add_array("grads", &ndarray::arr2(&[[1.0f32, 1.0], [2.0, 0.0]])).unwrap();
/// w.finish().unwrap();
/// gpuopt::replay::run_case(dir.path(), || Ok(None))?; // None: the CPU reference; Some(ctx): the GPU
/// let mut r = NpzReader::new(std::fs::File::open(dir.path().join("outputs.npz")).unwrap()).unwrap();
/// let p: ndarray::ArrayD<f32> = r.by_name("param").unwrap();
/// assert_eq!(p.as_slice().unwrap(), &[-0.5, 1.5]);
/// # Ok::<(), gpuopt::Error>(())
/// ```
pub fn run_case(dir: &Path, backend: impl FnOnce() -> Result<Option<Context>>) -> Result<()> {
    let out = clear_output(dir)?;
    let case = load_case(dir)?;
    let ctx = backend()?;
    let traj = run(&case, ctx.as_ref())?;
    let last = if case.steps == 0 { case.param.clone() } else { traj.index_axis(Axis(0), case.steps - 1).to_owned() };
    write_outputs(&out, &[("param", &last), ("trajectory", &traj)])
}
