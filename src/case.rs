//! The case folders of `gpuopt replay`, `matfn` and `hutchinson`: `case.json` + `inputs.npz` in,
//! `outputs.npz` out (written atomically; a stale one is removed first, so a failed run never leaves
//! an old result looking current).
//!
//! Every error here is one line (the parsers' multi-line diagrams are folded), and `inputs.npz` is
//! checked entry by entry before any array is read: a `.npy` header that declares more data than its
//! entry holds is an error, not a huge allocation.

use crate::error::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::{NpzReader, NpzWriter};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An invalid-input error that names the file; a multi-line message is folded into one line.
pub(crate) fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {}", path.display(), one_line(&msg.to_string())))
}

/// Folds a parser's multi-line message into one line. pest's diagram (`--> 1:35`, `1 | source`,
/// `^---`, `= expected value`) becomes `at 1:35: expected value (in: source)`; other lines are trimmed
/// and joined with ": ".
fn one_line(msg: &str) -> String {
    if !msg.contains('\n') {
        return msg.to_owned();
    }
    let (mut parts, mut at, mut source, mut expected) = (Vec::new(), None, None, None);
    for line in msg.lines().map(str::trim) {
        let (gutter, rest) = line.split_once('|').unwrap_or(("x", line));
        if let Some((before, pos)) = line.split_once("-->") {
            let before = before.trim().trim_end_matches(':');
            if !before.is_empty() {
                parts.push(before.to_owned());
            }
            at = Some(pos.trim());
        } else if gutter.trim().chars().all(|c| c.is_ascii_digit()) {
            // "1 | source" or a bare "|" gutter; the caret line under the source is dropped.
            let rest = rest.trim();
            if !rest.is_empty() && !rest.chars().all(|c| "^-~ ".contains(c)) {
                source = Some(rest);
            }
        } else if let Some(what) = line.strip_prefix("= ") {
            expected = Some(what.trim());
        } else if !line.is_empty() {
            parts.push(line.trim_end_matches(':').to_owned());
        }
    }
    parts.extend(at.map(|a| format!("at {a}")));
    parts.extend(expected.map(str::to_owned));
    let mut folded = parts.join(": ");
    if let Some(source) = source {
        folded.push_str(&format!(" (in: {source})"));
    }
    folded
}

/// The case formats ignore keys nobody reads, but each of `given` outside `known` is named in a
/// warning ("PATH: NOUN "key" is not one of OWNER's (known...); ignored"): a misspelt key (`iter`
/// for `iters`, `betas` for `beta1`) would otherwise pass for its default silently.
pub(crate) fn warn_unknown_keys<'a>(
    path: &Path,
    given: impl IntoIterator<Item = &'a String>,
    known: &[&str],
    noun: &str,
    owner: &str,
) {
    for key in given.into_iter().filter(|k| !known.contains(&k.as_str())) {
        log::warn!("{}: {noun} {key:?} is not one of {owner}'s ({}); ignored", path.display(), known.join(", "));
    }
}

/// Removes a stale `outputs.npz` and returns its path.
pub(crate) fn clear_output(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("outputs.npz");
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| Error::io(&out, e))?;
    }
    Ok(out)
}

/// `case.json`, parsed (a leading UTF-8 byte-order mark is skipped). NaN or Infinity (which JSON
/// cannot hold) get a message of their own, and so does a finite number too large for f32.
pub(crate) fn read_json(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("case.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        if body.contains("NaN") || body.contains("Infinity") {
            invalid(&path, format!("not valid JSON: it holds NaN or Infinity, which JSON has no numbers for (values must be finite; {e})"))
        } else {
            invalid(&path, format!("not valid JSON: {e}"))
        }
    })?;
    if !json.is_object() {
        let kind = match json {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            _ => "a string",
        };
        return Err(invalid(&path, format!("must be a JSON object ({{\"key\": value, ...}}), not {kind}")));
    }
    if let Some((key, n)) = beyond_f32(&json, None) {
        return Err(invalid(&path, format!("{key} = {n:e} does not fit in f32 (max 3.4e38)")));
    }
    Ok((path, json))
}

/// The first number (depth first) too large for f32 (it would round to infinity), with the key that holds it:
/// `"lr"` for an object member, `"betas"[1]` for an array element, `[0]` at the top level.
fn beyond_f32(value: &serde_json::Value, key: Option<String>) -> Option<(String, f64)> {
    use serde_json::Value;
    match value {
        Value::Number(n) => match n.as_f64() {
            // Rounds to ±inf in f32 (3.4028235e38, which rounds to f32::MAX, still fits).
            Some(x) if (x as f32).is_infinite() => Some((key.unwrap_or_else(|| "the value".into()), x)),
            _ => None,
        },
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let k = format!("{}[{i}]", key.as_deref().unwrap_or(""));
            beyond_f32(v, Some(k))
        }),
        Value::Object(members) => members.iter().find_map(|(k, v)| beyond_f32(v, Some(format!("{k:?}")))),
        _ => None,
    }
}

/// The longest `.npy` header read for the check (NumPy itself refuses headers over 10 000 bytes
/// unless asked).
const MAX_NPY_HEADER: usize = 1 << 20;

