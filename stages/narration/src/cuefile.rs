//! Block structure shared by WebVTT and SubRip: blank-line separated blocks,
//! an optional identifier, a `start --> end` timing line, payload lines.
//!
//! Real files bend the structure: blank lines inside SRT cue text, missing
//! blank lines between cues, and WebVTT files whose first YouTube cue lost
//! its whitespace-only payload line to an editor. The splitter recovers what
//! it can and reports the rest per cue.

use std::path::Path;

use crate::error::{Location, NarrationError};
use crate::text::{parse_timestamp, TimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    WebVtt,
    Srt,
}

/// A cue before its text is cleaned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawCue {
    /// Line of the timing line.
    pub line: usize,
    pub start: f64,
    pub end: f64,
    pub payload: Vec<String>,
}

fn is_blank(line: &str, flavor: Flavor) -> bool {
    match flavor {
        // YouTube's rolling cues begin with a payload line holding one space;
        // the WebVTT spec counts only empty lines as separators.
        Flavor::WebVtt => line.is_empty(),
        Flavor::Srt => line.trim().is_empty(),
    }
}

fn is_index(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn is_webvtt_metadata_block(first: &str) -> bool {
    ["NOTE", "STYLE", "REGION"]
        .iter()
        .any(|keyword| first.strip_prefix(keyword).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t'])))
}

fn time_error(error: TimeError, at: Location) -> NarrationError {
    match error {
        TimeError::Malformed(message) => NarrationError::malformed(at, message),
        TimeError::Negative(value) => NarrationError::InvalidTime { at, value },
    }
}

/// Reads `start --> end [settings]`; cue settings after the end time are
/// ignored (they only position text on screen).
pub(crate) fn parse_timing(line: &str, at: Location) -> Result<(f64, f64), NarrationError> {
    let (left, right) =
        line.split_once("-->").ok_or_else(|| NarrationError::malformed(at.clone(), "expected `start --> end`"))?;
    let start = parse_timestamp(left).map_err(|e| time_error(e, at.clone()))?;
    let end_text = right.split_whitespace().next().unwrap_or("");
    let end = parse_timestamp(end_text).map_err(|e| time_error(e, at.clone()))?;
    if end < start {
        return Err(NarrationError::InvertedTime { at, start, end });
    }
    Ok((start, end))
}

struct Splitter<'a> {
    file: &'a Path,
    flavor: Flavor,
    cues: Vec<RawCue>,
    errors: Vec<NarrationError>,
    /// The cue that text without a timing line may still belong to.
    open_cue: Option<usize>,
}

impl Splitter<'_> {
    fn at(&self, line: usize) -> Location {
        Location::line(self.file, line)
    }

    fn orphan_text(&mut self, lines: &[(usize, &str)], directly_after_cue: bool) {
        let Some(&(first_no, first)) = lines.first() else {
            return;
        };
        let target = match self.flavor {
            // Only the editor-stripped YouTube case: a cue with no payload at
            // all, followed at once by its text.
            Flavor::WebVtt => self.open_cue.filter(|&i| directly_after_cue && self.cues[i].payload.is_empty()),
            Flavor::Srt => {
                if is_index(first) && lines.len() > 1 {
                    self.errors.push(NarrationError::malformed(
                        self.at(lines[1].0),
                        format!("cue {} has no `start --> end` timing line", first.trim()),
                    ));
                    self.open_cue = None;
                    return;
                }
                self.open_cue
            }
        };
        match target {
            Some(i) => self.cues[i].payload.extend(lines.iter().map(|(_, l)| (*l).to_owned())),
            None => {
                self.errors.push(NarrationError::malformed(
                    self.at(first_no),
                    "text outside any cue (no `start --> end` line before it)",
                ));
                self.open_cue = None;
            }
        }
    }

    fn block(&mut self, block: &[(usize, &str)], directly_after_cue: bool) {
        if self.flavor == Flavor::WebVtt && is_webvtt_metadata_block(block[0].1) {
            self.open_cue = None;
            return;
        }
        let arrows: Vec<usize> =
            block.iter().enumerate().filter(|(_, (_, l))| l.contains("-->")).map(|(i, _)| i).collect();
        let Some(&first_arrow) = arrows.first() else {
            self.orphan_text(block, directly_after_cue);
            return;
        };
        // The line right before the first timing line is the cue identifier
        // (the SRT index); anything before that is stray text.
        let leading = first_arrow.saturating_sub(1);
        if leading > 0 {
            self.orphan_text(&block[..leading], directly_after_cue);
        }
        for (k, &arrow) in arrows.iter().enumerate() {
            let mut end = arrows.get(k + 1).copied().unwrap_or(block.len());
            if end < block.len() && end - 1 > arrow && is_index(block[end - 1].1) {
                end -= 1;
            }
            let (line_no, timing) = block[arrow];
            match parse_timing(timing, self.at(line_no)) {
                Ok((start, stop)) => {
                    self.cues.push(RawCue {
                        line: line_no,
                        start,
                        end: stop,
                        payload: block[arrow + 1..end].iter().map(|(_, l)| (*l).to_owned()).collect(),
                    });
                    self.open_cue = Some(self.cues.len() - 1);
                }
                Err(e) => {
                    self.errors.push(e);
                    self.open_cue = None;
                }
            }
        }
    }
}

/// Splits numbered body lines into cues.
pub(crate) fn split_cues(lines: &[(usize, &str)], flavor: Flavor, file: &Path) -> (Vec<RawCue>, Vec<NarrationError>) {
    let mut splitter = Splitter { file, flavor, cues: Vec::new(), errors: Vec::new(), open_cue: None };
    let mut start = 0;
    let mut previous_block_had_cue = false;
    while start < lines.len() {
        if is_blank(lines[start].1, flavor) {
            start += 1;
            continue;
        }
        let end = lines[start..].iter().position(|(_, l)| is_blank(l, flavor)).map_or(lines.len(), |p| start + p);
        let cues_before = splitter.cues.len();
        splitter.block(&lines[start..end], previous_block_had_cue);
        previous_block_had_cue = splitter.cues.len() > cues_before;
        start = end;
    }
    (splitter.cues, splitter.errors)
}
