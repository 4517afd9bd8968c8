//! The case folders of `gpuopt replay`, `matfn` and `hutchinson`: `case.json` + `inputs.npz` in,
//! `outputs.npz` out (written atomically; a stale one is removed first, so a failed run never leaves
//! an old result looking current).

use crate::error::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, NpzWriter};
use std::path::{Path, PathBuf};

/// An invalid-input error that names the file.
pub(crate) fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}

/// Removes a stale `outputs.npz` and returns its path.
pub(crate) fn clear_output(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("outputs.npz");
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| Error::io(&out, e))?;
    }
    Ok(out)
}

/// `case.json`, parsed; NaN or Infinity (which JSON cannot hold) get a message of their own.
pub(crate) fn read_json(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("case.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json = serde_json::from_str(&text).map_err(|e| {
        if text.contains("NaN") || text.contains("Infinity") {
            invalid(&path, "hyperparameters must be finite numbers (found NaN or Infinity)")
        } else {
            invalid(&path, format!("not valid JSON: {e}"))
        }
    })?;
    Ok((path, json))
}

/// `inputs.npz`, opened.
pub(crate) fn open_inputs(dir: &Path) -> Result<(PathBuf, NpzReader<std::fs::File>)> {
    let path = dir.join("inputs.npz");
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let npz = NpzReader::new(file).map_err(|e| invalid(&path, e))?;
    Ok((path, npz))
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
