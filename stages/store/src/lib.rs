//! Feature output: one HDF5 file per run, either one group per video
//! holding `c3d_features` `[num_clips, dim]` float32 or one dataset per video
//! at the root (the two ways 2D-TAN style grounding code reads features), or
//! one `.npy` file per video (see [`npy`]).
//!
//! Finished videos first go to an append-only spool beside the output
//! (zstd-compressed, checksummed records). The spool survives a crash: a
//! restarted run reads back every complete record and skips those videos.
//! When the run ends the HDF5 file is assembled from the spool under a
//! temporary name and renamed into place, so the final path never holds a
//! half-written file.
//!
//! Every output records the [`RunAttrs`] of its features, the weights,
//! layer, model configuration and preprocessing that decide their values,
//! and their SHA-256 [`RunAttrs::fingerprint`]: in the spool's header, in
//! the HDF5 file's attributes, and beside `.npy` files in
//! [`npy::FINGERPRINT_FILE`].

pub mod npy;
pub mod spool;

pub use spool::{Spool, SpoolRecord};

use anyhow::{bail, Context, Result};
use hdf5::types::VarLenUnicode;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What decides the values of a run's features: the weights, the layer,
/// the model configuration and the preprocessing. Features of runs whose
/// attributes differ must not share an output, so a run resumes an output
/// only when its own attributes equal the recorded ones.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunAttrs {
    /// SHA-256 of the checkpoint, or `random-init:<seed>`.
    pub checkpoint: String,
    /// `projection` or `fc6`.
    pub layer: String,
    /// The model configuration, as JSON.
    #[serde(default)]
    pub model: String,
    /// `fp32`, or `bf16` for bfloat16 autocast.
    #[serde(default)]
    pub precision: String,
    /// Side of the square frames the videos are decoded to.
    #[serde(default)]
    pub frame_size: u32,
    pub clip_frames: u32,
    pub stride: u32,
    /// `pad` (the tail clip repeats the last frame) or `drop`.
    #[serde(default)]
    pub tail: String,
}

impl RunAttrs {
    /// SHA-256 (hex) of the attributes: equal for two runs exactly when
    /// their features come from the same weights, layer, model and
    /// preprocessing.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).expect("attributes serialize");
        format!("{:x}", sha2::Sha256::digest(json))
    }

    /// The attributes as JSON, for a spool's header or a sidecar file.
    pub fn to_json(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("attributes serialize");
        value["fingerprint"] = self.fingerprint().into();
        serde_json::to_vec_pretty(&value).expect("JSON prints")
    }

    /// Attributes from [`RunAttrs::to_json`]'s output.
    pub fn from_json(bytes: &[u8]) -> Result<RunAttrs> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// What differs between `earlier` (an output's) and these (this run's),
    /// one line per attribute, e.g. `checkpoint: random-init:0 (earlier
    /// run) vs random-init:1 (this run)`; the model configuration by key.
    pub fn differences(&self, earlier: &RunAttrs) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, before: String, now: String| {
            if before != now {
                let shown = |v: String| if v.is_empty() { "(not recorded)".to_string() } else { v };
                out.push(format!("{name}: {} (earlier run) vs {} (this run)", shown(before), shown(now)));
            }
        };
        field("checkpoint", earlier.checkpoint.clone(), self.checkpoint.clone());
        field("layer", earlier.layer.clone(), self.layer.clone());
        if earlier.model != self.model {
            let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap_or_default();
            let (before, now) = (flatten(&parse(&earlier.model)), flatten(&parse(&self.model)));
            let keys: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
            for key in keys {
                let get = |m: &BTreeMap<String, String>| m.get(key).cloned().unwrap_or_default();
                field(&format!("model config {key}"), get(&before), get(&now));
            }
        }
        field("precision", earlier.precision.clone(), self.precision.clone());
        field("frame_size", earlier.frame_size.to_string(), self.frame_size.to_string());
        field("clip_frames", earlier.clip_frames.to_string(), self.clip_frames.to_string());
        field("stride", earlier.stride.to_string(), self.stride.to_string());
        field("tail", earlier.tail.clone(), self.tail.clone());
        out
    }
}

/// A JSON value's leaves by dotted key (`c3d.channels`).
fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// The ids of `expected` that are not in `held`, sorted: the videos a run
/// would report done although its output lacks them.
pub fn not_held<'a>(expected: impl IntoIterator<Item = &'a String>, held: &BTreeSet<String>) -> Vec<String> {
    let mut missing: Vec<String> = expected.into_iter().filter(|id| !held.contains(*id)).cloned().collect();
    missing.sort();
    missing.dedup();
    missing
}

