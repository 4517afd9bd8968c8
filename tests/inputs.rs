//! Reading a case folder's inputs: hostile or unusual inputs.npz / case.json files fail with one line
//! on stderr, exit status 1 and no outputs.npz; compressed inputs and a byte-order mark are accepted.

mod common;

use common::gpuopt;
use ndarray::{Array, ArrayD, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter};
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

fn data(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = gpuopt::parity::TestRng::new(seed);
    let n = shape.iter().product();
    Array::from_shape_vec(IxDyn(shape), rng.uniforms(n, 1.0)).unwrap()
}

/// A version 1.0 .npy file: `header_dict` (a Python dict literal) padded as NumPy pads it, then `body`.
fn npy(header_dict: &str, body: &[u8]) -> Vec<u8> {
    let mut header = header_dict.to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A float32 .npy whose header declares `shape` (a Python tuple literal) over `body`.
fn f32_npy(shape: &str, body: &[u8]) -> Vec<u8> {
    npy(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"), body)
}

fn f32_bytes(a: &ArrayD<f32>) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `inputs.npz` from raw .npy entries, each stored or deflated.
fn write_npz(dir: &Path, entries: &[(&str, Vec<u8>)], method: CompressionMethod) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(dir.join("inputs.npz")).unwrap());
    for (name, bytes) in entries {
        z.start_file(format!("{name}.npy"), SimpleFileOptions::default().compression_method(method)).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// Runs `args` + the case folder (with a stale outputs.npz in it) and checks the failure: exit 1, one
/// "gpuopt: " line on stderr containing every one of `needles`, and no outputs.npz.
fn fails_cleanly(what: &str, dir: &Path, command: &str, needles: &[&str]) {
    std::fs::write(dir.join("outputs.npz"), b"stale").unwrap();
    let out = gpuopt(&[command, dir.to_str().unwrap(), "--backend", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: exit status {:?}, stderr {stderr:?}", out.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: one line, got {stderr:?}");
    assert!(stderr.starts_with("gpuopt: "), "{what}: {stderr:?}");
    for needle in needles {
        assert!(stderr.contains(needle), "{what}: {needle:?} not in {stderr:?}");
    }
    assert!(!dir.join("outputs.npz").exists(), "{what}: no outputs.npz");
}

const SGD: &str = r#"{"optimizer": "sgd", "steps": 3, "hyper": {"lr": 0.1}}"#;

#[test]
fn a_header_declaring_more_data_than_the_entry_holds_is_one_line_not_an_abort() {
    let grads = f32_npy("(3, 4)", &f32_bytes(&data(&[3, 4], 2)));
    let huge = f32_npy("(100000, 100000)", &[0u8; 16]);
    // A deflated body of 4 MB of zeros (a few KB packed) under the same 40 GB header: rejected
    // without decompressing, as no deflate stream that short can expand that far.
    let bomb = f32_npy("(100000, 100000)", &vec![0u8; 4 << 20]);
    // Declares 80 000 bytes (within what a short deflate stream could expand to), holds 40: the
    // streamed count finds the shortfall.
    let short = f32_npy("(20000,)", &[0u8; 40]);
    for (what, method, param, shown) in [
        ("stored 40 GB header", CompressionMethod::Stored, &huge, "[100000, 100000]"),
        ("deflated 40 GB header", CompressionMethod::Deflated, &huge, "[100000, 100000]"),
        ("deflated bomb", CompressionMethod::Deflated, &bomb, "compressed bytes"),
        ("deflated short body", CompressionMethod::Deflated, &short, "only 40 bytes"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("case.json"), SGD).unwrap();
        write_npz(dir.path(), &[("param", param.clone()), ("grads", grads.clone())], method);
        fails_cleanly(what, dir.path(), "replay", &["\"param\"", shown]);
        // matfn reads its "a" through the same checks.
        std::fs::write(dir.path().join("case.json"), r#"{"function": "newton_schulz5"}"#).unwrap();
        write_npz(dir.path(), &[("a", param.clone())], method);
        fails_cleanly(what, dir.path(), "matfn", &["\"a\"", shown]);
    }
    // A stored entry whose archive sizes (local and central headers) claim 2 GB in a file of a few
    // hundred bytes: refused from the file's length, before anything reads or allocates that much.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), SGD).unwrap();
    let param = f32_npy("(100000, 5000)", &f32_bytes(&data(&[3, 4], 1)));
    write_npz(dir.path(), &[("param", param), ("grads", grads.clone())], CompressionMethod::Stored);
    let npz = dir.path().join("inputs.npz");
    let mut bytes = std::fs::read(&npz).unwrap();
    let claim = 2_000_000_128u32.to_le_bytes();
    let (local, central) = (
        bytes.windows(4).position(|w| w == b"PK\x03\x04").unwrap(),
        bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap(),
    );
    for at in [local + 18, local + 22, central + 20, central + 24] {
        bytes[at..at + 4].copy_from_slice(&claim);
    }
    std::fs::write(&npz, bytes).unwrap();
    fails_cleanly("stored sizes past the file's end", dir.path(), "replay", &["\"param\"", "past the end of the file"]);
    // A header length (u32, version 2.0) of 4 GB is refused before it is allocated.
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&u32::MAX.to_le_bytes());
    v2.extend_from_slice(b"{'descr'");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), SGD).unwrap();
    write_npz(dir.path(), &[("param", v2), ("grads", grads)], CompressionMethod::Stored);
    fails_cleanly("4 GB header length", dir.path(), "replay", &["\"param\""]);
}

#[test]
fn a_malformed_npy_header_is_reported_on_one_line() {
    let body = f32_bytes(&data(&[4], 1));
    let grads = f32_npy("(3, 4)", &f32_bytes(&data(&[3, 4], 2)));
    for (what, param) in [
        ("bad literal", npy("{'descr': '<f4', 'fortran_order': Fals, 'shape': (4,), }", &body)),
        ("unclosed dict", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)", &body)),
        ("unknown key", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", &body)),
        ("no magic", b"not an npy file at all".to_vec()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("case.json"), SGD).unwrap();
        write_npz(dir.path(), &[("param", param.clone()), ("grads", grads.clone())], CompressionMethod::Stored);
        fails_cleanly(what, dir.path(), "replay", &["\"param\""]);
        std::fs::write(dir.path().join("case.json"), r#"{"samples": 2}"#).unwrap();
        write_npz(dir.path(), &[("a", param)], CompressionMethod::Stored);
        fails_cleanly(what, dir.path(), "hutchinson", &["\"a\""]);
    }
    // Not a zip at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), SGD).unwrap();
    std::fs::write(dir.path().join("inputs.npz"), b"PK\x03\x04 truncated").unwrap();
    fails_cleanly("not a zip", dir.path(), "replay", &["inputs.npz"]);
}

#[test]
fn compressed_inputs_give_the_same_outputs_as_stored_ones() {
    let (p0, g) = (data(&[3, 4], 1), data(&[3, 3, 4], 2));
    let mut outputs = Vec::new();
    for compressed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("case.json"), SGD).unwrap();
        let file = std::fs::File::create(dir.path().join("inputs.npz")).unwrap();
        // NpzWriter::new_compressed is what numpy.savez_compressed writes: every entry deflated.
        let mut w = if compressed { NpzWriter::new_compressed(file) } else { NpzWriter::new(file) };
        w.add_array("param", &p0).unwrap();
        w.add_array("grads", &g).unwrap();
        w.finish().unwrap();
        let out = gpuopt(&["replay", dir.path().to_str().unwrap(), "--backend", "cpu"]);
        assert!(out.status.success(), "compressed {compressed}: {}", String::from_utf8_lossy(&out.stderr));
        let mut r = NpzReader::new(std::fs::File::open(dir.path().join("outputs.npz")).unwrap()).unwrap();
        let traj: ArrayD<f32> = r.by_name("trajectory").unwrap();
        outputs.push(traj);
    }
    assert_eq!(outputs[0], outputs[1]);
    let expected: Vec<f32> = p0.iter().zip(g.index_axis(ndarray::Axis(0), 0)).map(|(p, g)| p - 0.1 * g).collect();
    for (a, b) in outputs[1].index_axis(ndarray::Axis(0), 0).iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

fn write_sgd_inputs(dir: &Path) {
    let mut w = NpzWriter::new(std::fs::File::create(dir.join("inputs.npz")).unwrap());
    w.add_array("param", &data(&[4], 1)).unwrap();
    w.add_array("grads", &data(&[3, 4], 2)).unwrap();
    w.finish().unwrap();
}

#[test]
fn numbers_beyond_f32_are_rejected_naming_the_key() {
    for (json, needle) in [
        (r#"{"optimizer": "sgd", "hyper": {"lr": 1e39}}"#, r#""lr" = 1e39 does not fit in f32"#),
        (r#"{"optimizer": "sgd", "hyper": {"lr": 1e300}}"#, r#""lr" = 1e300 does not fit in f32"#),
        (r#"{"optimizer": "sgd", "hyper": {"lr": -3.5e38}}"#, r#""lr" = -3.5e38 does not fit in f32"#),
        (r#"{"optimizer": "adamw", "hyper": {"weight_decay": 0.1, "eps": 4e38}}"#, r#""eps" = 4e38"#),
        (r#"{"optimizer": "sgd", "steps": 3, "extra": [1, 2e40]}"#, r#""extra"[1] = 2e40"#),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("case.json"), json).unwrap();
        write_sgd_inputs(dir.path());
        fails_cleanly(json, dir.path(), "replay", &["case.json: ", needle, "max 3.4e38"]);
    }
    // The largest f32 itself, and integers up to 2^64 - 1, are fine.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), r#"{"samples": 2, "seed": 18446744073709551615, "x": 3.4028235e38}"#)
        .unwrap();
    let a = Array::from_shape_vec(IxDyn(&[2, 2]), vec![2.0f32, 1.0, 1.0, 3.0]).unwrap();
    let mut w = NpzWriter::new(std::fs::File::create(dir.path().join("inputs.npz")).unwrap());
    w.add_array("a", &a).unwrap();
    w.finish().unwrap();
    let out = gpuopt(&["hutchinson", dir.path().to_str().unwrap(), "--backend", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_byte_order_mark_before_case_json_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.json"), format!("\u{feff}{SGD}")).unwrap();
    write_sgd_inputs(dir.path());
    let out = gpuopt(&["replay", dir.path().to_str().unwrap(), "--backend", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("outputs.npz").exists());
}
