//! Temporal grounding annotations for evaluation: Charades-STA text,
//! ActivityNet Captions JSON and TACoS (2D-TAN split) JSON, all read into
//! one [`GroundingQuery`] shape.

use std::ops::ControlFlow;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{numbered_lines, read_text_file};
use crate::error::{Location, NarrationError};
use crate::json_stream::{for_each_entry, StreamEnd};
use crate::Parsed;

/// One sentence to localise in one video, times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundingQuery {
    pub video_id: String,
    pub start_s: f64,
    pub end_s: f64,
    pub sentence: String,
    /// Known for ActivityNet and TACoS; Charades-STA lines do not carry it.
    pub duration_s: Option<f64>,
}

/// The annotation formats this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroundingFormat {
    /// `video_id start end##sentence` lines.
    #[default]
    CharadesSta,
    /// `{vid: {"duration", "timestamps", "sentences"}}`.
    #[serde(rename = "activitynet")]
    ActivityNet,
    /// 2D-TAN's `{vid: {"num_frames", "fps", "timestamps", "sentences"}}`.
    Tacos,
}

fn checked_span(start: f64, end: f64, at: &Location) -> Result<(f64, f64), NarrationError> {
    for value in [start, end] {
        if !value.is_finite() || value < 0.0 {
            return Err(NarrationError::InvalidTime { at: at.clone(), value });
        }
    }
    if end < start {
        return Err(NarrationError::InvertedTime { at: at.clone(), start, end });
    }
    Ok((start, end))
}

fn sentence(text: &str, at: &Location) -> Result<String, NarrationError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(NarrationError::malformed(at.clone(), "empty sentence"));
    }
    Ok(words.join(" "))
}

fn charades_line(line: &str, at: &Location) -> Result<GroundingQuery, NarrationError> {
    let (head, text) = line
        .split_once("##")
        .ok_or_else(|| NarrationError::malformed(at.clone(), "expected `video_id start end##sentence`"))?;
    let fields: Vec<&str> = head.split_whitespace().collect();
    let [video_id, start, end] = fields.as_slice() else {
        return Err(NarrationError::malformed(
            at.clone(),
            format!("expected `video_id start end` before `##`, found {} fields", fields.len()),
        ));
    };
    let parse = |token: &str, name: &str| {
        token
            .parse::<f64>()
            .map_err(|_| NarrationError::malformed(at.clone(), format!("{name} {token:?} is not a number")))
    };
    let (start_s, end_s) = checked_span(parse(start, "start")?, parse(end, "end")?, at)?;
    Ok(GroundingQuery {
        video_id: (*video_id).to_owned(),
        start_s,
        end_s,
        sentence: sentence(text, at)?,
        duration_s: None,
    })
}

/// Parses Charades-STA lines `video_id start end##sentence`.
pub fn parse_charades_sta(text: &str, file: &Path) -> Parsed<GroundingQuery> {
    let mut parsed = Parsed::default();
    for (line_no, line) in numbered_lines(text.trim_start_matches('\u{FEFF}')) {
        if line.trim().is_empty() {
            continue;
        }
        match charades_line(line.trim(), &Location::line(file, line_no)) {
            Ok(query) => parsed.items.push(query),
            Err(e) => parsed.errors.push(e),
        }
    }
    parsed
}

fn field<'v>(map: &'v serde_json::Map<String, Value>, name: &str, at: &Location) -> Result<&'v Value, NarrationError> {
    map.get(name).ok_or_else(|| NarrationError::malformed(at.clone(), format!("missing `{name}`")))
}

fn number(value: &Value, name: &str, at: &Location) -> Result<f64, NarrationError> {
    value.as_f64().ok_or_else(|| NarrationError::malformed(at.clone(), format!("`{name}` is not a number: {value}")))
}

fn array<'v>(value: &'v Value, name: &str, at: &Location) -> Result<&'v [Value], NarrationError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| NarrationError::malformed(at.clone(), format!("`{name}` is not an array")))
}

/// How one JSON format turns positions into seconds.
struct TimeBase {
    /// Seconds per timestamp unit (1 for seconds, 1/fps for frames).
    scale: f64,
    duration_s: f64,
}

fn activitynet_base(map: &serde_json::Map<String, Value>, at: &Location) -> Result<TimeBase, NarrationError> {
    let duration_s = number(field(map, "duration", at)?, "duration", at)?;
    if !duration_s.is_finite() || duration_s <= 0.0 {
        return Err(NarrationError::malformed(at.clone(), format!("duration {duration_s} is not positive")));
    }
    Ok(TimeBase { scale: 1.0, duration_s })
}