/// A message naming the videos `output` lacks of the `expected` count.
pub fn missing_message(output: &Path, missing: &[String], expected: usize) -> String {
    const SHOWN: usize = 20;
    let mut names = missing.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if missing.len() > SHOWN {
        names.push_str(&format!(" and {} more", missing.len() - SHOWN));
    }
    format!(
        "{}: lacks {} of the {expected} videos this run reports processed or skipped: {names}",
        output.display(),
        missing.len()
    )
}

/// Where each video's features sit in an HDF5 file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// `f[vid][dataset]`: a group per video holding one dataset (2D-TAN's
    /// ActivityNet loader reads `f[vid]["c3d_features"]`).
    Group { dataset: String },
    /// `f[vid]`: a dataset per video at the root (2D-TAN's TACoS loader
    /// reads `f[vid][:]`).
    Flat,
}

impl Layout {
    /// The path of a video's dataset inside the file.
    pub fn dataset_path(&self, video_id: &str) -> String {
        match self {
            Layout::Group { dataset } => format!("{video_id}/{dataset}"),
            Layout::Flat => video_id.to_string(),
        }
    }
}

/// A dataset name means the group layout, as files written before the
/// flat layout existed have it.
impl From<&str> for Layout {
    fn from(dataset: &str) -> Layout {
        Layout::Group { dataset: dataset.to_string() }
    }
}

impl From<&Layout> for Layout {
    fn from(layout: &Layout) -> Layout {
        layout.clone()
    }
}

/// `dir/.name.partial`, the name a file has until it is complete.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// The spool that belongs to an output file.
pub fn spool_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.spool"))
}

fn str_attr(loc: &hdf5::Location, name: &str, value: &str) -> Result<()> {
    let v = VarLenUnicode::from_str(value).map_err(|e| anyhow::anyhow!("attribute {name}: {e}"))?;
    loc.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&v)?;
    Ok(())
}

/// Writes the HDF5 file from the records (in the given order), atomically.
/// `layout` is a [`Layout`] or, for the group layout, the dataset name.
pub fn write_hdf5(path: &Path, layout: impl Into<Layout>, run: &RunAttrs, records: &[SpoolRecord]) -> Result<()> {
    write_hdf5_from(path, layout, run, records.iter().map(|r| Ok(r.clone())))
}

/// Like [`write_hdf5`], taking the records one at a time (read from a spool
/// as they are written), so that memory holds one video, not the file.
pub fn write_hdf5_from(
    path: &Path,
    layout: impl Into<Layout>,
    run: &RunAttrs,
    records: impl IntoIterator<Item = Result<SpoolRecord>>,
) -> Result<()> {
    write_hdf5_pending(path, layout, run, records)?.commit()
}

