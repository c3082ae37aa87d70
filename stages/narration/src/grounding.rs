//! Temporal grounding annotations for evaluation: Charades-STA text,
//! ActivityNet Captions JSON and TACoS (2D-TAN split) JSON, all read into
//! one [`GroundingQuery`] shape.

use std::ops::ControlFlow;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{numbered_lines, read_text_file};
use crate::error::{Location, NarrationError, Warning};
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
    /// 1-based line of the query in its file (of its video's entry, in
    /// JSON): where a problem found later is reported.
    #[serde(default)]
    pub line: usize,
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

/// How a moment was fitted to its video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fit {
    /// Inside the video as annotated.
    Inside,
    /// Reached before 0 or past the end; clamped to `[0, duration]`, and
    /// this is the moment as annotated.
    Clamped { from: (f64, f64) },
}

/// Fits `[start, end]` (seconds) to a video of `duration` seconds when it
/// is known (to `[0, inf)` otherwise), as 2D-TAN's loaders do:
/// non-finite times are errors, and so are empty and inverted moments
/// (checked on the times as annotated); a moment reaching outside the
/// video is clamped, and an error if nothing is left.
pub fn fit_moment(
    start: f64,
    end: f64,
    duration: Option<f64>,
    at: &Location,
) -> Result<((f64, f64), Fit), NarrationError> {
    for value in [start, end] {
        if !value.is_finite() {
            return Err(NarrationError::InvalidTime { at: at.clone(), value });
        }
    }
    if end < start {
        return Err(NarrationError::InvertedTime { at: at.clone(), start, end });
    }
    if end == start {
        return Err(NarrationError::EmptyMoment { at: at.clone(), time: start });
    }
    let limit = duration.unwrap_or(f64::INFINITY);
    let (s, e) = (start.max(0.0), end.min(limit));
    if s >= e {
        return Err(NarrationError::OutsideVideo { at: at.clone(), start, end, duration: limit });
    }
    let fit = if (s, e) == (start, end) { Fit::Inside } else { Fit::Clamped { from: (start, end) } };
    Ok(((s, e), fit))
}

/// Fits an already read query to its video's duration (Charades-STA lines
/// carry none; the videos' durations come from elsewhere): the query
/// clamped, with a warning when it changed, or the error that drops it.
pub fn fit_query(
    query: &GroundingQuery,
    duration: f64,
    at: &Location,
) -> Result<(GroundingQuery, Option<Warning>), NarrationError> {
    let ((start_s, end_s), fit) = fit_moment(query.start_s, query.end_s, Some(duration), at)?;
    let fitted = GroundingQuery { start_s, end_s, duration_s: Some(duration), ..query.clone() };
    let warning = match fit {
        Fit::Inside => None,
        Fit::Clamped { from } => {
            Some(Warning::Clamped { at: at.clone(), from, to: (start_s, end_s), duration: Some(duration) })
        }
    };
    Ok((fitted, warning))
}

fn clamp_warning(fit: Fit, to: (f64, f64), duration: Option<f64>, at: &Location) -> Option<Warning> {
    match fit {
        Fit::Inside => None,
        Fit::Clamped { from } => Some(Warning::Clamped { at: at.clone(), from, to, duration }),
    }
}

fn sentence(text: &str, at: &Location) -> Result<String, NarrationError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(NarrationError::malformed(at.clone(), "empty sentence"));
    }
    Ok(words.join(" "))
}

/// One Charades-STA line. The separator is the first `##` (the sentence
/// may hold `#` itself); fields before it are split on any whitespace,
/// since files edited by hand mix tabs and spaces.
fn charades_line(line: &str, at: &Location) -> Result<(GroundingQuery, Option<Warning>), NarrationError> {
    let (head, text) = line.split_once("##").ok_or_else(|| {
        let hint = if line.contains('#') { " (found a single `#`)" } else { "" };
        NarrationError::malformed(at.clone(), format!("expected `video_id start end##sentence`{hint}"))
    })?;
    let fields: Vec<&str> = head.split_whitespace().collect();
    let at = &match fields.first() {
        Some(id) => at.clone().with_video(id),
        None => at.clone(),
    };
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
    let ((start_s, end_s), fit) = fit_moment(parse(start, "start")?, parse(end, "end")?, None, at)?;
    let query = GroundingQuery {
        video_id: (*video_id).to_owned(),
        start_s,
        end_s,
        sentence: sentence(text, at)?,
        duration_s: None,
        line: at.line.unwrap_or(0),
    };
    Ok((query, clamp_warning(fit, (start_s, end_s), None, at)))
}

