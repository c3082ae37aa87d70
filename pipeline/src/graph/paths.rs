//! Resolving relative paths in options.
//!
//! A relative path means what the person who wrote it would expect: in a
//! graph file, relative to the folder holding the file (so a graph runs the
//! same from any working directory); on the command line (`--set`) or as a
//! built-in default, relative to the working directory; and for outputs
//! (`hdf5_writer.path`, `checkpoints.dir`, `metrics.path`/`plot`), relative
//! to `run.output_dir` wherever they were written.

use std::path::{Component, Path, PathBuf};

use super::source::{Document, Origin};

/// Resolves the paths of one options table; handed to each options type's
/// `resolve_paths`.
pub struct PathResolver<'a> {
    pub(crate) doc: &'a Document,
    pub(crate) prefix: Vec<String>,
    pub(crate) graph_dir: &'a Path,
    pub(crate) cwd: &'a Path,
    pub(crate) output_dir: Option<&'a Path>,
}

impl PathResolver<'_> {
    /// An input path held by option `key`: relative to the graph file's
    /// folder if the key was written in the file, else to the working
    /// directory.
    pub fn input(&self, key: &str, path: &mut PathBuf) {
        let mut key_path = self.prefix.clone();
        key_path.push(key.to_string());
        let base = match self.doc.exact_origin(&key_path) {
            Some(Origin::Line(_)) => self.graph_dir,
            Some(Origin::Set(_)) | None => self.cwd,
        };
        *path = join_clean(base, path);
    }

    /// [`PathResolver::input`] for an optional path.
    pub fn input_opt(&self, key: &str, path: &mut Option<PathBuf>) {
        if let Some(path) = path {
            self.input(key, path);
        }
    }

    /// An output path: relative to `run.output_dir`.
    pub fn output(&self, path: &mut PathBuf) {
        if let Some(dir) = self.output_dir {
            *path = join_clean(dir, path);
        }
    }
}

/// `base.join(rel)` without `.` components and with leading `..` components
/// applied to `base`. Callers pass a `base` free of symlinks (a
/// canonicalised folder or the working directory), so popping a component
/// for `..` names the same folder the OS would; `..` after a component of
/// `rel` is kept, since that component may be a symlink.
pub(crate) fn join_clean(base: &Path, rel: &Path) -> PathBuf {
    if rel.is_absolute() {
        return rel.to_path_buf();
    }
    let mut out = base.to_path_buf();
    let mut leading = true;
    for component in rel.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if leading && out.parent().is_some() => {
                out.pop();
            }
            other => {
                leading = false;
                out.push(other.as_os_str());
            }
        }
    }
    out
}
