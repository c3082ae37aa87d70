//! One video's features as a NumPy `.npy` file: float32, C order,
//! `[num_clips, dim]`, readable with `numpy.load` (format version 1.0, as
//! `numpy.save` writes small arrays). A file is written under a temporary
//! name in the same folder and renamed when complete, so a file with the
//! final name is always whole.
//!
//! The folder's [`FINGERPRINT_FILE`] records the [`RunAttrs`] of its
//! features (the arrays have no room for attributes), so that a run with
//! other weights or preprocessing does not add its files to them.

use crate::{not_held, temporary_sibling, RunAttrs};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The header of a float32 C-order array of `shape`: magic, version 1.0,
/// the length, and the dict padded with spaces so that the data starts at
/// a multiple of 64 bytes, as NumPy itself aligns it.
pub fn header(shape: [usize; 2]) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", shape[0], shape[1]);
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + padding, b' ');
    out.push(b'\n');
    out
}

/// Writes `values` (row-major `shape`) to `path` atomically: a temporary
/// sibling is written and flushed to disk, then renamed into place.
pub fn write_npy(path: &Path, shape: [usize; 2], values: &[f32]) -> Result<()> {
    if values.len() != shape[0] * shape[1] {
        bail!("{}: {} values for shape {shape:?}", path.display(), values.len());
    }
    let tmp = temporary_sibling(path);
    let written = write_file(&tmp, shape, values).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the folder's entry is.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_file(path: &Path, shape: [usize; 2], values: &[f32]) -> Result<()> {
    let context = || format!("{}: cannot write", path.display());
    let file = std::fs::File::create(path).with_context(context)?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    w.write_all(&header(shape)).with_context(context)?;
    for v in values {
        w.write_all(&v.to_le_bytes()).with_context(context)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error()).with_context(context)?;
    file.sync_all().with_context(context)?;
    Ok(())
}

/// The video ids of a folder of features: the stems of its `.npy` files.
/// Hidden files (a temporary `.<id>.npy.partial` among them) are no
/// video's. A missing folder holds none.
pub fn videos_in(dir: &Path) -> Result<BTreeSet<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read the feature folder", dir.display())),
    };
    let mut ids = BTreeSet::new();
    for entry in entries {
        let name = entry.with_context(|| format!("{}: cannot read the feature folder", dir.display()))?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".npy").filter(|id| !id.is_empty() && !id.starts_with('.')) {
            ids.insert(id.to_string());
        }
    }
    Ok(ids)
}

