//! Optimizer checkpoints: a [`Snapshot`] of everything a resumed run needs, stored as safetensors.
//!
//! Layout: tensor `param/{i}` holds parameter i's values and `state/{i}/{name}` each state tensor
//! (f32, the parameter's shape); `__metadata__` holds `format`, `optimizer`, `hyper` (JSON),
//! `step`, `skipped`, `groups` (JSON), `params` (JSON: name, shape, group), `crc32` of all tensor
//! bytes in order and `meta_crc32` of the other metadata entries, so a flipped byte anywhere is
//! caught (files written before `meta_crc32` existed load without that check). Files are written to a temporary file in the
//! same directory, synced and renamed, so a crash never leaves a half-written checkpoint.

use super::{Algorithm, Core, GroupState, ParamMeta};
use crate::error::{Error, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const FORMAT: &str = "gpuopt-checkpoint-2";

/// Everything needed to resume an optimizer bit-identically.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Replay name of the algorithm.
    pub algorithm: String,
    /// Its hyperparameters (JSON, canonical names; optimizer-specific extras allowed).
    pub hyper: serde_json::Value,
    /// Steps taken.
    pub step: u64,
    /// Steps skipped by the non-finite guard.
    pub skipped: u64,
    /// Group values (lr may have been changed by a schedule).
    pub groups: Vec<GroupState>,
    /// Parameter metadata.
    pub params: Vec<ParamMeta>,
    /// Parameter values, per parameter.
    pub values: Vec<Vec<f32>>,
    /// Named state tensors, per parameter (any lengths: RACS keeps row and column statistics).
    pub states: Vec<Vec<(String, Vec<f32>)>>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

fn mismatch(reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: PathBuf::from("<snapshot>"), reason: reason.into() }
}

impl Snapshot {
    pub(crate) fn from_core(core: &Core, values: Vec<Vec<f32>>, states: Vec<Vec<Vec<f32>>>) -> Self {
        let names = core.algorithm.states();
        Snapshot {
            algorithm: core.algorithm.name().to_string(),
            hyper: core.algorithm.hyper_json(),
            step: core.t,
            skipped: core.skipped,
            groups: core.groups.clone(),
            params: core.params.clone(),
            values,
            states: states.into_iter().map(|s| names.iter().map(|(n, _)| n.to_string()).zip(s).collect()).collect(),
        }
    }