/// Parses Charades-STA lines `video_id start end##sentence`. The lines
/// carry no duration: [`fit_query`] clamps them once it is known.
pub fn parse_charades_sta(text: &str, file: &Path) -> Parsed<GroundingQuery> {
    let mut parsed = Parsed::default();
    for (line_no, line) in numbered_lines(text.trim_start_matches('\u{FEFF}')) {
        if line.trim().is_empty() {
            continue;
        }
        match charades_line(line.trim(), &Location::line(file, line_no)) {
            Ok((query, warning)) => {
                parsed.items.push(query);
                parsed.warnings.extend(warning);
            }
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
            let duration = Some(base.duration_s);
            let ((start_s, end_s), fit) = fit_moment(pair.0 * base.scale, pair.1 * base.scale, duration, &at)?;
            let text = text
                .as_str()
                .ok_or_else(|| NarrationError::malformed(at.clone(), format!("sentence is not a string: {text}")))?;
            let query = GroundingQuery {
                video_id: video_id.to_owned(),
                start_s,
                end_s,
                sentence: sentence(text, &at)?,
                duration_s: duration,
                line: at.line.unwrap_or(0),
            };
            Ok((query, clamp_warning(fit, (start_s, end_s), duration, &at)))
        })();
        match query {
            Ok((q, warning)) => {
                parsed.items.push(q);
                parsed.warnings.extend(warning);
            }
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

/// Parses ActivityNet Captions JSON. Spans reaching past the video's
/// duration (the dataset has them) are clamped to it, each with a
/// [`Warning::Clamped`].
pub fn parse_activitynet(text: &str, file: &Path) -> Parsed<GroundingQuery> {
    parse_json(text, file, activitynet_base)
}

/// Parses TACoS 2D-TAN JSON, converting frame indices to seconds with the
/// video's fps (its duration is `num_frames / fps`). Video ids are kept as
/// written (`s13-d21.avi`).
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
                    line: 1,
                },
                GroundingQuery {
                    video_id: "3MSZA".into(),
                    start_s: 24.3,
                    end_s: 30.4,
                    sentence: "person turn a light on.".into(),
                    duration_s: None,
                    line: 7,
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

    #[test]
    fn charades_sta_quirks_are_read_or_named_by_line() {
        let text = "\u{FEFF}AO8RW 0.0 6.9##a person puts a book # on a shelf.\r\n\
3MSZA\t24.3\t30.4 ##person turn a light on.\n\
Y6R7T 5.0 5.0##empty moment\n\
Y6R7T 1.0 2.0#single hash\n\
Y6R7T 1.0 2.0 3.0##four fields\n\
KBPDM -0.4 3.1##starts before the video\n\
XXXXX 1 nan##not finite\n";
        let parsed = parse_charades_sta(text, Path::new("charades_sta_train.txt"));
        let got: Vec<(&str, f64, f64, &str)> =
            parsed.items.iter().map(|q| (q.video_id.as_str(), q.start_s, q.end_s, q.sentence.as_str())).collect();
        assert_eq!(
            got,
            [
                ("AO8RW", 0.0, 6.9, "a person puts a book # on a shelf."),
                ("3MSZA", 24.3, 30.4, "person turn a light on."),
                ("KBPDM", 0.0, 3.1, "starts before the video"),
            ]
        );
        let messages: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].starts_with("charades_sta_train.txt:3 (video Y6R7T): empty moment"), "{}", messages[0]);
        assert!(messages[1].starts_with("charades_sta_train.txt:4") && messages[1].contains("single `#`"));
        assert!(messages[2].starts_with("charades_sta_train.txt:5") && messages[2].contains("found 4 fields"));
        assert!(matches!(&parsed.errors[3], NarrationError::InvalidTime { at, .. } if at.line == Some(7)));
        assert!(matches!(
            parsed.warnings.as_slice(),
            [Warning::Clamped { at, from: (-0.4, 3.1), to: (0.0, 3.1), duration: None }] if at.line == Some(6)
        ));
    }

    #[test]
    fn charades_sta_queries_are_clamped_once_the_duration_is_known() {
        let q = GroundingQuery {
            video_id: "AO8RW".into(),
            start_s: 20.0,
            end_s: 33.5,
            sentence: "x".into(),
            duration_s: None,
            line: 9,
        };
        let at = Location::line(Path::new("sta.txt"), 9).with_video("AO8RW");
        let (fitted, warning) = fit_query(&q, 31.0, &at).unwrap();
        assert_eq!((fitted.start_s, fitted.end_s, fitted.duration_s), (20.0, 31.0, Some(31.0)));
        let warning = warning.expect("said so").to_string();
        assert_eq!(warning, "sta.txt:9 (video AO8RW): moment 20-33.5 s clamped to 20-31 s (the video lasts 31 s)");
        assert!(fit_query(&q, 40.0, &at).unwrap().1.is_none());
        assert!(matches!(fit_query(&q, 19.0, &at), Err(NarrationError::OutsideVideo { .. })));
    }

    #[test]
    fn activitynet_timestamps_past_the_duration_are_clamped_and_reported() {
        let text = r#"{
 "v_a": {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 60.2], [57.0, 63.0], [3, 3]],
         "sentences": ["A man plays.", "He keeps playing.", "After the end.", "Empty."]},
 "v_b": {"duration": "12.0", "timestamps": [[1, 2]], "sentences": ["duration as a string"]},
 "v_c": {"duration": 20, "timestamps": [[-1.5, 4], ["2", 5]], "sentences": ["before the start", "string time"]}
}"#;
        let parsed = parse_activitynet(text, Path::new("val_1.json"));
        let got: Vec<(&str, f64, f64)> =
            parsed.items.iter().map(|q| (q.video_id.as_str(), q.start_s, q.end_s)).collect();
        assert_eq!(got, [("v_a", 0.28, 55.15), ("v_a", 13.79, 55.15), ("v_c", 0.0, 4.0)]);
        let clamped: Vec<String> = parsed.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            clamped,
            [
                "val_1.json:2 (video v_a, item 1): moment 13.79-60.2 s clamped to 13.79-55.15 s (the video lasts 55.15 s)",
                "val_1.json:5 (video v_c, item 0): moment -1.5-4 s clamped to 0-4 s (the video lasts 20 s)",
            ]
        );
        let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(matches!(&parsed.errors[0], NarrationError::OutsideVideo { at, .. } if at.item == Some(2)));
        assert!(matches!(&parsed.errors[1], NarrationError::EmptyMoment { at, .. } if at.item == Some(3)));
        assert!(errors[2].starts_with("val_1.json:4 (video v_b): `duration` is not a number"), "{}", errors[2]);
        assert!(errors[3].starts_with("val_1.json:5 (video v_c, item 1): `start` is not a number"), "{}", errors[3]);
    }

    #[test]
    fn tacos_frame_indices_use_the_video_fps_and_stop_at_its_last_frame() {
        let text = r#"{"s30-d52.avi": {"num_frames": 2940, "fps": 29.4,
   "timestamps": [[0, 294], [2646, 3000], [588.0, 588]], "sentences": ["He takes a knife.", "He cleans up.", "empty"]},
  "s31-d25.avi": {"num_frames": 300, "timestamps": [[1, 2]], "sentences": ["no fps"]}}"#;
        let parsed = parse_tacos(text, Path::new("tacos/test.json"));
        assert_eq!(parsed.items.len(), 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(parsed.items[0].end_s, 10.0));
        // Frame 3000 lies past the 2940 frames (100 s): clamped to 100 s.
        assert!(close(parsed.items[1].start_s, 90.0) && close(parsed.items[1].end_s, 100.0));
        assert!(matches!(parsed.warnings.as_slice(), [Warning::Clamped { duration: Some(d), .. }] if close(*d, 100.0)));
        let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("item 2") && errors[0].contains("empty moment"));
        assert_eq!(errors[1], "tacos/test.json:3 (video s31-d25.avi): missing `fps`");
    }
}
