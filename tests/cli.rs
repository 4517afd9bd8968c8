//! The `gpuopt` command line: replay (good and bad cases), info, parity, bench.

mod common;

use common::gpuopt;
use ndarray::{Array, ArrayD, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter};
use std::path::Path;
use std::process::Command;

fn write_case(dir: &Path, json: &str, param: &ArrayD<f32>, grads: &ArrayD<f32>) {
    std::fs::write(dir.join("case.json"), json).unwrap();
    let mut w = NpzWriter::new(std::fs::File::create(dir.join("inputs.npz")).unwrap());
    w.add_array("param", param).unwrap();
    w.add_array("grads", grads).unwrap();
    // Hessian-diagonal optimizers read it; the others ignore it.
    w.add_array("hess_diag", &grads.mapv(|g| 0.5 * g + 0.1)).unwrap();
    // SANIA reads the loss of each step; the others ignore it.
    let steps = grads.shape()[0];
    w.add_array("losses", &Array::from_shape_fn(IxDyn(&[steps]), |i| 0.3 + 0.01 * i[0] as f32)).unwrap();
    w.finish().unwrap();
}

fn read_out(dir: &Path) -> (ArrayD<f32>, ArrayD<f32>) {
    let mut r = NpzReader::new(std::fs::File::open(dir.join("outputs.npz")).unwrap()).unwrap();
    (r.by_name("param").unwrap(), r.by_name("trajectory").unwrap())
}

/// Replays the case in `dir` on the GPU, then on the CPU reference (each must succeed; `what` names
/// the case in a failure); their trajectories, in that order.
fn replay_both(dir: &Path, what: &str) -> [ArrayD<f32>; 2] {
    ["gpu", "cpu"].map(|backend| {
        let out = gpuopt(&["replay", dir.to_str().unwrap(), "--backend", backend]);
        assert!(out.status.success(), "{what} {backend}: {}", String::from_utf8_lossy(&out.stderr));
        read_out(dir).1
    })
}

/// The largest elementwise difference of two arrays of one shape.
fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    (a - b).mapv(|v| v.abs()).fold(0.0f32, |m, &v| m.max(v))
}

fn data(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = gpuopt::parity::TestRng::new(seed);
    let n = shape.iter().product();
    Array::from_shape_vec(IxDyn(shape), rng.uniforms(n, 1.0)).unwrap()
}

#[test]
fn replay_sgd_trajectory_is_the_running_sum_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, g) = (data(&[3, 4], 1), data(&[5, 3, 4], 2));
    write_case(dir.path(), r#"{"optimizer": "sgd", "steps": 5, "hyper": {"lr": 0.1}, "note": "ignored"}"#, &p0, &g);
    for backend in ["gpu", "cpu"] {
        let out = gpuopt(&["replay", dir.path().to_str().unwrap(), "--backend", backend]);
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let (param, traj) = read_out(dir.path());
        assert_eq!(traj.shape(), &[5, 3, 4]);
        let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        for t in 0..5 {
            for (pi, gi) in p.iter_mut().zip(g.index_axis(ndarray::Axis(0), t).iter()) {
                *pi -= 0.1 * *gi as f64;
            }
            for (a, b) in traj.index_axis(ndarray::Axis(0), t).iter().zip(&p) {
                assert!((*a as f64 - b).abs() < 1e-6, "{backend} step {t}: {a} vs {b}");
            }
        }
        assert_eq!(param, traj.index_axis(ndarray::Axis(0), 4).to_owned());
    }
}