    /// The state tensors of parameter `i` in `names` order, or an error naming what is missing.
    pub(crate) fn states_of(&self, i: usize, names: &[&str]) -> Result<Vec<&Vec<f32>>> {
        let s = self.states.get(i).ok_or_else(|| mismatch(format!("no state for parameter {i}")))?;
        if s.len() != names.len() {
            return Err(mismatch(format!("parameter {i} has {} state tensors, expected {names:?}", s.len())));
        }
        names
            .iter()
            .map(|n| {
                s.iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, v)| v)
                    .ok_or_else(|| mismatch(format!("parameter {i} lacks state {n:?}")))
            })
            .collect()
    }

    /// Checks the parts every optimizer shares: algorithm name, parameters, value sizes.
    pub(crate) fn check_common(&self, algorithm: &str, params: &[ParamMeta]) -> Result<()> {
        if self.algorithm != algorithm {
            return Err(mismatch(format!("optimizer is {}, this one is {algorithm}", self.algorithm)));
        }
        if self.params != params {
            return Err(mismatch("parameters (names, shapes or groups) differ"));
        }
        for (i, p) in self.params.iter().enumerate() {
            if self.values.get(i).is_none_or(|v| v.len() != p.len()) {
                return Err(mismatch(format!("tensor sizes of {} do not match its shape", p.name)));
            }
        }
        Ok(())
    }

    /// Checks that this snapshot fits an elementwise optimizer's `core` (same algorithm, state layout
    /// and parameters) and returns the algorithm with the snapshot's hyperparameters. Nothing is
    /// changed on error.
    pub(crate) fn check_fits(&self, core: &Core) -> Result<Algorithm> {
        self.check_common(core.algorithm.name(), &core.params)?;
        let algorithm = Algorithm::from_name(&self.algorithm, &self.hyper)?;
        if algorithm.states() != core.algorithm.states() {
            return Err(mismatch("state tensors differ (e.g. amsgrad or variant changed)"));
        }
        // The GPU optimizer's kernels were bound at build time: a checkpoint whose hyperparameters
        // select another update kernel (Sophia's variant, Lion's k_map, AdaHessian's power 1) would
        // otherwise run the old kernel with the new scalars.
        let (saved, built) = (algorithm.kernel(), core.algorithm.kernel());
        if (saved.module, saved.entry) != (built.module, built.entry) {
            return Err(mismatch(format!(
                "the checkpoint's hyperparameters select the update kernel {}, this optimizer was built with {}: \
                 build it with the checkpoint's hyperparameters",
                saved.entry, built.entry
            )));
        }
        if self.groups.len() != core.groups.len() {
            return Err(mismatch(format!("{} groups, this optimizer has {}", self.groups.len(), core.groups.len())));
        }
        for (i, g) in self.groups.iter().enumerate() {
            algorithm.check_group(g).map_err(|e| mismatch(format!("group {i}: {e}")))?;
        }
        let names: Vec<&str> = algorithm.states().iter().map(|(n, _)| *n).collect();
        for (i, p) in self.params.iter().enumerate() {
            if self.states_of(i, &names)?.iter().any(|t| t.len() != p.len()) {
                return Err(mismatch(format!("state sizes of {} do not match its shape", p.name)));
            }
        }
        Ok(algorithm)
    }

    /// The elementwise state tensors of parameter `i` in algorithm order (after `check_fits`).
    pub(crate) fn ordered_states(&self, i: usize, algorithm: &Algorithm) -> Result<Vec<Vec<f32>>> {
        let names: Vec<&str> = algorithm.states().iter().map(|(n, _)| *n).collect();
        Ok(self.states_of(i, &names)?.into_iter().cloned().collect())
    }

    /// Applies the host-side part (after [`Snapshot::check_fits`]).
    pub(crate) fn apply_core(&self, core: &mut Core, algorithm: Algorithm) {
        core.algorithm = algorithm;
        core.t = self.step;
        core.skipped = self.skipped;
        core.groups = self.groups.clone();
        core.last_non_finite = false;
    }

    /// Writes the snapshot to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, &[f32], Vec<usize>)> = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            tensors.push((format!("param/{i}"), &self.values[i], p.shape.clone()));
            for (name, data) in &self.states[i] {
                let shape = if data.len() == p.len() { p.shape.clone() } else { vec![data.len()] };
                tensors.push((format!("state/{i}/{name}"), data, shape));
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut crc = crc32fast::Hasher::new();
        for (_, data, _) in &tensors {
            crc.update(bytemuck::cast_slice(data));
        }
        let groups: Vec<[f64; 3]> = self.groups.iter().map(|g| [g.lr, g.weight_decay, g.base_lr]).collect();
        let params: Vec<serde_json::Value> = self
            .params
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "shape": p.shape, "group": p.group}))
            .collect();
        let state_names: Vec<Vec<&str>> =
            self.states.iter().map(|s| s.iter().map(|(n, _)| n.as_str()).collect()).collect();
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("optimizer".to_string(), self.algorithm.clone()),
            ("hyper".to_string(), self.hyper.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("skipped".to_string(), self.skipped.to_string()),
            ("groups".to_string(), serde_json::to_string(&groups).expect("json")),
            ("params".to_string(), serde_json::Value::Array(params).to_string()),
            ("state_names".to_string(), serde_json::to_string(&state_names).expect("json")),
            ("crc32".to_string(), crc.finalize().to_string()),
        ]);
        meta.insert("meta_crc32".to_string(), meta_crc(&meta).to_string());
        let views = tensors
            .iter()
            .map(|(name, data, shape)| {
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data)).map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e.to_string()))?;
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(path, e.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Reads and verifies a checkpoint (structure and checksum; whether it fits an optimizer is
    /// checked by that optimizer's `restore`).
    pub fn load(path: &Path) -> Result<Snapshot> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().ok_or_else(|| bad(path, "no gpuopt metadata"))?;
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(path, format!("metadata lacks {k:?}")));
        if get("format")? != FORMAT {
            return Err(bad(path, format!("format {:?}, expected {FORMAT}", get("format")?)));
        }
        let parse_json = |k: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(k)?).map_err(|e| bad(path, format!("metadata {k}: {e}")))
        };
        let algorithm = get("optimizer")?.clone();
        let hyper = parse_json("hyper")?;
        let step: u64 = get("step")?.parse().map_err(|_| bad(path, "bad step"))?;
        let skipped: u64 = get("skipped")?.parse().map_err(|_| bad(path, "bad skipped"))?;
        let groups: Vec<[f64; 3]> =
            serde_json::from_value(parse_json("groups")?).map_err(|e| bad(path, format!("groups: {e}")))?;
        let groups =
            groups.into_iter().map(|[lr, weight_decay, base_lr]| GroupState { lr, weight_decay, base_lr }).collect();
        #[derive(serde::Deserialize)]
        struct P {
            name: String,
            shape: Vec<usize>,
            group: usize,
        }
        let ps: Vec<P> =
            serde_json::from_value(parse_json("params")?).map_err(|e| bad(path, format!("params: {e}")))?;
        let params: Vec<ParamMeta> =
            ps.into_iter().map(|p| ParamMeta { name: p.name, shape: p.shape, group: p.group }).collect();
        let state_names: Vec<Vec<String>> =
            serde_json::from_value(parse_json("state_names")?).map_err(|e| bad(path, format!("state_names: {e}")))?;
        if state_names.len() != params.len() {
            return Err(bad(path, "state_names does not match params"));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e.to_string()))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| bad(path, format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(path, format!("{name}: expected f32, found {:?}", t.dtype())));
            }
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let mut values = Vec::new();
        let mut states = Vec::new();
        let mut named: Vec<(String, Vec<f32>)> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let key = format!("param/{i}");
            let v = read(&key)?;
            if v.len() != p.len() {
                return Err(bad(path, format!("{key}: {} values for shape {:?}", v.len(), p.shape)));
            }
            named.push((key, v.clone()));
            values.push(v);
            let mut s = Vec::new();
            for name in &state_names[i] {
                let key = format!("state/{i}/{name}");
                let v = read(&key)?;
                named.push((key, v.clone()));
                s.push((name.clone(), v));
            }
            states.push(s);
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut crc = crc32fast::Hasher::new();
        for (_, v) in &named {
            crc.update(bytemuck::cast_slice(v));
        }
        if get("crc32")? != &crc.finalize().to_string() {
            return Err(bad(path, "checksum mismatch: the file is corrupt"));
        }
        if meta.get("meta_crc32").is_some_and(|c| c != &meta_crc(&meta).to_string()) {
            return Err(bad(path, "metadata checksum mismatch: the file is corrupt"));
        }
        Ok(Snapshot { algorithm, hyper, step, skipped, groups, params, values, states })
    }
}

/// CRC-32 of the metadata entries other than the checksums, in key order (key, 0x1f, value, 0x1e).
fn meta_crc(meta: &HashMap<String, String>) -> u32 {
    let mut keys: Vec<&String> = meta.keys().filter(|k| !matches!(k.as_str(), "crc32" | "meta_crc32")).collect();
    keys.sort();
    let mut crc = crc32fast::Hasher::new();
    for k in keys {
        crc.update(k.as_bytes());
        crc.update(&[0x1f]);
        crc.update(meta[k].as_bytes());
        crc.update(&[0x1e]);
    }
    crc.finalize()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| bad(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp.{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes any file atomically (temporary file + rename), as checkpoints are.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes)
}
