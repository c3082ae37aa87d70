//! HowTo100M `caption.json` / `raw_caption.json`:
//! `{video_id: {"start": [...], "end": [...], "text": [...]}, ...}`.
//!
//! The real files hold about 1.3 million videos in several GB, so they are
//! streamed: one video is parsed, handed to the caller and freed before the
//! next is read.

use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{Location, NarrationError};
use crate::json_stream::{for_each_entry, StreamEnd};
use crate::text::{clean_line, join_tokens, Markup};
use crate::{Cue, Parsed, VideoCues};

/// How a stream went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamSummary {
    /// Videos delivered as `Ok`.
    pub videos: usize,
    /// Errors delivered as `Err` (per cue, per video, and at most one for
    /// the stream itself).
    pub errors: usize,
    /// The whole file was read.
    pub completed: bool,
    /// The callback returned `Break`.
    pub stopped: bool,
}

/// A JSON value's shape, for messages about values of the wrong type.
type Shape = &'static str;

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The value types below read a video without building a `serde_json::Value`
/// (several times faster on the multi-GB files) and without ever failing on
/// a type mismatch, which would end the whole stream: a wrong shape is
/// recorded and reported for that video or cue only.
macro_rules! wrong_shapes {
    ($wrong:expr; $($method:ident($($arg:ty)?) => $shape:expr),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self $(, _: $arg)?) -> Result<Self::Value, E> {
                Ok($wrong($shape))
            }
        )*
    };
}

/// A cue time as found: a number, or the shape found instead.
#[derive(Debug)]
enum LooseTime {
    Number(f64),
    Wrong(Shape),
}