fn tacos_base(map: &serde_json::Map<String, Value>, at: &Location) -> Result<TimeBase, NarrationError> {
    let fps = number(field(map, "fps", at)?, "fps", at)?;
    let num_frames = number(field(map, "num_frames", at)?, "num_frames", at)?;
    if !fps.is_finite() || fps <= 0.0 {
        return Err(NarrationError::malformed(at.clone(), format!("fps {fps} is not positive")));
    }
    if !num_frames.is_finite() || num_frames <= 0.0 {
        return Err(NarrationError::malformed(at.clone(), format!("num_frames {num_frames} is not positive")));
    }
    Ok(TimeBase { scale: 1.0 / fps, duration_s: num_frames / fps })
}

type BaseFn = fn(&serde_json::Map<String, Value>, &Location) -> Result<TimeBase, NarrationError>;

fn json_video(video_id: &str, value: &Value, at: &Location, base: BaseFn, parsed: &mut Parsed<GroundingQuery>) {
    let video = || -> Result<(TimeBase, &[Value], &[Value]), NarrationError> {
        let map =
            value.as_object().ok_or_else(|| NarrationError::malformed(at.clone(), "expected an object per video"))?;
        let base = base(map, at)?;
        let spans = array(field(map, "timestamps", at)?, "timestamps", at)?;
        let sentences = array(field(map, "sentences", at)?, "sentences", at)?;
        if spans.len() != sentences.len() {
            return Err(NarrationError::LengthMismatch {
                at: at.clone(),
                detail: format!("timestamps {}, sentences {}", spans.len(), sentences.len()),
            });
        }
        Ok((base, spans, sentences))
    };
    let (base, spans, sentences) = match video() {
        Ok(v) => v,
        Err(e) => {
            parsed.errors.push(e);
            return;
        }
    };
    for (i, (span, text)) in spans.iter().zip(sentences).enumerate() {
        let at = at.clone().with_item(i);
        let query = (|| {
            let pair = match span.as_array().map(Vec::as_slice) {
                Some([s, e]) => (number(s, "start", &at)?, number(e, "end", &at)?),
                _ => {
                    return Err(NarrationError::malformed(
                        at.clone(),
                        format!("timestamp is not a [start, end] pair: {span}"),
                    ))
                }
            };
            let (start_s, end_s) = checked_span(pair.0 * base.scale, pair.1 * base.scale, &at)?;
            let text = text
                .as_str()
                .ok_or_else(|| NarrationError::malformed(at.clone(), format!("sentence is not a string: {text}")))?;
            Ok(GroundingQuery {
                video_id: video_id.to_owned(),
                start_s,
                end_s,
                sentence: sentence(text, &at)?,
                duration_s: Some(base.duration_s),
            })
        })();
        match query {
            Ok(q) => parsed.items.push(q),
            Err(e) => parsed.errors.push(e),
        }
    }
}

fn parse_json(text: &str, file: &Path, base: BaseFn) -> Parsed<GroundingQuery> {
    let mut parsed = Parsed::default();
    let text = text.trim_start_matches('\u{FEFF}');
    let end = for_each_entry(text.as_bytes(), file, &mut |video_id, line, value: Value| {
        let at = Location::line(file, line).with_video(&video_id);
        json_video(&video_id, &value, &at, base, &mut parsed);
        ControlFlow::Continue(())
    });
    if let StreamEnd::Failed(e) = end {
        parsed.errors.push(e);
    }
    parsed
}

/// Parses ActivityNet Captions JSON. Spans past the video's duration are
/// kept as annotated: the dataset has such spans and evaluation code
/// clamps them itself.
pub fn parse_activitynet(text: &str, file: &Path) -> Parsed<GroundingQuery> {
    parse_json(text, file, activitynet_base)
}

/// Parses TACoS 2D-TAN JSON, converting frame indices to seconds with the
/// video's fps. Video ids are kept as written (`s13-d21.avi`).
pub fn parse_tacos(text: &str, file: &Path) -> Parsed<GroundingQuery> {
    parse_json(text, file, tacos_base)
}