/// A complete file under its temporary name ([`temporary_sibling`]), not
/// yet in place. [`PendingFile::commit`] renames it over the final path;
/// dropped without that, it is removed and the final path keeps what it
/// held, so that a run that fails after assembling its output never
/// replaces an earlier run's file.
#[derive(Debug)]
pub struct PendingFile {
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Where the file is until it is committed.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Where the file goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file into place, durably.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.path)
            .with_context(|| format!("{}: cannot rename into place", self.path.display()))?;
        self.committed = true;
        // The rename is durable once the folder's entry is.
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes the HDF5 file under its temporary name and flushes it to disk;
/// the caller checks it and then commits it (or drops it).
pub fn write_hdf5_pending(
    path: &Path,
    layout: impl Into<Layout>,
    run: &RunAttrs,
    records: impl IntoIterator<Item = Result<SpoolRecord>>,
) -> Result<PendingFile> {
    let layout = layout.into();
    let tmp = temporary_sibling(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let _ = std::fs::remove_file(&tmp);
    // From here on, an error drops `pending`, which removes what was written.
    let pending = PendingFile { temp: tmp.clone(), path: path.to_path_buf(), committed: false };
    let fingerprint = run.fingerprint();
    {
        let file = hdf5::File::create(&tmp).with_context(|| format!("{}: cannot create HDF5 file", tmp.display()))?;
        file.new_attr::<u32>().create("clip_frames")?.write_scalar(&run.clip_frames)?;
        file.new_attr::<u32>().create("stride")?.write_scalar(&run.stride)?;
        file.new_attr::<u32>().create("frame_size")?.write_scalar(&run.frame_size)?;
        str_attr(&file, "layer", &run.layer)?;
        str_attr(&file, "checkpoint", &run.checkpoint)?;
        str_attr(&file, "model_config", &run.model)?;
        str_attr(&file, "precision", &run.precision)?;
        str_attr(&file, "tail", &run.tail)?;
        str_attr(&file, "fingerprint", &fingerprint)?;
        for r in records {
            let r = r?;
            if r.features.len() != r.num_clips as usize * r.dim as usize {
                bail!("video {}: {} values for {} clips of dim {}", r.video_id, r.features.len(), r.num_clips, r.dim);
            }
            let shape = [r.num_clips as usize, r.dim as usize];
            let ds = match &layout {
                Layout::Group { dataset } => {
                    let group = file
                        .create_group(&r.video_id)
                        .with_context(|| format!("{}: cannot create group {:?}", tmp.display(), r.video_id))?;
                    group.new_dataset::<f32>().shape(shape).create(dataset.as_str())?
                }
                Layout::Flat => file
                    .new_dataset::<f32>()
                    .shape(shape)
                    .create(r.video_id.as_str())
                    .with_context(|| format!("{}: cannot create dataset {:?}", tmp.display(), r.video_id))?,
            };
            ds.write_raw(r.features.as_slice())?;
            ds.new_attr::<f64>().create("fps")?.write_scalar(&r.fps)?;
            ds.new_attr::<u64>().create("frames")?.write_scalar(&r.frames)?;
            ds.new_attr::<u32>().create("clip_frames")?.write_scalar(&run.clip_frames)?;
            ds.new_attr::<u32>().create("stride")?.write_scalar(&run.stride)?;
            str_attr(&ds, "checkpoint", &run.checkpoint)?;
            str_attr(&ds, "fingerprint", &fingerprint)?;
        }
        file.flush()?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    Ok(pending)
}

/// The attributes a feature file records about its features (those of
/// [`RunAttrs`]; absent ones, in files written before they existed, are
/// left empty).
pub fn read_attrs(path: &Path) -> Result<RunAttrs> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    let text = |name: &str| -> String {
        file.attr(name)
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let number = |name: &str| file.attr(name).and_then(|a| a.read_scalar::<u32>()).unwrap_or(0);
    Ok(RunAttrs {
        checkpoint: text("checkpoint"),
        layer: text("layer"),
        model: text("model_config"),
        precision: text("precision"),
        frame_size: number("frame_size"),
        clip_frames: number("clip_frames"),
        stride: number("stride"),
        tail: text("tail"),
    })
}

/// The ids of `expected` whose features the file at `path` lacks (in the
/// group layout, a group without its dataset lacks them too), sorted.
pub fn missing_videos<'a>(
    path: &Path,
    layout: &Layout,
    expected: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<String>> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    let mut held: BTreeSet<String> = file.member_names()?.into_iter().collect();
    if let Layout::Group { dataset } = layout {
        held.retain(|id| file.group(id).is_ok_and(|g| g.link_exists(dataset)));
    }
    Ok(not_held(expected, &held))
}

/// Features of one video as stored: (values row-major, [num_clips, dim]).
/// `layout` is a [`Layout`] or, for the group layout, the dataset name.
pub fn read_features(path: &Path, video_id: &str, layout: impl Into<Layout>) -> Result<(Vec<f32>, [usize; 2])> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    read_dataset(&file, path, &layout.into().dataset_path(video_id))
}

fn read_dataset(file: &hdf5::File, path: &Path, name: &str) -> Result<(Vec<f32>, [usize; 2])> {
    let ds = file.dataset(name).with_context(|| format!("{}: no dataset {name}", path.display()))?;
    let shape = ds.shape();
    if shape.len() != 2 {
        bail!("{}: {name} has {} dimensions, expected 2", path.display(), shape.len());
    }
    Ok((ds.read_raw::<f32>()?, [shape[0], shape[1]]))
}

/// Video ids (groups) in a feature file, sorted.
pub fn list_videos(path: &Path) -> Result<Vec<String>> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    let mut names = file.member_names()?;
    names.sort();
    Ok(names)
}

/// Features of every video: id to (values, [num_clips, dim]).
pub type AllFeatures = BTreeMap<String, (Vec<f32>, [usize; 2])>;

