//! SubRip (`.srt`).
//!
//! Cue text loses HTML-ish tags (`<i>`, `<font ...>`), ASS override codes
//! (`{\an8}`) and bracketed sound tags (`[Intro music]`). A cue holding only
//! sound tags is kept with empty text so that alignment can drop it with a
//! reason. Blank lines inside cue text, which some tools write, continue the
//! cue instead of being lost.

use std::path::Path;

use crate::cuefile::{split_cues, Flavor};
use crate::decode::{numbered_lines, read_text_file};
use crate::error::NarrationError;
use crate::text::{clean_line, join_tokens, Markup};
use crate::{Cue, Parsed};

/// Parses SubRip text. `file` names the source in errors.
pub fn parse_str(text: &str, file: &Path) -> Parsed<Cue> {
    let mut parsed = Parsed::default();
    let text = text.trim_start_matches('\u{FEFF}');
    let lines = numbered_lines(text);
    let (raw_cues, errors) = split_cues(&lines, Flavor::Srt, file);
    parsed.errors = errors;
    parsed.items = raw_cues
        .into_iter()
        .map(|raw| {
            let tokens: Vec<_> = raw.payload.iter().flat_map(|l| clean_line(l, Markup::Srt)).collect();
            Cue { start: raw.start, end: raw.end, text: join_tokens(&tokens), words: Vec::new() }
        })
        .collect();
    parsed
}

/// Reads a SubRip file; `Err` only when the file cannot be read at all.
pub fn read_file(path: &Path) -> Result<Parsed<Cue>, NarrationError> {
    let (text, warning) = read_text_file(path)?;
    let mut parsed = parse_str(&text, path);
    parsed.warnings.splice(0..0, warning);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Warning;

    fn parse(text: &str) -> Parsed<Cue> {
        parse_str(text, Path::new("t.srt"))
    }

    fn texts(parsed: &Parsed<Cue>) -> Vec<&str> {
        parsed.items.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn bom_crlf_comma_times_sound_tags_and_italics() {
        let text = "\u{FEFF}1\r\n00:00:00,000 --> 00:00:02,280\r\n[Intro music]\r\n\r\n\
2\r\n00:00:02,280 --> 00:00:05,100\r\n<i>So today</i> we&#39;re making\r\n\
[laughs] pancakes &amp; syrup\r\n\r\n\
3\r\n01:00:00,500 --> 01:00:01,000 X1:100 X2:200 Y1:10 Y2:20\r\n{\\an8}<font color=\"#ffff00\">Top</font>\r\n";
        let parsed = parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(texts(&parsed), ["", "So today we're making pancakes & syrup", "Top"]);
        assert_eq!(parsed.items[0].end, 2.28);
        assert_eq!(parsed.items[1].start, 2.28);
        assert_eq!(parsed.items[2].start, 3600.5);
        assert!(parsed.items.iter().all(|c| c.words.is_empty()));
    }

    #[test]
    fn blank_line_inside_text_continues_the_cue() {
        let text =
            "1\n00:00:01,000 --> 00:00:02,000\nfirst part\n\nsecond part\n\n2\n00:00:03,000 --> 00:00:04,000\nnext\n";
        let parsed = parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(texts(&parsed), ["first part second part", "next"]);
    }

    #[test]
    fn missing_blank_line_between_cues_still_splits() {
        let text = "1\n00:00:01,000 --> 00:00:02,000\none\n2\n00:00:03,000 --> 00:00:04,000\ntwo\n";
        let parsed = parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(texts(&parsed), ["one", "two"]);
    }

    #[test]
    fn bad_cues_are_errors_with_lines_and_others_continue() {
        let text = "1\n00:00:05,000 --> 00:00:01,000\ninverted\n\n\
2\n00:00:01.000 -> 00:00:02,000\nbroken arrow\n\n\
3\n00:00:06,000 --> 00:00:07,000\ngood\n\n\
4\n-00:00:01,000 --> 00:00:02,000\nnegative\n";
        let parsed = parse(text);
        assert_eq!(texts(&parsed), ["good"]);
        let lines: Vec<Option<usize>> = parsed.errors.iter().map(|e| e.location().unwrap().line).collect();
        assert_eq!(lines, [Some(2), Some(6), Some(14)]);
        assert!(matches!(parsed.errors[0], NarrationError::InvertedTime { .. }));
        assert!(matches!(parsed.errors[1], NarrationError::Malformed { .. }));
        assert!(matches!(parsed.errors[2], NarrationError::InvalidTime { .. }));
    }

    #[test]
    fn text_before_any_cue_is_an_error() {
        let parsed = parse("stray\n\n1\n00:00:01,000 --> 00:00:02,000\nok\n");
        assert_eq!(texts(&parsed), ["ok"]);
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].location().unwrap().line, Some(1));
    }

    #[test]
    fn windows_1252_file_is_decoded_with_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.srt");
        std::fs::write(&path, b"1\r\n00:00:01,000 --> 00:00:02,000\r\nna\xEFve \x93quote\x94\r\n").unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(texts(&parsed), ["naïve “quote”"]);
        assert!(
            matches!(parsed.warnings.as_slice(), [Warning::DecodedAs { encoding, .. }] if encoding == "windows-1252")
        );
    }

    #[test]
    fn russian_windows_1251_file_is_decoded_with_the_detected_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ru.srt");
        let text = "1\r\n00:00:01,000 --> 00:00:03,000\r\nПривет всем, сегодня мы готовим борщ.\r\n\r\n\
                    2\r\n00:00:03,000 --> 00:00:06,000\r\nСначала нарежьте свёклу и морковь.\r\n";
        let (bytes, _, _) = encoding_rs::WINDOWS_1251.encode(text);
        std::fs::write(&path, &bytes).unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(texts(&parsed), ["Привет всем, сегодня мы готовим борщ.", "Сначала нарежьте свёклу и морковь."]);
        match parsed.warnings.as_slice() {
            [w @ Warning::DecodedAs { encoding, .. }] => {
                assert_eq!(encoding, "windows-1251");
                assert!(w.to_string().contains("ru.srt") && w.to_string().contains("windows-1251"), "{w}");
            }
            other => panic!("expected one decoding warning, got {other:?}"),
        }
    }
}