/// Reads a grounding annotation file of the given format; `Err` only when
/// the file cannot be read at all.
pub fn read_file(path: &Path, format: GroundingFormat) -> Result<Parsed<GroundingQuery>, NarrationError> {
    let (text, warning) = read_text_file(path)?;
    let mut parsed = match format {
        GroundingFormat::CharadesSta => parse_charades_sta(&text, path),
        GroundingFormat::ActivityNet => parse_activitynet(&text, path),
        GroundingFormat::Tacos => parse_tacos(&text, path),
    };
    parsed.warnings.splice(0..0, warning);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Warning;

    #[test]
    fn charades_sta_lines() {
        let text = "AO8RW 0.0 6.9##a person is putting a book on a shelf.\r\n\
Y6R7T 20.1 12.0##inverted\r\n\
\r\n\
Y6R7T 1 x##not a number\r\n\
Y6R7T 1 2 no separator\r\n\
Y6R7T 1 2##   \r\n\
3MSZA 24.3 30.4##person turn a light on.\r\n";
        let parsed = parse_charades_sta(text, Path::new("charades_sta_test.txt"));
        assert_eq!(
            parsed.items,
            [
                GroundingQuery {
                    video_id: "AO8RW".into(),
                    start_s: 0.0,
                    end_s: 6.9,
                    sentence: "a person is putting a book on a shelf.".into(),
                    duration_s: None,
                },
                GroundingQuery {
                    video_id: "3MSZA".into(),
                    start_s: 24.3,
                    end_s: 30.4,
                    sentence: "person turn a light on.".into(),
                    duration_s: None,
                },
            ]
        );
        let lines: Vec<Option<usize>> = parsed.errors.iter().map(|e| e.location().unwrap().line).collect();
        assert_eq!(lines, [Some(2), Some(4), Some(5), Some(6)]);
        assert!(matches!(parsed.errors[0], NarrationError::InvertedTime { .. }));
    }

    #[test]
    fn activitynet_json() {
        let text = r#"{"v_QOlSCBRmfWY": {"duration": 82.73,
  "timestamps": [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]],
  "sentences": ["A young woman is seen standing in a room.", " She then begins dancing.", "  "]},
 "v_bad": {"duration": 10, "timestamps": [[1, 2]], "sentences": []},
 "v_inv": {"duration": 10, "timestamps": [[5, 2], [1, 3], [1]], "sentences": ["a", "b", "c"]}}"#;
        let parsed = parse_activitynet(text, Path::new("val_1.json"));
        let got: Vec<(&str, f64, f64, &str, Option<f64>)> = parsed
            .items
            .iter()
            .map(|q| (q.video_id.as_str(), q.start_s, q.end_s, q.sentence.as_str(), q.duration_s))
            .collect();
        assert_eq!(
            got,
            [
                ("v_QOlSCBRmfWY", 0.83, 19.86, "A young woman is seen standing in a room.", Some(82.73)),
                ("v_QOlSCBRmfWY", 17.37, 60.81, "She then begins dancing.", Some(82.73)),
                ("v_inv", 1.0, 3.0, "b", Some(10.0)),
            ]
        );
        assert_eq!(parsed.errors.len(), 4, "{:?}", parsed.errors);
        assert!(matches!(&parsed.errors[0], NarrationError::Malformed { at, .. } if at.item == Some(2)));
        assert!(matches!(
            &parsed.errors[1],
            NarrationError::LengthMismatch { at, .. } if at.video_id.as_deref() == Some("v_bad") && at.line == Some(4)
        ));
        assert!(matches!(&parsed.errors[2], NarrationError::InvertedTime { at, .. } if at.item == Some(0)));
        assert!(parsed.errors[3].to_string().contains("not a [start, end] pair"));
    }

    #[test]
    fn tacos_frames_become_seconds() {
        let text = r#"{"s13-d21.avi": {"num_frames": 6000, "fps": 29.4,
   "timestamps": [[294, 882], [0, 147]], "sentences": ["The person takes out a knife.", "He washes hands."]},
  "s00-d00.avi": {"num_frames": 100, "fps": 0, "timestamps": [], "sentences": []}}"#;
        let parsed = parse_tacos(text, Path::new("test.json"));
        assert_eq!(parsed.items.len(), 2);
        let q = &parsed.items[0];
        assert_eq!(q.video_id, "s13-d21.avi");
        assert!((q.start_s - 10.0).abs() < 1e-9 && (q.end_s - 30.0).abs() < 1e-9);
        assert!((q.duration_s.unwrap() - 6000.0 / 29.4).abs() < 1e-9);
        assert!((parsed.items[1].end_s - 5.0).abs() < 1e-9);
        assert_eq!(parsed.errors.len(), 1);
        assert!(parsed.errors[0].to_string().contains("fps 0 is not positive"));
    }

    #[test]
    fn truncated_grounding_json_keeps_earlier_videos() {
        let text = r#"{"a": {"duration": 5, "timestamps": [[0, 1]], "sentences": ["x"]}, "b": {"dura"#;
        let parsed = parse_activitynet(text, Path::new("g.json"));
        assert_eq!(parsed.items.len(), 1);
        assert!(matches!(parsed.errors.as_slice(), [NarrationError::Truncated { .. }]));
    }

    #[test]
    fn read_file_dispatches_and_decodes_latin1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sta.txt");
        std::fs::write(&path, b"AO8RW 0 1##a caf\xE9\n").unwrap();
        let parsed = read_file(&path, GroundingFormat::CharadesSta).unwrap();
        assert_eq!(parsed.items[0].sentence, "a café");
        assert!(
            matches!(parsed.warnings.as_slice(), [Warning::DecodedAs { encoding, .. }] if encoding == "windows-1252")
        );
        assert!(matches!(
            read_file(&dir.path().join("none.json"), GroundingFormat::Tacos),
            Err(NarrationError::Io { .. })
        ));
    }
}
