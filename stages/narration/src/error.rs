//! Errors and warnings of the narration readers.
//!
//! Every problem names the file and, where the format allows, the line,
//! column, video id and item index, so that one bad cue in a file of
//! thousands can be found and fixed by hand.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in an input a problem was found.
///
/// Only the file is always known: streamed JSON knows the video and line but
/// text formats have no video id, and stream-level JSON errors have a column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Location {
    /// The input file (or the name given to an in-memory parse).
    pub file: PathBuf,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The video the item belongs to.
    pub video_id: Option<String>,
    /// 0-based index of the cue or query within its video.
    pub item: Option<usize>,
}

impl Location {
    /// A location naming only the file.
    pub fn file(file: &Path) -> Self {
        Self { file: file.to_path_buf(), ..Self::default() }
    }

    /// A location naming the file and a 1-based line.
    pub fn line(file: &Path, line: usize) -> Self {
        Self { line: Some(line), ..Self::file(file) }
    }

    /// Adds the video id.
    pub fn with_video(mut self, video_id: &str) -> Self {
        self.video_id = Some(video_id.to_owned());
        self
    }

    /// Adds the index of the item within its video.
    pub fn with_item(mut self, item: usize) -> Self {
        self.item = Some(item);
        self
    }

    /// Adds a 1-based column.
    pub fn with_column(mut self, column: usize) -> Self {
        self.column = Some(column);
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        match (&self.video_id, self.item) {
            (Some(video), Some(item)) => write!(f, " (video {video}, item {item})"),
            (Some(video), None) => write!(f, " (video {video})"),
            (None, Some(item)) => write!(f, " (item {item})"),
            (None, None) => Ok(()),
        }
    }
}

/// A problem with a file or with one item in it.
///
/// Readers return item-level errors next to the items they could read; only
/// errors that make a whole file unreadable (I/O, unknown extension) are
/// returned as `Err`.
#[derive(Debug, thiserror::Error)]
pub enum NarrationError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `read_subtitle_file` was given a file it has no reader for.
    #[error("{}: unsupported subtitle extension (expected .vtt or .srt)", file.display())]
    UnsupportedExtension { file: PathBuf },
    /// A JSON file ends before its top-level object is closed.
    #[error("{at}: JSON ends early (truncated file?): {message}")]
    Truncated { at: Location, message: String },
    /// A JSON syntax error; everything after it is unreadable.
    #[error("{at}: invalid JSON: {message}")]
    Json { at: Location, message: String },
    /// A line, field or value that does not have the expected form.
    #[error("{at}: {message}")]
    Malformed { at: Location, message: String },
    /// Arrays that must run in parallel (start/end/text, timestamps/sentences)
    /// have different lengths, so no item of the video can be trusted.
    #[error("{at}: parallel arrays differ in length ({detail})")]
    LengthMismatch { at: Location, detail: String },
    /// An item whose end lies before its start.
    #[error("{at}: end time {end} s is before start time {start} s")]
    InvertedTime { at: Location, start: f64, end: f64 },
    /// A negative or non-finite time.
    #[error("{at}: time {value} is negative or not finite")]
    InvalidTime { at: Location, value: f64 },
    /// A moment whose start equals its end: nothing to localise.
    #[error("{at}: empty moment (start and end are both {time} s)")]
    EmptyMoment { at: Location, time: f64 },
    /// A moment that lies wholly outside its video, so clamping it to the
    /// video leaves nothing.
    #[error("{at}: moment {start}-{end} s lies outside the video (0-{duration} s)")]
    OutsideVideo { at: Location, start: f64, end: f64, duration: f64 },
    /// An `AlignConfig` whose values contradict each other.
    #[error("invalid alignment config: {0}")]
    Config(String),
}

impl NarrationError {
    /// The location of an item-level error; `None` for file-level ones.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Truncated { at, .. }
            | Self::Json { at, .. }
            | Self::Malformed { at, .. }
            | Self::LengthMismatch { at, .. }
            | Self::InvertedTime { at, .. }
            | Self::InvalidTime { at, .. }
            | Self::EmptyMoment { at, .. }
            | Self::OutsideVideo { at, .. } => Some(at),
            Self::Io { .. } | Self::UnsupportedExtension { .. } | Self::Config(_) => None,
        }
    }

    pub(crate) fn malformed(at: Location, message: impl Into<String>) -> Self {
        Self::Malformed { at, message: message.into() }
    }

    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        Self::Io { file: file.to_path_buf(), source }
    }
}

/// Something a reader recovered from; the data it returned is usable.
#[derive(Debug)]
pub enum Warning {
    /// The file is not valid UTF-8 and was decoded with the legacy
    /// encoding detected from its bytes.
    DecodedAs {
        file: PathBuf,
        /// The encoding's WHATWG name, e.g. `windows-1251`, `ISO-8859-2`.
        encoding: String,
        /// Byte offset of the first byte that is not valid UTF-8.
        first_invalid_byte: usize,
    },
    /// A `.vtt` file without the `WEBVTT` signature; it was read anyway.
    MissingWebVttHeader { file: PathBuf },
    /// An item was skipped for this reason; the rest of the file was read.
    Skipped(NarrationError),
    /// A moment reaching before 0 or past its video's end was clamped to
    /// the video and kept (ActivityNet Captions has such timestamps).
    Clamped { at: Location, from: (f64, f64), to: (f64, f64), duration: Option<f64> },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DecodedAs { file, encoding, first_invalid_byte } => {
                write!(
                    f,
                    "{}: not valid UTF-8 (byte {first_invalid_byte}), decoded as {encoding} (detected)",
                    file.display()
                )
            }
            Self::MissingWebVttHeader { file } => {
                write!(f, "{}: no WEBVTT header line, read anyway", file.display())
            }
            Self::Skipped(error) => write!(f, "skipped: {error}"),
            Self::Clamped { at, from, to, duration } => {
                write!(f, "{at}: moment {}-{} s clamped to {}-{} s", from.0, from.1, to.0, to.1)?;
                match duration {
                    Some(d) => write!(f, " (the video lasts {d} s)"),
                    None => write!(f, " (times cannot be negative)"),
                }
            }
        }
    }
}