/// Removes the temporary files a killed run left in `dir` (never the
/// final names, which only complete files get); returns how many.
pub fn remove_partials(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".npy.partial") {
            std::fs::remove_file(entry.path()).with_context(|| format!("{}: cannot remove", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The sidecar file of a feature folder: the [`RunAttrs`] of its features
/// as JSON, with their fingerprint. Hidden, so that loaders that list the
/// folder see `.npy` files only.
pub const FINGERPRINT_FILE: &str = ".fingerprint.json";

/// Writes `attrs` to `dir`'s [`FINGERPRINT_FILE`], atomically.
pub fn write_fingerprint(dir: &Path, attrs: &RunAttrs) -> Result<()> {
    let path = dir.join(FINGERPRINT_FILE);
    let tmp = temporary_sibling(&path);
    let context = || format!("{}: cannot write", path.display());
    let written = std::fs::write(&tmp, attrs.to_json())
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(context);
    }
    Ok(())
}

/// The attributes `dir`'s [`FINGERPRINT_FILE`] records; `None` when it has
/// none.
pub fn read_fingerprint(dir: &Path) -> Result<Option<RunAttrs>> {
    let path = dir.join(FINGERPRINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => RunAttrs::from_json(&bytes).map(Some).with_context(|| format!("{}: unreadable", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// The ids of `expected` that have no `.npy` file in `dir`, sorted.
pub fn missing_videos<'a>(dir: &Path, expected: impl IntoIterator<Item = &'a String>) -> Result<Vec<String>> {
    Ok(not_held(expected, &videos_in(dir)?))
}

/// Reads a 2-D little-endian float32 C-order `.npy` file (what
/// [`write_npy`] writes): (values row-major, shape).
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, [usize; 2])> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: not a float32 [rows, cols] .npy file: {why}", path.display());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("no NumPy magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let dict = bytes.get(start..start + len).ok_or_else(|| bad("header cut short"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| bad("header is not text"))?;
    let value = |key: &str| -> Option<&str> {
        let at = dict.find(&format!("'{key}':"))? + key.len() + 3;
        let rest = dict[at..].trim_start();
        let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
        Some(rest[..end].trim())
    };
    if value("descr") != Some("'<f4'") {
        return Err(bad(&format!("dtype {}", value("descr").unwrap_or("?"))));
    }
    if value("fortran_order") != Some("False") {
        return Err(bad("Fortran order"));
    }
    let dims: Vec<usize> = value("shape")
        .ok_or_else(|| bad("no shape"))?
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| bad("shape is not integers")))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else { return Err(bad(&format!("{} dimensions", dims.len()))) };
    let data = &bytes[start + len..];
    if data.len() != rows * cols * 4 {
        return Err(bad(&format!("{} data bytes for shape ({rows}, {cols})", data.len())));
    }
    let values = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    Ok((values, [rows, cols]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_starts_at_a_multiple_of_64_and_the_header_ends_in_a_newline() {
        for shape in [[1, 1], [3, 4096], [123_456, 256]] {
            let h = header(shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        }
    }

    #[test]
    fn round_trip_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vid.npy");
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        write_npy(&path, [3, 4], &values).unwrap();
        assert_eq!(read_npy(&path).unwrap(), (values, [3, 4]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the final file remains");
    }

    #[test]
    fn the_folder_lists_complete_files_only_and_partials_can_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(videos_in(&dir.path().join("missing")).unwrap().is_empty());
        write_npy(&dir.path().join("a.npy"), [1, 2], &[1.0, 2.0]).unwrap();
        write_npy(&dir.path().join("b.c.npy"), [1, 2], &[1.0, 2.0]).unwrap();
        std::fs::write(dir.path().join(".d.npy.partial"), b"\x93NUMPY").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let ids: Vec<String> = videos_in(dir.path()).unwrap().into_iter().collect();
        assert_eq!(ids, ["a", "b.c"]);
        assert_eq!(remove_partials(dir.path()).unwrap(), 1);
        assert!(!dir.path().join(".d.npy.partial").exists());
        assert!(dir.path().join("a.npy").exists() && dir.path().join("notes.txt").exists());
    }

    #[test]
    fn a_wrong_value_count_leaves_no_file_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        assert!(write_npy(&path, [2, 2], &[1.0; 3]).is_err());
        assert!(!path.exists() && !temporary_sibling(&path).exists());
        std::fs::write(&path, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}").unwrap();
        let err = format!("{:#}", read_npy(&path).unwrap_err());
        assert!(err.contains("v.npy") && err.contains("<f8"), "{err}");
    }

    #[test]
    fn the_fingerprint_file_round_trips_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_fingerprint(dir.path()).unwrap(), None);
        let attrs = RunAttrs { checkpoint: "random-init:3".into(), clip_frames: 16, ..RunAttrs::default() };
        write_fingerprint(dir.path(), &attrs).unwrap();
        assert_eq!(read_fingerprint(dir.path()).unwrap(), Some(attrs));
        write_npy(&dir.path().join("a.npy"), [1, 1], &[1.0]).unwrap();
        assert_eq!(videos_in(dir.path()).unwrap().len(), 1, "the sidecar is no video's");
        let expected = ["a", "b"].map(String::from);
        assert_eq!(missing_videos(dir.path(), &expected).unwrap(), ["b"]);
        std::fs::write(dir.path().join(FINGERPRINT_FILE), b"{").unwrap();
        let err = format!("{:#}", read_fingerprint(dir.path()).unwrap_err());
        assert!(err.contains(FINGERPRINT_FILE), "{err}");
    }
}