impl<'de> Deserialize<'de> for LooseTime {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseTime;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a time in seconds")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseTime, E> {
                Ok(LooseTime::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseTime, E> {
                Ok(LooseTime::Number(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseTime, E> {
                Ok(LooseTime::Number(v as f64))
            }
            wrong_shapes!(LooseTime::Wrong;
                visit_str(&str) => "a string",
                visit_bool(bool) => "a boolean",
                visit_unit() => "null",
            );
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LooseTime, A::Error> {
                drain_seq(seq).map(|()| LooseTime::Wrong("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LooseTime, A::Error> {
                drain_map(map).map(|()| LooseTime::Wrong("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A cue text as found. Dumps written through pandas carry null for missing
/// text and, rarely, a bare number for a spoken number; both are accepted.
#[derive(Debug)]
enum LooseText {
    Text(String),
    Wrong(Shape),
}

impl<'de> Deserialize<'de> for LooseText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a caption text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseText, E> {
                Ok(LooseText::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<LooseText, E> {
                Ok(LooseText::Text(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LooseText, E> {
                Ok(LooseText::Text(String::new()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseText, E> {
                Ok(LooseText::Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseText, E> {
                Ok(LooseText::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseText, E> {
                Ok(LooseText::Text(v.to_string()))
            }
            wrong_shapes!(LooseText::Wrong; visit_bool(bool) => "a boolean");
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LooseText, A::Error> {
                drain_seq(seq).map(|()| LooseText::Wrong("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LooseText, A::Error> {
                drain_map(map).map(|()| LooseText::Wrong("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One of the parallel arrays as found.
#[derive(Debug)]
enum LooseArray<T> {
    Items(Vec<T>),
    Wrong(Shape),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LooseArray<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LooseArray<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LooseArray<T>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(LooseArray::Items(items))
            }
            wrong_shapes!(LooseArray::Wrong;
                visit_str(&str) => "a string",
                visit_bool(bool) => "a boolean",
                visit_unit() => "null",
                visit_f64(f64) => "a number",
                visit_u64(u64) => "a number",
                visit_i64(i64) => "a number",
            );
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LooseArray<T>, A::Error> {
                drain_map(map).map(|()| LooseArray::Wrong("an object"))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// One video's entry as found.
#[derive(Debug, Default)]
struct LooseVideo {
    /// Set when the entry is not an object at all.
    wrong: Option<Shape>,
    start: Option<LooseArray<LooseTime>>,
    end: Option<LooseArray<LooseTime>>,
    text: Option<LooseArray<LooseText>>,
}

impl<'de> Deserialize<'de> for LooseVideo {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum Key {
            Start,
            End,
            Text,
            Other,
        }
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct K;
                impl Visitor<'_> for K {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a field name")
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                        Ok(match v {
                            "start" => Key::Start,
                            "end" => Key::End,
                            "text" => Key::Text,
                            _ => Key::Other,
                        })
                    }
                }
                d.deserialize_identifier(K)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseVideo;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with start, end and text arrays")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LooseVideo, A::Error> {
                let mut video = LooseVideo::default();
                while let Some(key) = map.next_key()? {
                    match key {
                        Key::Start => video.start = Some(map.next_value()?),
                        Key::End => video.end = Some(map.next_value()?),
                        Key::Text => video.text = Some(map.next_value()?),
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(video)
            }
            wrong_shapes!(|shape| LooseVideo { wrong: Some(shape), ..LooseVideo::default() };
                visit_str(&str) => "a string",
                visit_bool(bool) => "a boolean",
                visit_unit() => "null",
                visit_f64(f64) => "a number",
                visit_u64(u64) => "a number",
                visit_i64(i64) => "a number",
            );
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LooseVideo, A::Error> {
                drain_seq(seq).map(|()| LooseVideo { wrong: Some("an array"), ..LooseVideo::default() })
            }
        }
        d.deserialize_any(V)
    }
}

fn time(value: &LooseTime, name: &str, at: &Location) -> Result<f64, NarrationError> {
    let t = match value {
        LooseTime::Number(t) => *t,
        LooseTime::Wrong(shape) => {
            return Err(NarrationError::malformed(at.clone(), format!("{name} is not a number but {shape}")))
        }
    };
    if !t.is_finite() || t < 0.0 {
        return Err(NarrationError::InvalidTime { at: at.clone(), value: t });
    }
    Ok(t)
}

/// Whitespace already single-spaced and trimmed, the common case.
fn is_normalised(text: &str) -> bool {
    !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.contains("  ")
        && !text.chars().any(|c| c.is_whitespace() && c != ' ')
}

fn cue_text(value: LooseText, at: &Location) -> Result<String, NarrationError> {
    match value {
        LooseText::Text(text) if !text.contains('[') && is_normalised(&text) => Ok(text),
        LooseText::Text(text) => Ok(join_tokens(&clean_line(&text, Markup::Plain))),
        LooseText::Wrong(shape) => {
            Err(NarrationError::malformed(at.clone(), format!("text is not a string but {shape}")))
        }
    }
}

fn array<T>(field: Option<LooseArray<T>>, name: &str, at: &Location) -> Result<Vec<T>, NarrationError> {
    match field {
        Some(LooseArray::Items(items)) => Ok(items),
        Some(LooseArray::Wrong(shape)) => {
            Err(NarrationError::malformed(at.clone(), format!("`{name}` is not an array but {shape}")))
        }
        None => Err(NarrationError::malformed(at.clone(), format!("missing `{name}`"))),
    }
}

/// One video's entry to cues. A structural problem loses the video; a bad
/// cue loses only that cue.
fn video_from_entry(
    file: &Path,
    video_id: &str,
    line: usize,
    entry: LooseVideo,
) -> (Option<VideoCues>, Vec<NarrationError>) {
    let at = Location::line(file, line).with_video(video_id);
    if let Some(shape) = entry.wrong {
        let message = format!("expected an object with start, end and text arrays, found {shape}");
        return (None, vec![NarrationError::malformed(at, message)]);
    }
    let arrays = array(entry.start, "start", &at).and_then(|s| {
        let e = array(entry.end, "end", &at)?;
        let t = array(entry.text, "text", &at)?;
        Ok((s, e, t))
    });
    let (starts, ends, texts) = match arrays {
        Ok(a) => a,
        Err(e) => return (None, vec![e]),
    };
    if starts.len() != ends.len() || starts.len() != texts.len() {
        let detail = format!("start {}, end {}, text {}", starts.len(), ends.len(), texts.len());
        return (None, vec![NarrationError::LengthMismatch { at, detail }]);
    }
    let mut cues = Vec::with_capacity(starts.len());
    let mut errors = Vec::new();
    for (i, ((s, e), t)) in starts.iter().zip(&ends).zip(texts).enumerate() {
        let cue = (|| {
            let at = || at.clone().with_item(i);
            let start = time(s, "start", &at())?;
            let end = time(e, "end", &at())?;
            if end < start {
                return Err(NarrationError::InvertedTime { at: at(), start, end });
            }
            Ok(Cue { start, end, text: cue_text(t, &at())?, words: Vec::new() })
        })();
        match cue {
            Ok(cue) => cues.push(cue),
            Err(e) => errors.push(e),
        }
    }
    let video = VideoCues { video_id: video_id.to_owned(), cues };
    (Some(video), errors)
}

/// Streams the videos of a caption file to `f`, in file order.
///
/// For each video, `f` first gets an `Err` for every cue that could not be
/// read, then the video as `Ok` with its readable cues (or one `Err` if the
/// video as a whole is unreadable, e.g. mismatched array lengths). If the
/// stream breaks (truncation, syntax error) `f` gets one final `Err` naming
/// the position; everything before it has been delivered. Return
/// `ControlFlow::Break` from `f` to stop reading.
pub fn for_each_video<R: Read>(
    reader: R,
    file: &Path,
    mut f: impl FnMut(Result<VideoCues, NarrationError>) -> ControlFlow<()>,
) -> StreamSummary {
    let mut summary = StreamSummary::default();
    let end = for_each_entry(reader, file, &mut |video_id, line, entry| {
        let (video, errors) = video_from_entry(file, &video_id, line, entry);
        for error in errors {
            summary.errors += 1;
            f(Err(error))?;
        }
        if let Some(video) = video {
            summary.videos += 1;
            f(Ok(video))?;
        }
        ControlFlow::Continue(())
    });
    match end {
        StreamEnd::Complete => summary.completed = true,
        StreamEnd::Stopped => summary.stopped = true,
        StreamEnd::Failed(error) => {
            summary.errors += 1;
            // The stream is over either way.
            let _ = f(Err(error));
        }
    }
    summary
}

/// Streams a caption file from disk; `Err` only if it cannot be opened.
pub fn read_file(
    path: &Path,
    f: impl FnMut(Result<VideoCues, NarrationError>) -> ControlFlow<()>,
) -> Result<StreamSummary, NarrationError> {
    let file = std::fs::File::open(path).map_err(|e| NarrationError::io(path, e))?;
    Ok(for_each_video(file, path, f))
}

/// Parses a whole caption document held in memory (small files, tests).
pub fn parse_str(text: &str, file: &Path) -> Parsed<VideoCues> {
    let mut parsed = Parsed::default();
    for_each_video(text.as_bytes(), file, |item| {
        match item {
            Ok(video) => parsed.items.push(video),
            Err(error) => parsed.errors.push(error),
        }
        ControlFlow::Continue(())
    });
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const CAPTIONS: &str = r#"{"nVbIUDjzWY4": {"start": [1.2, 4.0, 7], "end": [4.0, 7.3, 9.5],
 "text": [" so today\twe  are ", "going to make  [Music] pancakes", null]},
"bad_lengths": {"start": [0.0, 1.0], "end": [1.0], "text": ["a", "b"]},
"inverted": {"start": [0.0, 5.0, 6.0], "end": [2.0, 4.0, -1],
 "text": ["kept", "inverted", "negative"]},
"last": {"start": [], "end": [], "text": []}}"#;

    #[test]
    fn videos_are_read_and_bad_ones_reported_alone() {
        let parsed = parse_str(CAPTIONS, Path::new("caption.json"));
        let ids: Vec<&str> = parsed.items.iter().map(|v| v.video_id.as_str()).collect();
        assert_eq!(ids, ["nVbIUDjzWY4", "inverted", "last"]);

        let first = &parsed.items[0];
        let texts: Vec<&str> = first.cues.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["so today we are", "going to make pancakes", ""]);
        assert_eq!((first.cues[2].start, first.cues[2].end), (7.0, 9.5));

        assert_eq!(parsed.items[1].cues.len(), 1);
        assert_eq!(parsed.items[1].cues[0].text, "kept");

        assert_eq!(parsed.errors.len(), 3);
        match &parsed.errors[0] {
            NarrationError::LengthMismatch { at, detail } => {
                assert_eq!(at.video_id.as_deref(), Some("bad_lengths"));
                assert_eq!(at.line, Some(3));
                assert_eq!(detail, "start 2, end 1, text 2");
            }
            other => panic!("expected a length mismatch, got {other:?}"),
        }
        match &parsed.errors[1] {
            NarrationError::InvertedTime { at, start, end } => {
                assert_eq!(at.video_id.as_deref(), Some("inverted"));
                assert_eq!(at.item, Some(1));
                assert_eq!((*start, *end), (5.0, 4.0));
            }
            other => panic!("expected an inverted time, got {other:?}"),
        }
        assert!(matches!(
            &parsed.errors[2],
            NarrationError::InvalidTime { at, value } if at.item == Some(2) && *value == -1.0
        ));
    }

    #[test]
    fn truncated_file_yields_earlier_videos_and_one_positioned_error() {
        let cut = &CAPTIONS[..CAPTIONS.find("\"last\"").unwrap() + 20];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw_caption.json");
        std::fs::write(&path, cut).unwrap();

        let mut items = Vec::new();
        let summary = read_file(&path, |item| {
            items.push(item);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(!summary.completed);
        let (ok, err): (Vec<_>, Vec<_>) = items.into_iter().partition(|i| i.is_ok());
        assert_eq!(ok.len(), 2);
        assert_eq!(summary.videos, 2);
        let last = err.last().unwrap().as_ref().unwrap_err();
        match last {
            NarrationError::Truncated { at, .. } => {
                assert_eq!(at.file, path);
                assert_eq!(at.line, Some(6));
                assert!(at.column.is_some());
            }
            other => panic!("expected truncation, got {other:?}"),
        }
        assert!(last.to_string().contains("raw_caption.json:6:"));
    }

    #[test]
    fn syntax_error_stops_the_stream_after_earlier_videos() {
        let text = "{\"a\": {\"start\": [0], \"end\": [1], \"text\": [\"x\"]},\n\"b\": {\"start\": [0,, 1]}}";
        let parsed = parse_str(text, Path::new("c.json"));
        assert_eq!(parsed.items.len(), 1);
        assert!(matches!(
            parsed.errors.as_slice(),
            [NarrationError::Json { at, .. }] if at.line == Some(2)
        ));
    }

    #[test]
    fn structural_problems_name_the_field() {
        let text = r#"{"a": [1], "b": {"start": [0], "end": [1]}, "c": {"start": 3, "end": [], "text": []},
            "d": {"start": ["x"], "end": [1], "text": [true]}}"#;
        let parsed = parse_str(text, Path::new("c.json"));
        let messages: Vec<String> = parsed.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].contains("video a") && messages[0].contains("found an array"));
        assert!(messages[1].contains("missing `text`"));
        assert!(messages[2].contains("`start` is not an array"));
        assert!(messages[3].contains("start is not a number"));
        // "d" keeps no cue but is still a video; the others are lost.
        assert_eq!(parsed.items.len(), 1);
        assert!(parsed.items[0].cues.is_empty());
    }

    #[test]
    fn numeric_text_extra_fields_and_integer_times_are_accepted() {
        let text = r#"{"v": {"duration": 30, "start": [0, 2.5], "extra": {"k": [1, {"x": null}]},
            "end": [2, 4], "text": [2019, "ok"]}}"#;
        let parsed = parse_str(text, Path::new("c.json"));
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let cues = &parsed.items[0].cues;
        assert_eq!(cues[0].text, "2019");
        assert_eq!((cues[0].start, cues[0].end), (0.0, 2.0));
        assert_eq!(cues[1].text, "ok");
    }

    /// Serves a caption object of `videos` videos (tens of MB) and counts
    /// the bytes it handed out.
    struct Large {
        videos: usize,
        served: usize,
        pending: Vec<u8>,
        next_video: usize,
    }

    impl Read for Large {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() && self.next_video == self.videos {
                self.pending = b"}".to_vec();
                self.next_video += 1;
            } else if self.pending.is_empty() && self.next_video < self.videos {
                let sep = if self.next_video == 0 { "{" } else { "," };
                self.pending = format!(
                    "{sep}\"v{}\": {{\"start\": [0.0, 2.0], \"end\": [2.0, 4.0], \"text\": [\"a b\", \"c d\"]}}\n",
                    self.next_video
                )
                .into_bytes();
                self.next_video += 1;
            }
            let n = out.len().min(self.pending.len());
            out[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            self.served += n;
            Ok(n)
        }
    }

    #[test]
    fn streaming_reads_only_as_far_as_the_caller_goes() {
        let mut source = Large { videos: 300_000, served: 0, pending: Vec::new(), next_video: 0 };
        let mut seen = Vec::new();
        let summary = for_each_video(&mut source, Path::new("large.json"), |item| {
            seen.push(item.unwrap().video_id);
            if seen.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, ["v0", "v1", "v2"]);
        assert!(summary.stopped && !summary.completed);
        // One read-ahead buffer at most, not the whole file.
        assert!(source.served <= 1 << 16, "served {} bytes", source.served);
    }
}