/// Every video's features, keyed by id.
pub fn read_all(path: &Path, layout: impl Into<Layout>) -> Result<AllFeatures> {
    let layout = layout.into();
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    list_videos(path)?
        .into_iter()
        .map(|v| Ok((v.clone(), read_dataset(&file, path, &layout.dataset_path(&v))?)))
        .collect()
}

/// One video of a feature file with what its attributes tell about time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVideo {
    pub video_id: String,
    /// Row-major `[clips, dim]`.
    pub values: Vec<f32>,
    pub clips: usize,
    pub dim: usize,
    /// `fps` and `frames` attributes (this project's writer sets both);
    /// `None` for files from elsewhere.
    pub fps: Option<f64>,
    pub frames: Option<u64>,
}

impl StoredVideo {
    /// Duration from the attributes, when the file has them.
    pub fn duration_s(&self) -> Option<f64> {
        match (self.fps, self.frames) {
            (Some(fps), Some(frames)) if fps > 0.0 && frames > 0 => Some(frames as f64 / fps),
            _ => None,
        }
    }
}

/// Where the videos' features sit in a file when the reader is not told:
/// groups at the root mean the group layout with `dataset` in each, and
/// datasets at the root the flat layout. `Err` for an empty file or one
/// mixing both.
pub fn detect_layout(path: &Path, dataset: &str) -> Result<Layout> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    let (groups, datasets) = (file.groups()?.len(), file.datasets()?.len());
    match (groups, datasets) {
        (0, 0) => bail!("{}: holds no video", path.display()),
        (_, 0) => Ok(Layout::Group { dataset: dataset.to_string() }),
        (0, _) => Ok(Layout::Flat),
        _ => bail!("{}: mixes groups ({groups}) and datasets ({datasets}) at the root", path.display()),
    }
}

/// The file-level attribute `name` as a string, if there is one.
pub fn file_attr(path: &Path, name: &str) -> Option<String> {
    let file = hdf5::File::open(path).ok()?;
    let v: VarLenUnicode = file.attr(name).ok()?.read_scalar().ok()?;
    Some(v.as_str().to_string())
}

