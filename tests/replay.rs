//! `gpuopt replay`'s NaN/Inf policy, the same for every optimizer on both backends: a step whose
//! gradient (or Hessian sample, or SANIA's loss) holds NaN or Inf leaves the parameter as it was and is
//! not counted, so the rest of the trajectory equals the replay without that step, bit for bit.

mod common;

use gpuopt::optim::algorithm::NAMES;
use gpuopt::parity::TestRng;
use gpuopt::replay::{run_case, FLAT_NAMES, MATRIX_NAMES};
use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter};
use std::path::Path;

const SHAPE: [usize; 2] = [3, 5];

/// The case's hyperparameters: the defaults, except OASIS's required two.
fn hyper(name: &str) -> &'static str {
    match name {
        "oasis" => r#"{"beta2": 0.9, "hess_floor": 0.01}"#,
        _ => "{}",
    }
}

/// Writes a case and replays it; returns the trajectory.
fn replay(dir: &Path, name: &str, arrays: &[(&str, &ArrayD<f32>)], gpu: bool) -> ArrayD<f32> {
    let json = format!(r#"{{"optimizer": "{name}", "hyper": {}}}"#, hyper(name));
    std::fs::write(dir.join("case.json"), json).unwrap();
    let mut w = NpzWriter::new(std::fs::File::create(dir.join("inputs.npz")).unwrap());
    for (k, a) in arrays {
        w.add_array(*k, *a).unwrap();
    }
    w.finish().unwrap();
    run_case(dir, || Ok(gpu.then(common::ctx))).unwrap_or_else(|e| panic!("{name} (gpu {gpu}): {e}"));
    let mut r = NpzReader::new(std::fs::File::open(dir.join("outputs.npz")).unwrap()).unwrap();
    r.by_name("trajectory").unwrap()
}

/// `steps` rows of `shape`-sized draws, positive when `positive` (Hessian samples, losses).
fn draws(rng: &mut TestRng, steps: usize, shape: &[usize], positive: bool) -> ArrayD<f32> {
    let dims: Vec<usize> = std::iter::once(steps).chain(shape.iter().copied()).collect();
    let n: usize = dims.iter().product();
    let v: Vec<f32> = rng.uniforms(n, 1.0).into_iter().map(|x| if positive { x.abs() + 0.5 } else { x }).collect();
    ArrayD::from_shape_vec(IxDyn(&dims), v).unwrap()
}

/// Row `t` of `a` removed.
fn without(a: &ArrayD<f32>, t: usize) -> ArrayD<f32> {
    let keep: Vec<usize> = (0..a.shape()[0]).filter(|&i| i != t).collect();
    a.select(Axis(0), &keep)
}

fn bits(a: ndarray::ArrayViewD<'_, f32>) -> Vec<u32> {
    a.iter().map(|x| x.to_bits()).collect()
}

/// For each optimizer and each input it reads, a NaN or an Inf at step 2 of 4 skips that step.
fn check(gpu: bool) {
    let dir = tempfile::tempdir().unwrap();
    let names = NAMES.iter().chain(MATRIX_NAMES).chain(FLAT_NAMES);
    for &name in names {
        let mut rng = TestRng::new(7);
        let param = draws(&mut rng, 1, &SHAPE, false).index_axis(Axis(0), 0).to_owned();
        let grads = draws(&mut rng, 4, &SHAPE, false);
        let hess = draws(&mut rng, 4, &SHAPE, true);
        let losses = draws(&mut rng, 4, &[], true);
        let needs_hess = matches!(name, "adahessian" | "sophia" | "oasis");
        let mut inputs = vec![("grads", grads)];
        if needs_hess {
            inputs.push(("hess_diag", hess));
        }
        if name == "sania" {
            inputs.push(("losses", losses));
        }
        for poisoned in 0..inputs.len() {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut with_bad = inputs.clone();
                let mut row = with_bad[poisoned].1.index_axis_mut(Axis(0), 1);
                let k = 2.min(row.len() - 1);
                row.as_slice_mut().unwrap()[k] = bad;
                let clean: Vec<(&str, ArrayD<f32>)> = inputs.iter().map(|(k, a)| (*k, without(a, 1))).collect();
                let run = |arrays: &[(&str, ArrayD<f32>)]| {
                    let mut all: Vec<(&str, &ArrayD<f32>)> = vec![("param", &param)];
                    all.extend(arrays.iter().map(|(k, a)| (*k, a)));
                    replay(dir.path(), name, &all, gpu)
                };
                let (got, want) = (run(&with_bad), run(&clean));
                let what = format!("{name}: {bad} in {} at step 2 (gpu {gpu})", with_bad[poisoned].0);
                assert_eq!(bits(got.index_axis(Axis(0), 1)), bits(got.index_axis(Axis(0), 0)), "{what}: step 2 moved");
                for t in 1..3 {
                    let (g, w) = (got.index_axis(Axis(0), t + 1), want.index_axis(Axis(0), t));
                    assert_eq!(bits(g), bits(w), "{what}: step {} differs from the replay without it", t + 2);
                }
                assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite output");
            }
        }
    }
}

#[test]
fn a_non_finite_input_skips_its_step_on_the_cpu() {
    check(false);
}

#[test]
fn a_non_finite_input_skips_its_step_on_the_gpu() {
    check(true);
}
