//! Narration in, caption clips out: readers for the subtitle formats users
//! have on disk and the alignment that turns short ASR cues into training
//! caption clips.
//!
//! Readers never panic on bad input and never drop an item silently: what
//! they cannot read comes back as a [`NarrationError`] naming the file, the
//! line where known, and what is wrong, next to everything they could read.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod align;
pub mod annotation_list;
mod cuefile;
mod decode;
pub mod error;
pub mod grounding;
pub mod howto100m;
mod json_stream;
pub mod srt;
mod text;
pub mod webvtt;

pub use align::{AlignConfig, CaptionClip, DropReason};
pub use error::{Location, NarrationError, Warning};

/// A word and the time it is spoken, when the source gives word timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// Seconds from the start of the video.
    pub start: f64,
    pub text: String,
}

/// One subtitle cue: cleaned text over a time span, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    /// Plain text: markup, entities and sound tags resolved, whitespace
    /// collapsed. May be empty (a cue that held only `[Music]`); alignment
    /// drops such cues with a reason.
    pub text: String,
    /// Per-word start times; empty when the source has none.
    pub words: Vec<Word>,
}

/// The cues of one video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoCues {
    pub video_id: String,
    pub cues: Vec<Cue>,
}

/// What a reader got out of one input: the items it could read, an error
/// for each item it could not, and warnings about what it recovered from.
#[derive(Debug)]
pub struct Parsed<T> {
    pub items: Vec<T>,
    pub errors: Vec<NarrationError>,
    pub warnings: Vec<Warning>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Self { items: Vec::new(), errors: Vec::new(), warnings: Vec::new() }
    }
}

impl<T> Parsed<T> {
    /// Folds the item errors into the warnings as [`Warning::Skipped`], for
    /// callers that only distinguish "usable" from "not".
    pub fn into_items_and_warnings(self) -> (Vec<T>, Vec<Warning>) {
        let mut warnings = self.warnings;
        warnings.extend(self.errors.into_iter().map(Warning::Skipped));
        (self.items, warnings)
    }
}

/// Reads a `.vtt` or `.srt` file (extension matched case-insensitively).
/// Cues that could not be read come back as [`Warning::Skipped`].
pub fn read_subtitle_file(path: &Path) -> Result<(Vec<Cue>, Vec<Warning>), NarrationError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let parsed = match extension.as_deref() {
        Some("vtt") => webvtt::read_file(path)?,
        Some("srt") => srt::read_file(path)?,
        _ => return Err(NarrationError::UnsupportedExtension { file: path.to_path_buf() }),
    };
    Ok(parsed.into_items_and_warnings())
}

/// The video id a subtitle file belongs to: its name up to the first dot,
/// because downloaders write `<video_id>.<lang>.vtt` and YouTube ids never
/// contain a dot.
pub fn video_id_from_path(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let id = name.split('.').next().unwrap_or(name);
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn read_subtitle_file_picks_reader_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let vtt = dir.path().join("abc.en.VTT");
        std::fs::write(&vtt, "WEBVTT\n\n00:01.000 --> 00:02.000\nfrom vtt\n").unwrap();
        let srt = dir.path().join("abc.srt");
        let mut f = std::fs::File::create(&srt).unwrap();
        f.write_all(
            b"1\r\n00:00:01,000 --> 00:00:02,000\r\nfrom srt\r\n\r\n2\r\n00:00:03,000 --> 00:00:02,000\r\nbad\r\n",
        )
        .unwrap();
        drop(f);

        let (cues, warnings) = read_subtitle_file(&vtt).unwrap();
        assert_eq!(cues.len(), 1);
        assert_eq!(cues[0].text, "from vtt");
        assert!(warnings.is_empty());

        let (cues, warnings) = read_subtitle_file(&srt).unwrap();
        assert_eq!(cues.len(), 1);
        assert_eq!(cues[0].text, "from srt");
        assert_eq!(warnings.len(), 1);
        assert!(matches!(
            &warnings[0],
            Warning::Skipped(NarrationError::InvertedTime { at, .. }) if at.line == Some(6)
        ));

        let other = dir.path().join("abc.txt");
        std::fs::write(&other, "x").unwrap();
        assert!(matches!(read_subtitle_file(&other), Err(NarrationError::UnsupportedExtension { .. })));
        assert!(matches!(read_subtitle_file(&dir.path().join("missing.vtt")), Err(NarrationError::Io { .. })));
    }

    #[test]
    fn video_id_is_the_name_up_to_the_first_dot() {
        assert_eq!(video_id_from_path(Path::new("/d/nVbIUDjzWY4.en.vtt")).as_deref(), Some("nVbIUDjzWY4"));
        assert_eq!(video_id_from_path(Path::new("a-b_c.srt")).as_deref(), Some("a-b_c"));
        assert_eq!(video_id_from_path(Path::new(".hidden")), None);
    }
}

/// Format of narration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NarrationFormat {
    /// Chosen per file: `.vtt`/`.srt` by extension in a folder; a `.json`
    /// file is HowTo100M's, any other file a LocVTP caption list.
    #[default]
    Auto,
    Webvtt,
    Srt,
    /// HowTo100M's `caption.json`: per video, `start`, `end`, `text` arrays.
    Howto100mJson,
    /// The released LocVTP caption list, one clip a line.
    LocvtpList,
}