/// Every video of a feature file with its `fps` and `frames` attributes;
/// a video whose dataset cannot be read comes back as its error, so that
/// one bad entry does not lose the file.
pub fn read_videos(path: &Path, layout: &Layout) -> Result<Vec<Result<StoredVideo>>> {
    let file = hdf5::File::open(path).with_context(|| format!("{}: cannot open HDF5 file", path.display()))?;
    let mut out = Vec::new();
    for video_id in list_videos(path)? {
        let read = || -> Result<StoredVideo> {
            let name = layout.dataset_path(&video_id);
            let (values, [clips, dim]) = read_dataset(&file, path, &name)?;
            let ds = file.dataset(&name)?;
            let fps = ds.attr("fps").ok().and_then(|a| a.read_scalar::<f64>().ok());
            let frames = ds.attr("frames").ok().and_then(|a| a.read_scalar::<u64>().ok());
            Ok(StoredVideo { video_id: video_id.clone(), values, clips, dim, fps, frames })
        };
        out.push(read().with_context(|| format!("video {video_id}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, clips: u32, dim: u32, base: f32) -> SpoolRecord {
        SpoolRecord {
            video_id: id.into(),
            num_clips: clips,
            dim,
            fps: 25.0,
            frames: 40,
            features: (0..clips * dim).map(|i| base + i as f32 * 0.5).collect(),
        }
    }

    fn attrs(layer: &str, checkpoint: &str) -> RunAttrs {
        RunAttrs {
            checkpoint: checkpoint.into(),
            layer: layer.into(),
            model: r#"{"c3d":{"channels":[2,2,4,4,4]},"projection_dim":16}"#.into(),
            precision: "fp32".into(),
            frame_size: 112,
            clip_frames: 16,
            stride: 16,
            tail: "pad".into(),
        }
    }

    #[test]
    fn hdf5_round_trip_with_groups_shapes_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/features.h5");
        let run = attrs("projection", "abc");
        let recs = vec![record("vidA", 3, 4, 0.0), record("-vidB_x", 1, 4, 7.0)];
        write_hdf5(&path, "c3d_features", &run, &recs).unwrap();
        assert!(!temporary_sibling(&path).exists());
        assert_eq!(list_videos(&path).unwrap(), vec!["-vidB_x".to_string(), "vidA".to_string()]);
        let (vals, shape) = read_features(&path, "vidA", "c3d_features").unwrap();
        assert_eq!(shape, [3, 4]);
        assert_eq!(vals, recs[0].features);
        let file = hdf5::File::open(&path).unwrap();
        let ds = file.dataset("vidA/c3d_features").unwrap();
        assert_eq!(ds.attr("fps").unwrap().read_scalar::<f64>().unwrap(), 25.0);
        let ck: VarLenUnicode = ds.attr("checkpoint").unwrap().read_scalar().unwrap();
        assert_eq!(ck.as_str(), "abc");
        let fp: VarLenUnicode = ds.attr("fingerprint").unwrap().read_scalar().unwrap();
        assert_eq!(fp.as_str(), run.fingerprint());
        assert_eq!(read_attrs(&path).unwrap(), run, "the file records every attribute of its features");
        let fp: VarLenUnicode = file.attr("fingerprint").unwrap().read_scalar().unwrap();
        assert_eq!(fp.as_str(), run.fingerprint());
    }

    #[test]
    fn the_fingerprint_changes_with_every_attribute_and_the_differences_are_named() {
        let base = attrs("projection", "abc");
        let variants = [
            RunAttrs { checkpoint: "random-init:1".into(), ..base.clone() },
            RunAttrs { layer: "fc6".into(), ..base.clone() },
            RunAttrs { model: r#"{"c3d":{"channels":[2,2,4,4,8]},"projection_dim":16}"#.into(), ..base.clone() },
            RunAttrs { precision: "bf16".into(), ..base.clone() },
            RunAttrs { frame_size: 96, ..base.clone() },
            RunAttrs { clip_frames: 8, ..base.clone() },
            RunAttrs { stride: 8, ..base.clone() },
            RunAttrs { tail: "drop".into(), ..base.clone() },
        ];
        let names = ["checkpoint", "layer", "model config c3d.channels", "precision", "frame_size", "clip_frames"];
        let names = names.iter().chain(&["stride", "tail"]);
        for (variant, name) in variants.iter().zip(names) {
            assert_ne!(variant.fingerprint(), base.fingerprint(), "{name}");
            let diff = variant.differences(&base);
            assert_eq!(diff.len(), 1, "{diff:?}");
            assert!(diff[0].starts_with(&format!("{name}: ")), "{diff:?}");
        }
        assert_eq!(variants[0].differences(&base), ["checkpoint: abc (earlier run) vs random-init:1 (this run)"],);
        assert!(variants[2].differences(&base)[0].contains("[2,2,4,4,4] (earlier run) vs [2,2,4,4,8] (this run)"));
        assert_eq!(base.fingerprint(), attrs("projection", "abc").fingerprint(), "the fingerprint is stable");
        assert!(base.differences(&base.clone()).is_empty());
        let json = base.to_json();
        assert_eq!(RunAttrs::from_json(&json).unwrap(), base);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["fingerprint"], base.fingerprint());
    }

    #[test]
    fn a_file_missing_a_video_is_found_out_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        let recs = vec![record("a", 1, 2, 0.0), record("c", 2, 2, 1.0)];
        let expected: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        write_hdf5(&path, "c3d_features", &RunAttrs::default(), &recs).unwrap();
        assert_eq!(missing_videos(&path, &Layout::from("c3d_features"), &expected).unwrap(), ["b", "d"]);
        // A group without the dataset holds no features.
        assert_eq!(missing_videos(&path, &Layout::from("other"), &expected[..1]).unwrap(), ["a"]);
        write_hdf5(&path, Layout::Flat, &RunAttrs::default(), &recs).unwrap();
        assert_eq!(missing_videos(&path, &Layout::Flat, &expected).unwrap(), ["b", "d"]);
        assert!(missing_videos(&path, &Layout::Flat, &expected[..1]).unwrap().is_empty());
        let message = missing_message(&path, &["b".into(), "d".into()], 4);
        assert!(message.contains("f.h5") && message.contains("lacks 2 of the 4 videos") && message.ends_with("b, d"));
    }

    #[test]
    fn an_uncommitted_file_leaves_the_earlier_one_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.h5");
        write_hdf5(&path, "c3d_features", &attrs("projection", "earlier"), &[record("old", 1, 2, 0.0)]).unwrap();
        let earlier = std::fs::read(&path).unwrap();
        let records = vec![Ok(record("new", 1, 2, 5.0))];
        let pending = write_hdf5_pending(&path, "c3d_features", &attrs("projection", "later"), records).unwrap();
        assert!(pending.temp_path().exists());
        assert_eq!(list_videos(pending.temp_path()).unwrap(), ["new"]);
        drop(pending);
        assert!(!temporary_sibling(&path).exists(), "the uncommitted file is removed");
        assert_eq!(std::fs::read(&path).unwrap(), earlier, "the earlier file is untouched");

        let pending = write_hdf5_pending(&path, "c3d_features", &attrs("projection", "later"), vec![]).unwrap();
        pending.commit().unwrap();
        assert_eq!(read_attrs(&path).unwrap().checkpoint, "later");
        assert!(!temporary_sibling(&path).exists());

        // An assembly that fails midway removes its temporary file too.
        let bad = SpoolRecord { features: vec![1.0], ..record("bad", 2, 2, 0.0) };
        assert!(write_hdf5_pending(&path, "c3d_features", &RunAttrs::default(), vec![Ok(bad)]).is_err());
        assert!(!temporary_sibling(&path).exists());
        assert_eq!(read_attrs(&path).unwrap().checkpoint, "later");
    }

    #[test]
    fn the_flat_layout_puts_one_dataset_per_video_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flat.h5");
        let run = RunAttrs { stride: 8, ..attrs("fc6", "abc") };
        let recs = vec![record("vidA", 3, 4, 0.0), record("b", 2, 4, 7.0)];
        write_hdf5(&path, Layout::Flat, &run, &recs).unwrap();
        let file = hdf5::File::open(&path).unwrap();
        let ds = file.dataset("vidA").expect("f[vid] is the dataset itself");
        assert_eq!(ds.shape(), [3, 4]);
        assert_eq!(ds.read_raw::<f32>().unwrap(), recs[0].features);
        assert_eq!(ds.attr("stride").unwrap().read_scalar::<u32>().unwrap(), 8);
        assert!(file.group("vidA").is_err(), "no group in the flat layout");
        let all = read_all(&path, Layout::Flat).unwrap();
        assert_eq!(all["b"], (recs[1].features.clone(), [2, 4]));
        assert!(read_all(&path, "c3d_features").is_err(), "the group layout's path does not exist here");
    }

    #[test]
    fn videos_are_read_with_their_timing_in_either_layout() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunAttrs {
            clip_frames: 16,
            stride: 8,
            layer: "projection".into(),
            checkpoint: "abc".into(),
            ..RunAttrs::default()
        };
        let recs = vec![record("a", 3, 2, 0.0), record("b", 1, 2, 1.0)];
        for (name, layout) in [("g.h5", Layout::from("c3d_features")), ("f.h5", Layout::Flat)] {
            let path = dir.path().join(name);
            write_hdf5(&path, &layout, &run, &recs).unwrap();
            assert_eq!(detect_layout(&path, "c3d_features").unwrap(), layout);
            let videos: Vec<StoredVideo> =
                read_videos(&path, &layout).unwrap().into_iter().map(Result::unwrap).collect();
            assert_eq!(videos.len(), 2);
            assert_eq!((videos[0].video_id.as_str(), videos[0].clips, videos[0].dim), ("a", 3, 2));
            assert_eq!(videos[0].duration_s(), Some(40.0 / 25.0));
            assert_eq!(file_attr(&path, "checkpoint").as_deref(), Some("abc"));
        }
        // A file from elsewhere: no attributes, no duration.
        let path = dir.path().join("bare.h5");
        let file = hdf5::File::create(&path).unwrap();
        file.new_dataset::<f32>().shape([2, 2]).create("v").unwrap().write_raw(&[1f32, 2.0, 3.0, 4.0]).unwrap();
        drop(file);
        let v = read_videos(&path, &Layout::Flat).unwrap().remove(0).unwrap();
        assert_eq!((v.fps, v.duration_s()), (None, None));
        assert!(detect_layout(&dir.path().join("missing.h5"), "x").is_err());
    }

    #[test]
    fn duplicate_video_ids_are_an_error_naming_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        let recs = vec![record("v", 1, 2, 0.0), record("v", 1, 2, 1.0)];
        for layout in [Layout::from("c3d_features"), Layout::Flat] {
            let err = format!("{:#}", write_hdf5(&path, &layout, &RunAttrs::default(), &recs).unwrap_err());
            assert!(err.contains("\"v\""), "{layout:?}: {err}");
            assert!(!path.exists(), "{layout:?}: a failed assembly must not leave a final file");
        }
    }
}