#[test]
fn replay_gpu_and_cpu_agree_for_every_optimizer_with_defaults() {
    for name in gpuopt::optim::algorithm::NAMES {
        let dir = tempfile::tempdir().unwrap();
        write_case(
            dir.path(),
            &format!(r#"{{"optimizer": "{name}", "steps": 12}}"#),
            &data(&[37], 3),
            &data(&[12, 37], 4),
        );
        let results = replay_both(dir.path(), name);
        for (a, b) in results[0].iter().zip(results[1].iter()) {
            assert!((a - b).abs() <= gpuopt::parity::tolerance(12, *b, 0.1), "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn replay_bad_cases_fail_with_one_line_and_no_output() {
    let p = data(&[4], 5);
    let g = data(&[3, 4], 6);
    type MakeCase<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, MakeCase)> = vec![
        (
            "missing inputs",
            Box::new(|d: &Path| std::fs::write(d.join("case.json"), r#"{"optimizer": "adamw"}"#).unwrap()),
        ),
        (
            "wrong grad shape",
            Box::new(|d: &Path| write_case(d, r#"{"optimizer": "adamw"}"#, &data(&[4], 1), &data(&[3, 5], 1))),
        ),
        ("unknown optimizer", Box::new(|d: &Path| write_case(d, r#"{"optimizer": "adamx"}"#, &p, &g))),
        (
            "NaN hyperparameter",
            Box::new(|d: &Path| write_case(d, r#"{"optimizer": "lion", "hyper": {"lr": NaN}}"#, &p, &g)),
        ),
        (
            "beta out of range",
            Box::new(|d: &Path| write_case(d, r#"{"optimizer": "lion", "hyper": {"beta1": 1.0}}"#, &p, &g)),
        ),
        ("too many steps", Box::new(|d: &Path| write_case(d, r#"{"optimizer": "lion", "steps": 9}"#, &p, &g))),
        (
            "3-D param",
            Box::new(|d: &Path| {
                write_case(d, r#"{"optimizer": "lion"}"#, &data(&[2, 2, 1], 1), &data(&[3, 2, 2, 1], 1))
            }),
        ),
        ("no case.json", Box::new(|_: &Path| {})),
    ];
    for (what, make) in cases {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path());
        std::fs::write(dir.path().join("outputs.npz"), b"stale").unwrap();
        let out = gpuopt(&["replay", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: one line, got {stderr:?}");
        assert!(stderr.starts_with("gpuopt: "), "{what}: {stderr}");
        assert!(!dir.path().join("outputs.npz").exists(), "{what}: no outputs.npz");
    }
}

#[test]
fn info_names_the_adapter_and_limits() {
    let out = gpuopt(&["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("adapter:") && s.contains("max_storage_buffer_binding_size"), "{s}");
}

#[test]
fn parity_command_passes_and_prints_a_table() {
    let out = gpuopt(&["parity", "--steps", "3", "--only", "lion"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("PASS") && !s.contains("FAIL"), "{s}");
}

#[test]
fn parity_command_covers_the_matrix_family() {
    // The whole matrix table (the elementwise table's names match none of these filters): every
    // kernel and optimizer of the family listed, each PASS.
    let out = gpuopt(&["parity", "--steps", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(!s.contains("FAIL"), "{s}");
    let passing = |name: &str| s.lines().filter(|l| l.starts_with(name) && l.ends_with("PASS")).count();
    assert_eq!(passing("gemm "), 7, "{s}");
    assert_eq!(passing("gemm gram "), 1, "{s}");
    assert_eq!(passing("newton_schulz5 "), 3, "{s}");
    for name in ["sqrt ", "inv_sqrt ", "inv_root ", "muon ", "auon ", "hybrid_auon ", "reg ", "asgo ", "dasgo "] {
        assert!(passing(name) >= 1, "{name}: {s}");
    }
    let only = gpuopt(&["parity", "--steps", "2", "--only", "dasgo"]);
    let s = String::from_utf8_lossy(&only.stdout);
    assert!(only.status.success() && s.lines().filter(|l| l.ends_with("PASS")).count() == 1, "{s}");
    let none = gpuopt(&["parity", "--only", "no-such-kernel"]);
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("no-such-kernel"));
}

#[test]
fn bench_json_records_have_the_documented_fields() {
    let out = gpuopt(&["bench", "--suite", "elementwise", "--json", "--quick"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = v.as_array().unwrap();
    let extra = ["lion_k_tanh", "lion_k_l2", "distributed_lion_mavo/4", "distributed_lion_avg/4"];
    for name in gpuopt::optim::algorithm::NAMES.iter().chain(&extra) {
        let r = records.iter().find(|r| r["kernel"] == *name).unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(r["baseline"], "copy");
        for key in ["suite", "shape", "median_s", "gbps", "baseline_median_s", "ratio"] {
            assert!(!r[key].is_null(), "{name}: {key}");
        }
        assert!(r["ratio"].as_f64().unwrap() > 0.0);
    }
    let multi = records.iter().find(|r| r["kernel"] == "multi_tensor_adamw").unwrap();
    assert_eq!(multi["baseline"], "flat_adamw");
    assert_eq!(multi["tensors"], 148);
    let bad = gpuopt(&["bench", "--suite", "nope"]);
    assert!(!bad.status.success());
}

#[test]
fn ns_bench_pairs_each_shape_with_its_baseline() {
    let out = gpuopt(&["bench", "--suite", "ns", "--json", "--quick"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = v.as_array().unwrap();
    for (kernel, baseline) in [("newton_schulz5", "15x_gemm"), ("gram_half", "gemm_full_xxt")] {
        let plain: Vec<_> = records.iter().filter(|r| r["kernel"] == kernel).collect();
        let paired: Vec<_> = records.iter().filter(|r| r["kernel"] == format!("{kernel}/paired")).collect();
        assert!(!plain.is_empty() && plain.len() == paired.len(), "{kernel}: {} vs {}", plain.len(), paired.len());
        for (p, q) in plain.iter().zip(&paired) {
            assert_eq!((&p["baseline"], &q["baseline"]), (&baseline.into(), &baseline.into()));
            // Both records come from one interleaved measurement: the same medians.
            assert_eq!(
                (&p["shape"], &p["median_s"], &p["baseline_median_s"]),
                (&q["shape"], &q["median_s"], &q["baseline_median_s"])
            );
            let (m, b) = (p["median_s"].as_f64().unwrap(), p["baseline_median_s"].as_f64().unwrap());
            assert!((p["ratio"].as_f64().unwrap() - b / m).abs() <= 1e-9 * b / m, "{p}");
            let r = q["ratio"].as_f64().unwrap();
            assert!(r.is_finite() && r > 0.0, "{q}");
            assert!(q["timing"].as_str().unwrap().ends_with("median of paired ratios"), "{q}");
        }
    }
}

/// A batch of symmetric positive definite matrices X·Xᵀ + I from `data`'s values.
fn spd(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n = *shape.last().unwrap();
    let b: usize = shape[..shape.len() - 2].iter().product();
    let x = data(&[b, n, n], seed);
    let x = x.as_slice().unwrap();
    let mut out = vec![0.0f32; b * n * n];
    for z in 0..b {
        for i in 0..n {
            for j in 0..n {
                let s: f32 = (0..n).map(|k| x[z * n * n + i * n + k] * x[z * n * n + j * n + k]).sum();
                out[z * n * n + i * n + j] = s + if i == j { 1.0 } else { 0.0 };
            }
        }
    }
    ArrayD::from_shape_vec(ndarray::IxDyn(shape), out).unwrap()
}

fn write_matfn(dir: &Path, json: &str, a: &ArrayD<f32>) {
    std::fs::write(dir.join("case.json"), json).unwrap();
    let mut w = NpzWriter::new(std::fs::File::create(dir.join("inputs.npz")).unwrap());
    w.add_array("a", a).unwrap();
    w.finish().unwrap();
}

#[test]
fn matfn_runs_on_both_backends_and_agrees() {
    for (json, shape) in [
        (r#"{"function": "newton_schulz5", "steps": 4}"#, vec![3, 20, 12]),
        (r#"{"function": "newton_schulz5"}"#, vec![9, 30]),
        (r#"{"function": "polar", "max_iters": 100}"#, vec![25, 10]),
        (r#"{"function": "sqrt", "method": "newton_schulz", "iters": 12}"#, vec![2, 9, 9]),
        (r#"{"function": "sqrt", "method": "mpa"}"#, vec![9, 9]),
        (r#"{"function": "inv_sqrt", "method": "mtp", "degree": 12}"#, vec![9, 9]),
        (r#"{"function": "inv_sqrt", "method": "newton_schulz", "iters": 30, "tol": 1e-5}"#, vec![3, 5, 5]),
        (r#"{"function": "inv_sqrt", "method": "polar_express", "iters": 12, "eps": 1e-6}"#, vec![2, 7, 7]),
        (r#"{"function": "inv_root", "p": 4, "eps": 1e-4}"#, vec![9, 9]),
        (r#"{"function": "inv_root", "p": 3, "eps": 1e-4}"#, vec![7, 7]),
        (r#"{"function": "inv_root", "p": 2, "eps": 1e-3, "eps_relative": true}"#, vec![2, 6, 6]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let a = if json.contains("sqrt") || json.contains("inv_root") { spd(&shape, 9) } else { data(&shape, 9) };
        write_matfn(dir.path(), json, &a);
        let mut ys = Vec::new();
        for backend in ["gpu", "cpu"] {
            let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", backend]);
            assert!(out.status.success(), "{json} {backend}: {}", String::from_utf8_lossy(&out.stderr));
            let mut r = NpzReader::new(std::fs::File::open(dir.path().join("outputs.npz")).unwrap()).unwrap();
            let y: ArrayD<f32> = r.by_name("y").unwrap();
            assert_eq!(y.shape(), shape.as_slice());
            ys.push(y);
        }
        let diff = (&ys[0] - &ys[1]).mapv(|v| v * v).sum().sqrt() / ys[1].mapv(|v| v * v).sum().sqrt();
        assert!(diff < 1e-4, "{json}: gpu vs cpu relative {diff:e}");
    }
}

#[test]
fn matfn_bad_cases_fail_with_one_line_and_no_output() {
    let cases: Vec<(&str, &str, Vec<usize>)> = vec![
        ("unknown function", r#"{"function": "sqrtm_nope"}"#, vec![3, 3]),
        ("polar of a batch", r#"{"function": "polar"}"#, vec![2, 3, 3]),
        ("1-D input", r#"{"function": "newton_schulz5"}"#, vec![4]),
        ("polar non-convergence", r#"{"function": "polar", "max_iters": 1}"#, vec![6, 4]),
        ("no function", r#"{"steps": 5}"#, vec![3, 3]),
        ("sqrt of a non-symmetric matrix", r#"{"function": "sqrt"}"#, vec![3, 3]),
        ("unknown sqrt method", r#"{"function": "sqrt", "method": "eig"}"#, vec![3, 3]),
        ("polar express for sqrt", r#"{"function": "sqrt", "method": "polar_express"}"#, vec![3, 3]),
        (
            "polar express, 0 iterations",
            r#"{"function": "inv_sqrt", "method": "polar_express", "iters": 0}"#,
            vec![3, 3],
        ),
        ("inv_root without p", r#"{"function": "inv_root"}"#, vec![3, 3]),
        ("inv_root p = 3", r#"{"function": "inv_root", "p": 3}"#, vec![3, 3]),
    ];
    for (what, json, shape) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &data(&shape, 2));
        let out = gpuopt(&["matfn", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr:?}");
        assert!(!dir.path().join("outputs.npz").exists(), "{what}");
    }
}

#[test]
fn replay_muon_on_both_backends_and_rejects_vectors() {
    let dir = tempfile::tempdir().unwrap();
    write_case(
        dir.path(),
        r#"{"optimizer": "muon", "steps": 6, "hyper": {"lr": 0.01, "adjust_lr": "match_rms_adamw"}}"#,
        &data(&[12, 20], 1),
        &data(&[6, 12, 20], 2),
    );
    let results = replay_both(dir.path(), "muon");
    let diff = max_diff(&results[0], &results[1]);
    assert!(diff < 1e-5, "muon gpu vs cpu max difference {diff:e}");
    write_case(dir.path(), r#"{"optimizer": "muon"}"#, &data(&[12], 1), &data(&[2, 12], 2));
    let out = gpuopt(&["replay", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2-D"));
}

#[test]
fn replay_auon_hybrid_reg_asgo_and_dasgo_on_both_backends() {
    for (name, shape) in [
        ("auon", vec![30]),
        ("auon", vec![8, 6]),
        ("hybrid_auon", vec![8, 6]),
        ("reg", vec![8, 6]),
        ("reg", vec![11]),
        ("asgo", vec![8, 6]),
        ("asgo", vec![5, 9]),
        ("dasgo", vec![8, 6]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut gshape = vec![5];
        gshape.extend(&shape);
        write_case(
            dir.path(),
            &format!(r#"{{"optimizer": "{name}", "hyper": {{"lr": 0.05, "variant": "paper"}}}}"#),
            &data(&shape, 3),
            &data(&gshape, 4),
        );
        let results = replay_both(dir.path(), name);
        let diff = max_diff(&results[0], &results[1]);
        assert!(diff < 1e-5, "{name} {shape:?}: gpu vs cpu max difference {diff:e}");
    }
}

#[test]
fn hutchinson_command_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let a = Array::from_shape_vec(IxDyn(&[2, 2]), vec![2.0f32, 1.0, 1.0, 3.0]).unwrap();
    write_matfn(dir.path(), r#"{"samples": 3, "seed": 7}"#, &a);
    for backend in ["gpu", "cpu"] {
        let out = gpuopt(&["hutchinson", dir.path().to_str().unwrap(), "--backend", backend]);
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let mut r = NpzReader::new(std::fs::File::open(dir.path().join("outputs.npz")).unwrap()).unwrap();
        let d: ArrayD<f32> = r.by_name("diag").unwrap();
        assert!((d[[0]] - 5.0 / 3.0).abs() < 1e-6 && (d[[1]] - 8.0 / 3.0).abs() < 1e-6, "{backend}: {d}");
    }
    let asym = Array::from_shape_vec(IxDyn(&[2, 2]), vec![2.0f32, 1.0, 0.0, 3.0]).unwrap();
    write_matfn(dir.path(), r#"{"samples": 3}"#, &asym);
    let out = gpuopt(&["hutchinson", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end().lines().count(), 1);
    assert!(!dir.path().join("outputs.npz").exists());
}

#[test]
fn replay_hessian_optimizers_need_hess_diag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), r#"{"optimizer": "sophia"}"#).unwrap();
    let mut w = NpzWriter::new(std::fs::File::create(dir.path().join("inputs.npz")).unwrap());
    w.add_array("param", &data(&[5], 1)).unwrap();
    w.add_array("grads", &data(&[2, 5], 2)).unwrap();
    w.finish().unwrap();
    let out = gpuopt(&["replay", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hess_diag"));
    assert!(!dir.path().join("outputs.npz").exists());
}

#[test]
fn replay_oasis_and_sania_on_both_backends_and_need_their_inputs() {
    for (json, shape) in [
        (r#"{"optimizer": "oasis", "hyper": {"lr": 0.05, "beta2": 0.9, "hess_floor": 0.01}}"#, vec![9, 7]),
        (r#"{"optimizer": "sania", "hyper": {"eps": 0.1}}"#, vec![13]),
        (r#"{"optimizer": "sania", "hyper": {"variant": "psps", "preconditioner": "adagrad_sqr"}}"#, vec![4, 4]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut gshape = vec![6];
        gshape.extend(&shape);
        write_case(dir.path(), json, &data(&shape, 3), &data(&gshape, 4));
        let results = replay_both(dir.path(), json);
        let diff = max_diff(&results[0], &results[1]);
        assert!(diff < 1e-4, "{json}: gpu vs cpu max difference {diff:e}");
        assert!(results[0].iter().all(|v| v.is_finite()));
    }
    // OASIS without its required beta2 / hess_floor, SANIA without losses, OASIS without hess_diag.
    for (json, arrays) in [
        (r#"{"optimizer": "oasis", "hyper": {"lr": 0.1}}"#, vec!["param", "grads", "hess_diag"]),
        (r#"{"optimizer": "sania"}"#, vec!["param", "grads"]),
        (r#"{"optimizer": "oasis", "hyper": {"beta2": 0.9, "hess_floor": 0.1}}"#, vec!["param", "grads"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("case.json"), json).unwrap();
        let mut w = NpzWriter::new(std::fs::File::create(dir.path().join("inputs.npz")).unwrap());
        for name in arrays {
            let a = match name {
                "param" => data(&[5], 1),
                _ => data(&[2, 5], 2),
            };
            w.add_array(name, &a).unwrap();
        }
        w.finish().unwrap();
        let out = gpuopt(&["replay", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{json}: should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{json}: {stderr:?}");
        assert!(!dir.path().join("outputs.npz").exists());
    }
}

/// Runs `gpuopt COMMAND DIR [--backend B]` on a case folder holding a stale outputs.npz and checks the
/// failure: a non-zero exit (not an abort), one "gpuopt: " line on stderr that says "invalid argument"
/// at most once and contains every one of `needles`, and no outputs.npz.
fn fails_in_one_line(what: &str, dir: &Path, command: &str, backend: Option<&str>, needles: &[&str]) -> String {
    std::fs::write(dir.join("outputs.npz"), b"stale").unwrap();
    let mut args = vec![command, dir.to_str().unwrap()];
    if let Some(b) = backend {
        args.extend(["--backend", b]);
    }
    let out = gpuopt(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: exit status {:?}, stderr {stderr:?}", out.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: one line, got {stderr:?}");
    assert!(stderr.starts_with("gpuopt: "), "{what}: {stderr:?}");
    assert!(stderr.matches("invalid argument").count() <= 1, "{what}: a repeated prefix in {stderr:?}");
    for needle in needles {
        assert!(stderr.contains(needle), "{what}: {needle:?} not in {stderr:?}");
    }
    assert!(!dir.join("outputs.npz").exists(), "{what}: no outputs.npz");
    stderr.into_owned()
}

#[test]
fn matfn_and_hutchinson_refuse_resource_blowups_naming_key_and_range() {
    // Each of these used to abort (an 8 TB Padé system, 1e9 Taylor terms, 1e12 probes) or run for
    // minutes; now it is one line naming the key, the value and the range, before any work.
    let a = spd(&[9, 9], 3);
    for (json, needles) in [
        (r#"{"function": "sqrt", "method": "mpa", "degree": 1000000}"#, [r#""degree" = 1000000"#, "from 1 to 8"]),
        (r#"{"function": "inv_sqrt", "method": "mpa", "degree": 1000000}"#, [r#""degree" = 1000000"#, "from 1 to 8"]),
        (r#"{"function": "sqrt", "method": "mtp", "degree": 1000000000}"#, [r#""degree" = 1000000000"#, "1 to 10000"]),
        (
            r#"{"function": "sqrt", "method": "newton_schulz", "iters": 1000000000}"#,
            [r#""iters" = 1000000000"#, "1 to 1000"],
        ),
        (
            r#"{"function": "inv_root", "p": 2, "max_iters": 1000000000000}"#,
            [r#""max_iters" = 1000000000000"#, "1 to 1000"],
        ),
        (
            r#"{"function": "polar", "max_iters": 18446744073709551615}"#,
            [r#""max_iters" = 18446744073709551615"#, "1 to 1000"],
        ),
        (r#"{"function": "sqrt", "method": "mtp", "degree": 1e9}"#, [r#""degree" = 1000000000.0"#, "1 to 10000"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &a);
        fails_in_one_line(json, dir.path(), "matfn", Some("cpu"), &needles);
    }
    // The ends of the ranges run (cheaply at n = 9 on the CPU).
    for json in [
        r#"{"function": "sqrt", "method": "mpa", "degree": 8}"#,
        r#"{"function": "inv_sqrt", "method": "mtp", "degree": 10000}"#,
        r#"{"function": "sqrt", "method": "newton_schulz", "iters": 1000}"#,
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &a);
        let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", "cpu"]);
        assert!(out.status.success(), "{json}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Hutchinson: 1e12 samples (an abort on the CPU, "at least 1" on the GPU), 2^32 on the GPU, and a
    // count inside the range whose probes would not fit in memory.
    let sym = Array::from_shape_vec(IxDyn(&[2, 2]), vec![2.0f32, 1.0, 1.0, 3.0]).unwrap();
    for (json, backend, needles) in [
        (r#"{"samples": 1000000000000}"#, "cpu", [r#""samples" = 1000000000000"#, "from 1 to 1048576"]),
        (r#"{"samples": 1000000000000}"#, "gpu", [r#""samples" = 1000000000000"#, "from 1 to 1048576"]),
        (r#"{"samples": 4294967296}"#, "gpu", [r#""samples" = 4294967296"#, "from 1 to 1048576"]),
        (r#"{"samples": 0}"#, "cpu", [r#""samples" = 0"#, "from 1 to 1048576"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &sym);
        fails_in_one_line(json, dir.path(), "hutchinson", Some(backend), &needles);
    }
    let dir = tempfile::tempdir().unwrap();
    write_matfn(dir.path(), r#"{"samples": 1048576}"#, &Array::zeros(IxDyn(&[300, 300])));
    fails_in_one_line(
        "probes over 2^28",
        dir.path(),
        "hutchinson",
        Some("cpu"),
        &[r#""samples" = 1048576"#, "n = 300"],
    );
}

#[test]
fn matfn_mpa_degrees_past_the_f32_range_are_refused_not_reported_as_a_non_spd_input() {
    // Degrees 50 and 100 used to fail in the solve with "not positive definite ... (input not SPD?)"
    // on an input the host had checked SPD (and 12–45 returned garbage with exit 0).
    for degree in [9, 12, 50, 100] {
        for function in ["sqrt", "inv_sqrt"] {
            let dir = tempfile::tempdir().unwrap();
            let json = format!(r#"{{"function": "{function}", "method": "mpa", "degree": {degree}}}"#);
            write_matfn(dir.path(), &json, &spd(&[9, 9], 9));
            let needle = format!(r#""degree" = {degree}: must be an integer from 1 to 8 for method "mpa""#);
            let stderr = fails_in_one_line(&json, dir.path(), "matfn", Some("cpu"), &[&needle]);
            assert!(!stderr.contains("SPD") && !stderr.contains("positive definite"), "{json}: {stderr}");
        }
    }
}

#[test]
fn matfn_polar_of_a_rank_deficient_matrix_warns_on_both_backends() {
    // Rank 1: Newton–Schulz converges to a partial isometry (|YᵀY − I|_F/√3 = 0.82), which ALGORITHMS.md
    // §5.4 defines as the result; the polar factor is not unique, so the result comes with a warning.
    let square = Array::from_shape_vec(IxDyn(&[3, 3]), vec![1.0f32, 2.0, 3.0, 2.0, 4.0, 6.0, 1.0, 2.0, 3.0]).unwrap();
    // Tall and wide, rank 2 of 3: the third column is the sum of the first two.
    let tall = Array::from_shape_fn(IxDyn(&[5, 3]), |i| {
        let (x, y) = (i[0] as f32 + 1.0, (i[0] as f32 - 2.0) * (i[0] as f32 - 2.0) - 1.0);
        [x, y, x + y][i[1]]
    });
    let wide = tall.t().to_owned();
    for (what, a) in [("3x3 rank 1", &square), ("5x3 rank 2", &tall), ("3x5 rank 2", &wide)] {
        for backend in ["cpu", "gpu"] {
            let dir = tempfile::tempdir().unwrap();
            write_matfn(dir.path(), r#"{"function": "polar"}"#, a);
            let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", backend]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{what} {backend}: {stderr}");
            assert!(stderr.contains("not orthonormal") && stderr.contains("partial isometry"), "{what}: {stderr}");
            assert!(dir.path().join("outputs.npz").exists(), "{what} {backend}");
        }
    }
    // A full-rank matrix of the same size still passes, its factor orthonormal.
    let dir = tempfile::tempdir().unwrap();
    let mut full = square.clone();
    full[[1, 1]] = 5.0;
    full[[2, 0]] = -1.0;
    write_matfn(dir.path(), r#"{"function": "polar"}"#, &full);
    let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("not orthonormal"), "{stderr}");
}

/// Inputs at the edges of f32 (found by an audit): each is refused in one line saying why, on both
/// backends, where a subnormal matrix used to give `y` = NaN with exit status 0.
#[test]
fn matfn_inputs_at_the_edges_of_f32_are_refused_saying_why() {
    let diag = |v: f32, n: usize| Array::from_shape_fn(IxDyn(&[n, n]), |i| if i[0] == i[1] { v } else { 0.0 });
    let cases: Vec<(&str, ArrayD<f32>, Vec<&str>)> = vec![
        (r#"{"function": "sqrt"}"#, diag(1e-40, 2), vec!["below what f32 can divide by"]),
        (r#"{"function": "inv_sqrt", "method": "mtp"}"#, diag(1e-40, 2), vec!["below what f32 can divide by"]),
        (r#"{"function": "sqrt"}"#, diag(3e38, 2), vec!["overflows f32"]),
        // The polar iteration's X/‖X‖_F: an overflowing norm made X zero and "converged" to Q = 0.
        (r#"{"function": "polar"}"#, diag(3e38, 2), vec!["Frobenius norm", "normal range"]),
        (r#"{"function": "polar"}"#, diag(1e-40, 2), vec!["Frobenius norm", "normal range"]),
        (
            r#"{"function": "inv_root", "p": 4, "eps_relative": true}"#,
            diag(0.0, 3),
            vec!["relative ridge", "absolute eps"],
        ),
        (r#"{"function": "newton_schulz5"}"#, Array::zeros(IxDyn(&[4])), vec!["[m, n] or [b, m, n]", "[4]"]),
        (r#"{"function": "newton_schulz5"}"#, Array::zeros(IxDyn(&[1, 2, 2, 2])), vec!["[m, n] or [b, m, n]"]),
    ];
    for (json, a, needles) in &cases {
        for backend in ["cpu", "gpu"] {
            let dir = tempfile::tempdir().unwrap();
            write_matfn(dir.path(), json, a);
            fails_in_one_line(&format!("{json} {backend}"), dir.path(), "matfn", Some(backend), needles);
        }
    }
}

/// inv_root's result is written when its final max|M - I| is within the 0.1 failure threshold; past
/// the tol asked for (here one f32 cannot reach), with a warning saying so.
#[test]
fn matfn_inv_root_warns_when_it_stops_short_of_tol() {
    let a = Array::from_shape_fn(IxDyn(&[3, 3]), |i| if i[0] == i[1] { [4.0, 9.0, 2.0][i[0]] } else { 0.0 });
    for (json, warned) in
        [(r#"{"function": "inv_root", "p": 2, "tol": 1e-12}"#, true), (r#"{"function": "inv_root", "p": 2}"#, false)]
    {
        for backend in ["cpu", "gpu"] {
            let dir = tempfile::tempdir().unwrap();
            write_matfn(dir.path(), json, &a);
            let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", backend]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{json} {backend}: {stderr}");
            assert_eq!(stderr.contains("above tol"), warned, "{json} {backend}: {stderr}");
            assert!(dir.path().join("outputs.npz").exists());
        }
    }
}

/// Found by an audit of `hutchinson`: a finite matrix whose products overflow wrote Inf with exit 0; a
/// case.json that is not an object ran with the defaults; an empty matrix wrote an empty estimate.
#[test]
fn hutchinson_refuses_overflow_non_object_cases_and_empty_matrices() {
    let big = Array::from_elem(IxDyn(&[2, 2]), 3e38f32);
    let ok = Array::from_shape_fn(IxDyn(&[2, 2]), |i| if i[0] == i[1] { 2.0 } else { 0.0 });
    let cases: Vec<(&str, ArrayD<f32>, Vec<&str>)> = vec![
        (r#"{"samples": 2}"#, big, vec!["overflows f32"]),
        ("[3, 7]", ok.clone(), vec!["case.json", "JSON object", "an array"]),
        ("5", ok, vec!["JSON object", "a number"]),
        (r#"{"samples": 2}"#, Array::zeros(IxDyn(&[0, 0])), vec!["n >= 1", "[0, 0]"]),
    ];
    for (json, a, needles) in &cases {
        for backend in ["cpu", "gpu"] {
            let dir = tempfile::tempdir().unwrap();
            write_matfn(dir.path(), json, a);
            fails_in_one_line(&format!("{json} {backend}"), dir.path(), "hutchinson", Some(backend), needles);
        }
    }
    // matfn and replay read case.json the same way.
    let dir = tempfile::tempdir().unwrap();
    write_matfn(dir.path(), "[1]", &Array::zeros(IxDyn(&[2, 2])));
    fails_in_one_line("matfn [1]", dir.path(), "matfn", Some("cpu"), &["JSON object"]);
}

/// A key the function does not read is ignored, as in replay cases, but named in a warning.
#[test]
fn matfn_and_hutchinson_warn_about_keys_they_do_not_read() {
    let spd_diag = Array::from_shape_fn(IxDyn(&[2, 2]), |i| if i[0] == i[1] { 4.0 } else { 0.0 });
    for (json, key) in [
        (r#"{"function": "sqrt", "iter": 50}"#, "\"iter\""),
        (r#"{"function": "sqrt", "method": "mtp", "iters": 50}"#, "\"iters\""),
        (r#"{"function": "newton_schulz5", "max_iters": 3}"#, "\"max_iters\""),
        (r#"{"samples": 2, "sample": 5}"#, "\"sample\""),
        (r#"{"samples": 2, "function": "sqrt"}"#, "\"function\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &spd_diag);
        let command = if json.contains("samples") { "hutchinson" } else { "matfn" };
        let out = gpuopt(&[command, dir.path().to_str().unwrap(), "--backend", "cpu"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{json}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains("ignored"), "{json}: {stderr}");
    }
    // Keys that are read raise nothing.
    let dir = tempfile::tempdir().unwrap();
    write_matfn(dir.path(), r#"{"function": "sqrt", "method": "newton_schulz", "iters": 7, "tol": 1e-6}"#, &spd_diag);
    let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", "cpu"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("ignored"));
}

#[test]
fn matfn_inv_root_says_what_is_wrong_with_the_p_given() {
    let a = spd(&[4, 4], 1);
    for p in ["0", "-2", "33", "64", r#""4""#, "4.0", "null"] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), &format!(r#"{{"function": "inv_root", "p": {p}}}"#), &a);
        let needle = format!(r#""p" = {p}: must be an integer from 1 to 32"#);
        fails_in_one_line(p, dir.path(), "matfn", Some("cpu"), &[&needle]);
    }
    let dir = tempfile::tempdir().unwrap();
    write_matfn(dir.path(), r#"{"function": "inv_root"}"#, &a);
    fails_in_one_line("no p", dir.path(), "matfn", Some("cpu"), &[r#""p" is required"#]);
    for p in [1, 2, 3, 4, 6, 8, 16, 32] {
        write_matfn(dir.path(), &format!(r#"{{"function": "inv_root", "p": {p}, "eps": 1e-4}}"#), &a);
        let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", "cpu"]);
        assert!(out.status.success(), "p = {p}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn matfn_degenerate_settings_are_refused_consistently() {
    let a = spd(&[5, 5], 4);
    for (json, needles) in [
        (r#"{"function": "sqrt", "method": "newton_schulz", "iters": 0}"#, vec![r#""iters" = 0"#, "from 1 to 1000"]),
        (r#"{"function": "inv_sqrt", "method": "newton_schulz", "iters": 0}"#, vec![r#""iters" = 0"#]),
        (r#"{"function": "sqrt", "method": "mtp", "degree": 0}"#, vec![r#""degree" = 0"#, "from 1 to 10000"]),
        (r#"{"function": "sqrt", "method": "mpa", "degree": 0}"#, vec![r#""degree" = 0"#, "from 1 to 8"]),
        (r#"{"function": "polar", "max_iters": 0}"#, vec![r#""max_iters" = 0"#, "from 1 to 1000"]),
        (r#"{"function": "inv_root", "p": 2, "max_iters": 0}"#, vec![r#""max_iters" = 0"#]),
        (r#"{"function": "sqrt", "method": "mtp", "degree": -3}"#, vec![r#""degree" = -3"#]),
        (r#"{"function": "sqrt", "method": "newton_schulz", "iters": 7.5}"#, vec![r#""iters" = 7.5"#]),
        // tol: finite and > 0 for the Newton–Schulz roots and inv_root alike.
        (
            r#"{"function": "sqrt", "method": "newton_schulz", "tol": -1}"#,
            vec![r#""tol" = -1: must be finite and > 0"#],
        ),
        (
            r#"{"function": "inv_sqrt", "method": "newton_schulz", "tol": 0}"#,
            vec![r#""tol" = 0: must be finite and > 0"#],
        ),
        (r#"{"function": "inv_root", "p": 2, "tol": -1}"#, vec![r#""tol" = -1: must be finite and > 0"#]),
        (r#"{"function": "inv_root", "p": 2, "tol": 0.0}"#, vec![r#""tol" = 0.0: must be finite and > 0"#]),
        (r#"{"function": "inv_root", "p": 2, "tol": 1e-60}"#, vec![r#""tol" = 1"#, "e-60: must be finite and > 0"]),
        (r#"{"function": "inv_root", "p": 2, "eps": -1}"#, vec![r#""eps" = -1: must be finite and >= 0"#]),
        (r#"{"function": "sqrt", "method": "newton_schulz", "tol": "small"}"#, vec![r#""tol" = "small""#]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, &a);
        fails_in_one_line(json, dir.path(), "matfn", Some("cpu"), &needles);
    }
}

#[test]
fn matfn_and_hutchinson_errors_say_invalid_argument_once() {
    // "invalid argument: …: invalid argument: matrix 0: invalid argument: …" before.
    let asym = Array::from_shape_vec(IxDyn(&[2, 2]), vec![2.0f32, 1.0, 0.0, 3.0]).unwrap();
    let batch = Array::from_shape_vec(IxDyn(&[2, 2, 2]), vec![2.0f32, 1.0, 1.0, 3.0, 2.0, 1.0, 0.0, 3.0]).unwrap();
    for (json, a, needle) in [
        (r#"{"function": "sqrt"}"#, &asym, "inputs.npz: matrix 0: the matrix is not symmetric at (0, 1)"),
        (r#"{"function": "inv_root", "p": 2}"#, &batch, "inputs.npz: matrix 1: the matrix is not symmetric at (0, 1)"),
        (r#"{"function": "inv_sqrt", "method": "polar_express"}"#, &asym, "matrix 0: the matrix is not symmetric"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_matfn(dir.path(), json, a);
        fails_in_one_line(json, dir.path(), "matfn", Some("cpu"), &["gpuopt: invalid argument: ", needle]);
    }
    let dir = tempfile::tempdir().unwrap();
    write_matfn(dir.path(), r#"{"samples": 2}"#, &asym);
    fails_in_one_line(
        "hutchinson",
        dir.path(),
        "hutchinson",
        Some("cpu"),
        &["inputs.npz: the matrix is not symmetric"],
    );
    write_matfn(dir.path(), r#"{"function": "newton_schulz5"}"#, &Array::zeros(IxDyn(&[2, 2, 2, 2])));
    fails_in_one_line("4-D", dir.path(), "matfn", Some("cpu"), &["inputs.npz: a matrix input is [m, n] or [b, m, n]"]);
}

#[test]
fn help_lists_every_matrix_function() {
    let out = gpuopt(&["--help"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().find(|l| l.trim_start().starts_with("matfn")).unwrap_or_else(|| panic!("{s}"));
    for name in ["newton_schulz5", "polar", "sqrt", "inv_sqrt", "polar_express", "inv_root"] {
        assert!(line.contains(name), "{name} not in {line:?}");
    }
}

/// `ns_coefficients` (ALGORITHMS.md §11.1) reach `matfn newton_schulz5`: the classical cubic
/// (1.5, −0.5, 0) run long enough converges to the orthonormal polar factor, which Muon's quintic
/// (whose band is 0.7–1.2 by design) does not; both backends agree; a bad triple is one line.
#[test]
fn matfn_newton_schulz5_takes_ns_coefficients() {
    let dir = tempfile::tempdir().unwrap();
    // Rows of a 6×10 with singular values well inside (0, √3): I-ish plus a small perturbation.
    let mut a = data(&[6, 10], 12).mapv(|v| 0.1 * v);
    for i in 0..6 {
        a[[i, i]] += 1.0;
    }
    let gram_dev = |y: &ArrayD<f32>| {
        let y = y.view().into_dimensionality::<ndarray::Ix2>().unwrap();
        let g = y.dot(&y.t());
        (&g - &ndarray::Array2::<f32>::eye(6)).mapv(|v| v * v).sum().sqrt()
    };
    let run = |json: &str, backend: &str| {
        write_matfn(dir.path(), json, &a);
        let out = gpuopt(&["matfn", dir.path().to_str().unwrap(), "--backend", backend]);
        assert!(out.status.success(), "{json} {backend}: {}", String::from_utf8_lossy(&out.stderr));
        let mut r = NpzReader::new(std::fs::File::open(dir.path().join("outputs.npz")).unwrap()).unwrap();
        let y: ArrayD<f32> = r.by_name("y").unwrap();
        y
    };
    let cubic = r#"{"function": "newton_schulz5", "steps": 40, "ns_coefficients": [1.5, -0.5, 0.0]}"#;
    let (gpu, cpu) = (run(cubic, "gpu"), run(cubic, "cpu"));
    assert!(gram_dev(&gpu) < 1e-5 && gram_dev(&cpu) < 1e-5, "{} {}", gram_dev(&gpu), gram_dev(&cpu));
    let quintic = run(r#"{"function": "newton_schulz5", "steps": 40}"#, "cpu");
    assert!(gram_dev(&quintic) > 1e-2, "the default quintic is not orthonormal: {}", gram_dev(&quintic));
    for bad in [r#"[1.5, -0.5]"#, r#"[1.5, -0.5, 1e39]"#, r#""cubic""#] {
        write_matfn(dir.path(), &format!(r#"{{"function": "newton_schulz5", "ns_coefficients": {bad}}}"#), &a);
        fails_in_one_line(bad, dir.path(), "matfn", Some("cpu"), &["ns_coefficients"]);
    }
}

/// `parity --steps 0` compared nothing and said PASS; a filter that matches nothing printed the
/// table's header before its error; WGPU_BACKEND naming no backend only logged a warning and then
/// failed for want of an adapter. Each is now one line on stderr and nothing on stdout.
#[test]
fn parity_and_backend_misuse_fail_before_printing() {
    for (args, env, needle) in [
        (vec!["parity", "--steps", "0"], None, "--steps must be at least 1"),
        (vec!["parity", "--only", "zzz"], None, "no kernel's name contains \"zzz\""),
        (vec!["info"], Some("bogus"), "WGPU_BACKEND=\"bogus\""),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuopt"));
        cmd.args(&args).env("NODEVICE_SELECT", "1").env("RUST_LOG", "off");
        if let Some(v) = env {
            cmd.env("WGPU_BACKEND", v);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: printed {stdout:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr:?}");
    }
}

/// A command line clap refuses (`--backend tpu`, a misspelt flag, a missing folder) printed clap's
/// multi-line message and left a stale outputs.npz in the case folder it named. It is now one line
/// on stderr, clap's usage status 2, and no outputs.npz; `--help` still succeeds.
#[test]
fn usage_errors_fail_in_one_line_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), r#"{"function": "polar"}"#).unwrap();
    let case = dir.path().to_str().unwrap();
    for (args, needles) in [
        (vec!["matfn", case, "--backend", "tpu"], vec!["invalid value 'tpu'", "possible values: gpu, cpu"]),
        (vec!["hutchinson", case, "--bakend", "cpu"], vec!["unexpected argument '--bakend'", "--backend"]),
        (vec!["replay", case, "extra"], vec!["unexpected argument 'extra'"]),
        (vec!["matfn"], vec!["<CASE_DIR>"]),
    ] {
        std::fs::write(dir.path().join("outputs.npz"), b"stale").unwrap();
        let out = gpuopt(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.starts_with("gpuopt: "), "{args:?}: {stderr:?}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: {needle:?} not in {stderr:?}");
        }
        // The folder-less line has no case folder to clean; the others must not leave the stale file.
        if args.len() > 1 {
            assert!(!dir.path().join("outputs.npz").exists(), "{args:?}: stale outputs.npz left");
        }
    }
    let help = gpuopt(&["matfn", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("case.json"));
}

/// The roots suite pairs each method with the f64 eigendecomposition (and its error against it),
/// the batched calls with one-by-one calls, and Shampoo's refreshing step with a plain one.
#[test]
fn roots_bench_records_pair_each_kernel_with_its_baseline() {
    let out = gpuopt(&["bench", "--suite", "roots", "--json", "--quick"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = v.as_array().unwrap();
    let find = |name: &str| records.iter().find(|r| r["kernel"] == name).unwrap_or_else(|| panic!("no {name}"));
    let root = find("inv_root_p4");
    assert_eq!(root["baseline"], "f64_eigh_cpu");
    assert!(root["rel_error"].as_f64().unwrap() < 1e-4, "{root}");
    assert_eq!(find("batched_sqrt_newton_schulz5")["baseline"], "one_by_one");
    let shampoo = find("shampoo_step_refresh");
    assert_eq!(shampoo["baseline"], "shampoo_step");
    assert_eq!(shampoo["shape"], serde_json::json!([2, 96, 80]));
    assert!(shampoo["ratio"].as_f64().unwrap() > 0.0 && shampoo["median_s"].as_f64().unwrap() > 0.0);
}

/// `replay shampoo` (hyperparameters under ShampooConfig's names, optax's for its knobs): both
/// backends agree, the CPU replay is the library's CPU driver bit for bit (matrix, vector, a NaN
/// gradient skipped), and a bad setting is one line with no outputs.npz.
#[test]
fn replay_shampoo_on_both_backends_matches_the_library() {
    use gpuopt::optim::{Shampoo, ShampooConfig};
    let json = r#"{"optimizer": "shampoo", "hyper": {"lr": 0.05, "graft": "rmsprop_normalized",
        "block_size": 4, "start_preconditioning_step": 1, "merge_small_dims_block_size": 8}}"#;
    let cfg = ShampooConfig {
        lr: 0.05,
        graft: gpuopt::optim::Graft::RmspropNormalized,
        block_size: 4,
        start_preconditioning_step: 1,
        merge_small_dims_block_size: 8,
        ..Default::default()
    };
    for shape in [vec![6, 5], vec![7]] {
        let dir = tempfile::tempdir().unwrap();
        let mut gshape = vec![6];
        gshape.extend(&shape);
        let mut grads = data(&gshape, 4);
        grads.as_slice_mut().unwrap()[shape.iter().product::<usize>() * 2] = f32::NAN; // step 3 skipped
        let param = data(&shape, 3);
        write_case(dir.path(), json, &param, &grads);
        let results = replay_both(dir.path(), &format!("{shape:?}"));
        let diff = max_diff(&results[0], &results[1]);
        assert!(diff < 1e-4, "{shape:?}: gpu vs cpu max difference {diff:e}");
        let mut lib = Shampoo::new(gpuopt::reference::roots::CpuMats::default(), cfg.clone()).unwrap();
        let id = lib.add_param(param.as_slice().unwrap(), &shape).unwrap();
        for t in 0..6 {
            let g: Vec<f32> = grads.index_axis(ndarray::Axis(0), t).iter().copied().collect();
            lib.step(&[&g]).unwrap();
            let want = lib.read(id).unwrap();
            let got: Vec<f32> = results[1].index_axis(ndarray::Axis(0), t).iter().copied().collect();
            assert_eq!(got, want, "{shape:?} step {}", t + 1);
        }
        assert_eq!(lib.skipped_steps(), 1);
    }
    let dir = tempfile::tempdir().unwrap();
    write_case(
        dir.path(),
        r#"{"optimizer": "shampoo", "hyper": {"block_size": 0}}"#,
        &data(&[3, 2], 1),
        &data(&[2, 3, 2], 2),
    );
    fails_in_one_line("block_size 0", dir.path(), "replay", Some("cpu"), &["block_size"]);
}

/// The stale-output cleanup of a refused command line touches only a case command's CASE_DIR: not a
/// folder named to another command, nor a second folder after the case's.
#[test]
fn a_refused_command_line_cleans_only_its_own_case_folder() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        std::fs::write(d.path().join("case.json"), r#"{"function": "polar"}"#).unwrap();
        std::fs::write(d.path().join("outputs.npz"), b"kept").unwrap();
    }
    let (pa, pb) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    for args in [vec!["parity", "--only", "matfn", pa], vec!["bench", "--suite", "replay", pa]] {
        let out = gpuopt(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(a.path().join("outputs.npz").exists(), "{args:?} removed another command's folder's output");
    }
    let out = gpuopt(&["replay", "--backend", "cpu", pa, pb]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!a.path().join("outputs.npz").exists(), "the case's own stale output goes");
    assert!(b.path().join("outputs.npz").exists(), "a second folder's output stays");
}
