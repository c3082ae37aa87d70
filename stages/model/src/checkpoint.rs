//! safetensors checkpoints: written atomically (temporary file, fsync,
//! rename), named as the released LocVTP state dict minus `module.`, and
//! readable from Python with `safetensors.torch.load_file`.

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Names in a checkpoint that belong to no trainable part of [`crate::LocVtp`]:
/// the frozen text encoder of released checkpoints, and the optimiser state
/// that training checkpoints carry next to the weights.
const IGNORED_PREFIXES: [&str; 2] = ["textEncoder.", "optimizer."];

/// Strips the `module.` prefix that DistributedDataParallel adds.
pub fn canonical_name(name: &str) -> &str {
    name.strip_prefix("module.").unwrap_or(name)
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        other => bail!("tensors of kind {other:?} cannot be stored"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        other => bail!("safetensors dtype {other:?} is not supported"),
    })
}

/// The bytes of a tensor, on the CPU, in row-major order.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut buf, numel);
    buf
}

/// Writes `tensors` and `metadata` to `path` so that the path either holds
/// the previous file or the complete new one, never a partial write.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        owned.push((
            name.clone(),
            dtype_of(t.kind())?,
            t.size().iter().map(|&d| d as usize).collect::<Vec<_>>(),
            tensor_bytes(t),
        ));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), data)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))?;
    atomic_write(path, &bytes)
}

/// Temporary file in the same folder, fsync, rename, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let tmp = temporary_sibling(path);
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("{}: write failed", tmp.display()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `dir/.name.partial`: hidden, and ignored by readers that glob for the
/// final name.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Named tensors and the string metadata of a safetensors file.
pub type NamedTensors = (Vec<(String, Tensor)>, BTreeMap<String, String>);

/// Reads every tensor and the metadata of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tensors, metadata))
}

/// The `__metadata__` of a safetensors file, reading only its header.
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!("{}: not a safetensors file (header of {len} bytes)", path.display());
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: not a safetensors file (header is not JSON)", path.display()))?;
    Ok(header["__metadata__"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default())
}

/// What loading a checkpoint into a model did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Names present in the file that the model does not have (after the
    /// ignored prefixes).
    pub unexpected: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Copies the weights of a checkpoint into `vs`. Every model variable must
/// be present with its exact shape: a checkpoint of another width is an
/// error naming the tensor, not a silent partial load.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<LoadReport> {
    let (tensors, metadata) = read_safetensors(path)?;
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (canonical_name(n), t)).collect();
    let vars = vs.variables();
    let mut report = LoadReport { metadata, ..Default::default() };
    let mut missing = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            match by_name.get(name.as_str()) {
                None => missing.push(name.clone()),
                Some(t) => {
                    if t.size() != var.size() {
                        bail!(
                            "{}: tensor {name} has shape {:?}, the model expects {:?} (is the model config the one this checkpoint was trained with?)",
                            path.display(),
                            t.size(),
                            var.size()
                        );
                    }
                    let mut v = var.shallow_clone();
                    v.copy_(&t.to_kind(var.kind()).to_device(var.device()));
                    report.loaded += 1;
                }
            }
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        missing.sort();
        bail!("{}: {} model tensors missing, first: {}", path.display(), missing.len(), missing[0]);
    }
    report.unexpected = by_name
        .keys()
        .filter(|n| !vars.contains_key(**n) && !IGNORED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(|n| n.to_string())
        .collect();
    report.unexpected.sort();
    Ok(report)
}

/// The model's variables, sorted by name, ready for [`write_safetensors`].
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Hex SHA-256 of a file: recorded next to features so that a feature file
/// names the exact weights that produced it.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{C3dConfig, LocVtp, ModelConfig};

    fn tiny() -> ModelConfig {
        ModelConfig {
            c3d: C3dConfig { channels: [2, 2, 4, 4, 4], fc_dim: 8, num_classes: 3, ..C3dConfig::default() },
            projection_dim: 4,
            text_dim: 6,
            num_segments: 2,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn round_trip_restores_every_weight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let a = LocVtp::new(&tiny(), Device::Cpu, 1);
        let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        write_safetensors(&path, &named_variables(&a.vs), &meta).unwrap();
        assert!(!temporary_sibling(&path).exists());

        let mut b = LocVtp::new(&tiny(), Device::Cpu, 2);
        let name = "videoEncoder.embednet.conv3a.weight";
        assert!(!a.vs.variables()[name].equal(&b.vs.variables()[name]));
        let report = load_weights(&mut b.vs, &path).unwrap();
        assert_eq!(report.loaded, a.vs.variables().len());
        assert!(report.unexpected.is_empty());
        assert_eq!(report.metadata["epoch"], "3");
        for (n, t) in a.vs.variables() {
            assert!(t.equal(&b.vs.variables()[&n]), "{n} differs after the round trip");
        }
    }

    #[test]
    fn module_prefix_and_text_encoder_keys_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("released.safetensors");
        let a = LocVtp::new(&tiny(), Device::Cpu, 1);
        let mut tensors: Vec<(String, Tensor)> =
            named_variables(&a.vs).into_iter().map(|(n, t)| (format!("module.{n}"), t)).collect();
        tensors.push((
            "module.textEncoder.model.embeddings.word_embeddings.weight".into(),
            Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
        ));
        write_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
        let mut b = LocVtp::new(&tiny(), Device::Cpu, 2);
        let report = load_weights(&mut b.vs, &path).unwrap();
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        assert!(a.vs.variables()["vidProjector.fc.weight"].equal(&b.vs.variables()["vidProjector.fc.weight"]));
    }

    #[test]
    fn a_checkpoint_of_another_width_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.safetensors");
        let mut wide = tiny();
        wide.c3d.fc_dim = 10;
        let a = LocVtp::new(&wide, Device::Cpu, 1);
        write_safetensors(&path, &named_variables(&a.vs), &BTreeMap::new()).unwrap();
        let mut b = LocVtp::new(&tiny(), Device::Cpu, 1);
        let err = load_weights(&mut b.vs, &path).unwrap_err().to_string();
        assert!(err.contains("wide.safetensors") && err.contains("shape"), "{err}");
    }
}