/// Deflate expands at most ~1032:1; a compressed entry that would have to expand further to hold
/// what its header declares is rejected without being decompressed.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// `inputs.npz`, opened, after every entry's `.npy` header has been checked against the data the
/// entry actually holds (a stored entry's length from the archive, checked against the file's; a
/// compressed one decompressed, at most the declared length plus one byte).
pub(crate) fn open_inputs(dir: &Path) -> Result<(PathBuf, NpzReader<std::fs::File>)> {
    let path = dir.join("inputs.npz");
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    check_entries(&path, &file)?;
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let npz = NpzReader::new(file).map_err(|e| invalid(&path, e))?;
    Ok((path, npz))
}

/// Walks the archive's entries: each must be a `.npy` whose header parses and whose data is as long
/// as the header's shape and dtype say (entries of a dtype gpuopt never reads are only parsed).
fn check_entries(path: &Path, file: &std::fs::File) -> Result<()> {
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| invalid(path, format!("not a valid .npz (zip) file: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| invalid(path, format!("entry {i}: {e}")))?;
        let name = entry.name().strip_suffix(".npy").unwrap_or(entry.name()).to_owned();
        let bad = |msg: String| invalid(path, format!("array \"{name}\": {msg}"));
        let compressed = entry.compression() != zip::CompressionMethod::Stored;
        let packed = entry.compressed_size();
        // Where a stored entry's data would end in the file: past the file's end, the archive lies.
        let stored_end = entry.data_start().checked_add(packed).filter(|&end| end <= file_len);
        if !compressed && stored_end.is_none() {
            return Err(bad(format!("the archive says the entry holds {packed} bytes, past the end of the file")));
        }
        let (header, header_bytes) = read_header(&mut entry).map_err(bad)?;
        let Some(item) = item_size(&header) else { continue };
        let count = header.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let Some(bytes) = count.and_then(|n| n.checked_mul(item)) else {
            return Err(bad(format!("shape {:?} overflows", header.shape)));
        };
        let too_large = |held: String| {
            bad(format!(
                "the header declares shape {:?} ({bytes} bytes of data) but the entry holds {held}",
                header.shape
            ))
        };
        if compressed && bytes > packed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1 << 16) {
            return Err(too_large(format!("only {packed} compressed bytes")));
        }
        // A stored entry holds what the archive says (checked against the file's length above), so
        // only a compressed one is read here, as far as its declared length allows.
        let held = if compressed {
            std::io::copy(&mut (&mut entry).take(bytes.saturating_add(1)), &mut std::io::sink())
                .map_err(|e| bad(format!("reading the data: {e}")))?
        } else {
            packed.saturating_sub(header_bytes)
        };
        if held < bytes {
            return Err(too_large(format!("only {held} bytes")));
        }
        let fits = usize::try_from(bytes).ok().is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok());
        if !fits {
            return Err(bad(format!(
                "shape {:?} needs {bytes} bytes, more than this machine can allocate",
                header.shape
            )));
        }
    }
    Ok(())
}

/// Reads and parses an entry's `.npy` header, refusing a declared header length over
/// [`MAX_NPY_HEADER`] before allocating it; returns it with the number of bytes it took.
fn read_header(entry: &mut impl Read) -> std::result::Result<(Header, u64), String> {
    let short = |e: std::io::Error| format!("not a .npy file (header: {e})");
    let mut prefix = [0u8; 8];
    entry.read_exact(&mut prefix).map_err(short)?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic string)".into());
    }
    let len_bytes = if prefix[6] == 1 { 2 } else { 4 };
    let mut len = [0u8; 4];
    entry.read_exact(&mut len[..len_bytes]).map_err(short)?;
    let header_len = u32::from_le_bytes(len) as usize;
    if header_len > MAX_NPY_HEADER {
        return Err(format!("the .npy header claims {header_len} bytes (at most {MAX_NPY_HEADER} are read)"));
    }
    let mut bytes = Vec::with_capacity(8 + len_bytes + header_len);
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&len[..len_bytes]);
    bytes.resize(8 + len_bytes + header_len, 0);
    entry.read_exact(&mut bytes[8 + len_bytes..]).map_err(short)?;
    let header = Header::from_reader(&mut bytes.as_slice())
        .map_err(|e| format!("bad .npy header: {}", one_line(&e.to_string())))?;
    Ok((header, bytes.len() as u64))
}

/// Bytes per element for plain dtype strings like `<f4`, `|u1`, `<c16`, `<U5`; `None` for object,
/// datetime and structured dtypes (which gpuopt never reads as float32, so their size is not checked).
fn item_size(header: &Header) -> Option<u64> {
    let descr = header.type_descriptor.as_string()?.trim_start_matches(['<', '>', '|', '=']);
    let mut chars = descr.chars();
    let kind = chars.next()?;
    let n: u64 = chars.as_str().parse().ok()?;
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' => Some(n),
        'U' => n.checked_mul(4),
        _ => None,
    }
}

/// Reads a float32 array by name.
pub(crate) fn read_array(
    path: &Path,
    npz: &mut NpzReader<std::fs::File>,
    name: &str,
    what: &str,
) -> Result<ArrayD<f32>> {
    npz.by_name(name).map_err(|e| invalid(path, format!("array \"{name}\" ({what}): {e}")))
}

/// Writes `outputs.npz` atomically.
pub(crate) fn write_outputs(out: &Path, arrays: &[(&str, &ArrayD<f32>)]) -> Result<()> {
    let mut w = NpzWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, a) in arrays {
        w.add_array(*name, *a).map_err(|e| invalid(out, e))?;
    }
    let bytes = w.finish().map_err(|e| invalid(out, e))?.into_inner();
    crate::optim::checkpoint::write_file_atomically(out, &bytes)
}
