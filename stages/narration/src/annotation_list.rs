//! The released LocVTP annotation list: one caption clip per line,
//! `video_id start_s end_s fps duration_s # caption`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::align::CaptionClip;
use crate::decode::{numbered_lines, read_text_file};
use crate::error::{Location, NarrationError};
use crate::Parsed;

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotatedClip {
    pub video_id: String,
    pub start_s: f64,
    pub end_s: f64,
    pub fps: f64,
    pub duration_s: f64,
    pub caption: String,
}

impl AnnotatedClip {
    /// The line as the released code reads it. Whitespace runs in the
    /// caption, newlines included, become one space so that the clip stays
    /// on one line.
    pub fn to_line(&self) -> String {
        let caption: Vec<&str> = self.caption.split_whitespace().collect();
        format!(
            "{} {} {} {} {} # {}",
            self.video_id,
            self.start_s,
            self.end_s,
            self.fps,
            self.duration_s,
            caption.join(" ")
        )
    }

    /// The caption clip, without word times (the list has none).
    pub fn to_caption_clip(&self) -> CaptionClip {
        CaptionClip {
            video_id: self.video_id.clone(),
            start_s: self.start_s,
            end_s: self.end_s,
            text: self.caption.clone(),
            words: Vec::new(),
        }
    }
}

fn number(token: &str, name: &str, at: &Location) -> Result<f64, NarrationError> {
    let value: f64 = token
        .parse()
        .map_err(|_| NarrationError::malformed(at.clone(), format!("{name} {token:?} is not a number")))?;
    if !value.is_finite() || value < 0.0 {
        return Err(NarrationError::InvalidTime { at: at.clone(), value });
    }
    Ok(value)
}

fn parse_line(line: &str, at: &Location) -> Result<AnnotatedClip, NarrationError> {
    let (fields, caption) = line
        .split_once('#')
        .ok_or_else(|| NarrationError::malformed(at.clone(), "expected `video_id start end fps duration # caption`"))?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let [video_id, start, end, fps, duration] = fields.as_slice() else {
        return Err(NarrationError::malformed(
            at.clone(),
            format!("expected 5 fields before `#` (video_id start end fps duration), found {}", fields.len()),
        ));
    };
    let start_s = number(start, "start", at)?;
    let end_s = number(end, "end", at)?;
    let fps = number(fps, "fps", at)?;
    let duration_s = number(duration, "duration", at)?;
    if end_s < start_s {
        return Err(NarrationError::InvertedTime { at: at.clone(), start: start_s, end: end_s });
    }
    if fps == 0.0 {
        return Err(NarrationError::malformed(at.clone(), "fps is 0"));
    }
    Ok(AnnotatedClip {
        video_id: (*video_id).to_owned(),
        start_s,
        end_s,
        fps,
        duration_s,
        caption: caption.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// Parses a list. Blank lines and lines starting with `#` are skipped.
pub fn parse_str(text: &str, file: &Path) -> Parsed<AnnotatedClip> {
    let mut parsed = Parsed::default();
    for (line_no, line) in numbered_lines(text.trim_start_matches('\u{FEFF}')) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, &Location::line(file, line_no)) {
            Ok(clip) => parsed.items.push(clip),
            Err(e) => parsed.errors.push(e),
        }
    }
    parsed
}

/// Reads a list from disk; `Err` only when the file cannot be read at all.
pub fn read_file(path: &Path) -> Result<Parsed<AnnotatedClip>, NarrationError> {
    let (text, warning) = read_text_file(path)?;
    let mut parsed = parse_str(&text, path);
    parsed.warnings.extend(warning);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Warning;

    #[test]
    fn lines_parse_and_bad_lines_are_reported() {
        let text = "\u{FEFF}# header comment\r\n\
nVbIUDjzWY4 1.2 7.3 29.97 312.5 # so today we are # going to make\r\n\
\r\n\
abc 5 4 30 10 # inverted\r\n\
abc 1 2 30 # too few\r\n\
abc 1 2 30 10 no hash\r\n\
abc 1 x 30 10 # not a number\r\n\
abc 0 2 0 10 # zero fps\r\n\
xyz 0 2.5 25 60 #no space\r\n";
        let parsed = parse_str(text, Path::new("list.txt"));
        assert_eq!(parsed.items.len(), 2);
        let first = &parsed.items[0];
        assert_eq!(first.video_id, "nVbIUDjzWY4");
        assert_eq!((first.start_s, first.end_s, first.fps, first.duration_s), (1.2, 7.3, 29.97, 312.5));
        assert_eq!(first.caption, "so today we are # going to make");
        assert_eq!(parsed.items[1].caption, "no space");

        let lines: Vec<Option<usize>> = parsed.errors.iter().map(|e| e.location().unwrap().line).collect();
        assert_eq!(lines, [Some(4), Some(5), Some(6), Some(7), Some(8)]);
        assert!(matches!(parsed.errors[0], NarrationError::InvertedTime { .. }));
        assert!(parsed.errors[1].to_string().contains("found 4"));
    }

    #[test]
    fn to_line_round_trips() {
        let clip = AnnotatedClip {
            video_id: "v1".into(),
            start_s: 0.1,
            end_s: 4.25,
            fps: 30.0,
            duration_s: 100.0,
            caption: "two\nlines  here".into(),
        };
        let line = clip.to_line();
        assert_eq!(line, "v1 0.1 4.25 30 100 # two lines here");
        let parsed = parse_str(&line, Path::new("l"));
        assert_eq!(parsed.items, [AnnotatedClip { caption: "two lines here".into(), ..clip.clone() }]);
        let caption_clip = clip.to_caption_clip();
        assert_eq!((caption_clip.start_s, caption_clip.end_s), (0.1, 4.25));
    }

    #[test]
    fn latin1_list_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, b"v 0 1 30 5 # jalape\xF1o\n").unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(parsed.items[0].caption, "jalapeño");
        assert!(
            matches!(parsed.warnings.as_slice(), [Warning::DecodedAs { encoding, .. }] if encoding == "windows-1252")
        );
    }
}
