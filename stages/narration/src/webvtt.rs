//! WebVTT, including YouTube's rolling auto-captions.
//!
//! In the rolling form each cue shows two lines: the previous line again,
//! then the new one with inline word times; between them a 10 ms "hold" cue
//! shows only the finished line. Read naively, every sentence would appear
//! three times. The reader keeps only the new text of each cue.

use std::path::Path;

use crate::cuefile::{split_cues, Flavor, RawCue};
use crate::decode::{numbered_lines, read_text_file};
use crate::error::{NarrationError, Warning};
use crate::text::{clean_line, join_tokens, Markup, Token};
use crate::{Cue, Parsed, Word};

fn is_signature(line: &str) -> bool {
    line.strip_prefix("WEBVTT").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Length of the longest prefix of `current` that repeats the end of
/// `previous`: the carried-over lines of a rolling cue.
fn carried_over(previous: &[String], current: &[String]) -> usize {
    (1..=previous.len().min(current.len())).rev().find(|&k| current[..k] == previous[previous.len() - k..]).unwrap_or(0)
}

/// Parses WebVTT text. `file` names the source in errors.
///
/// Lines a cue repeats from the end of the previous cue are dropped, and a
/// cue left with nothing new (a rolling "hold" cue) is dropped whole. This
/// also folds a line that a plain file really repeats in consecutive cues;
/// losing such a repeat costs far less than tripling every rolling caption.
///
/// Word times are kept when the file has inline timestamps anywhere; words
/// before a cue's first inline timestamp start at the cue's start.
pub fn parse_str(text: &str, file: &Path) -> Parsed<Cue> {
    let mut parsed = Parsed::default();
    let lines = numbered_lines(text.trim_start_matches('\u{FEFF}'));
    let body_start = match lines.first() {
        Some((_, first)) if is_signature(first) => {
            // The header runs to the first blank line; a timing line ends it
            // too, for files that omit that blank line.
            1 + lines[1..].iter().position(|(_, l)| l.is_empty() || l.contains("-->")).unwrap_or(lines.len() - 1)
        }
        _ => {
            parsed.warnings.push(Warning::MissingWebVttHeader { file: file.to_path_buf() });
            0
        }
    };
    let (raw_cues, errors) = split_cues(&lines[body_start..], Flavor::WebVtt, file);
    parsed.errors = errors;

    let cleaned: Vec<(RawCue, Vec<Vec<Token>>)> = raw_cues
        .into_iter()
        .map(|raw| {
            let lines =
                raw.payload.iter().map(|l| clean_line(l, Markup::WebVtt)).filter(|tokens| !tokens.is_empty()).collect();
            (raw, lines)
        })
        .collect();
    let word_timed = cleaned.iter().flat_map(|(_, lines)| lines.iter().flatten()).any(|t| t.time.is_some());

    let mut previous: Vec<String> = Vec::new();
    for (raw, lines) in cleaned {
        let texts: Vec<String> = lines.iter().map(|l| join_tokens(l)).collect();
        let repeated = carried_over(&previous, &texts);
        let text = texts[repeated..].join(" ");
        // A cue of only sound tags says nothing about which line rolls over
        // next, so the comparison keeps the last cue that had text.
        if !texts.is_empty() {
            previous = texts;
        }
        if repeated > 0 && repeated == lines.len() {
            continue;
        }
        let kept = &lines[repeated..];
        let words = if word_timed {
            kept.iter().flatten().map(|t| Word { start: t.time.unwrap_or(raw.start), text: t.text.clone() }).collect()
        } else {
            Vec::new()
        };
        parsed.items.push(Cue { start: raw.start, end: raw.end, text, words });
    }
    parsed
}

/// Reads a WebVTT file; `Err` only when the file cannot be read at all.
pub fn read_file(path: &Path) -> Result<Parsed<Cue>, NarrationError> {
    let (text, warning) = read_text_file(path)?;
    let mut parsed = parse_str(&text, path);
    parsed.warnings.splice(0..0, warning);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Parsed<Cue> {
        parse_str(text, Path::new("t.vtt"))
    }

    fn texts(parsed: &Parsed<Cue>) -> Vec<&str> {
        parsed.items.iter().map(|c| c.text.as_str()).collect()
    }

    /// A YouTube auto-caption file as downloaded: whitespace-only first
    /// payload lines, inline word times, 10 ms hold cues.
    const ROLLING: &str = "WEBVTT\nKind: captions\nLanguage: en\n\n\
00:00:00.880 --> 00:00:03.270 align:start position:0%\n \n\
hi<00:00:01.199><c> everyone</c><00:00:01.439><c> welcome</c>\n\n\
00:00:03.270 --> 00:00:03.280 align:start position:0%\nhi everyone welcome\n \n\n\
00:00:03.280 --> 00:00:06.110 align:start position:0%\nhi everyone welcome\n\
to<00:00:03.600><c> my</c><00:00:03.900><c> kitchen</c>\n\n\
00:00:06.110 --> 00:00:06.120 align:start position:0%\nto my kitchen\n \n\n\
00:00:06.120 --> 00:00:08.000 align:start position:0%\nto my kitchen\n\
[Music]\n\n\
00:00:08.000 --> 00:00:09.000 align:start position:0%\n[Music]\n\n\
00:00:09.000 --> 00:00:10.000 align:start position:0%\nto my kitchen\nand<00:00:09.500><c> then</c>\n";

    #[test]
    fn rolling_captions_keep_only_new_lines_with_word_times() {
        let parsed = parse(ROLLING);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert!(parsed.warnings.is_empty());
        assert_eq!(texts(&parsed), ["hi everyone welcome", "to my kitchen", "", "and then"]);
        let first = &parsed.items[0];
        assert_eq!((first.start, first.end), (0.88, 3.27));
        let words: Vec<(f64, &str)> = first.words.iter().map(|w| (w.start, w.text.as_str())).collect();
        assert_eq!(words, [(0.88, "hi"), (1.199, "everyone"), (1.439, "welcome")]);
        let second: Vec<f64> = parsed.items[1].words.iter().map(|w| w.start).collect();
        assert_eq!(second, [3.28, 3.6, 3.9]);
    }

    #[test]
    fn rolling_example_with_stripped_blank_payload_line() {
        // The formats.md example: the first cue's whitespace line is empty,
        // so its text arrives as a block of its own.
        let text = "WEBVTT\nKind: captions\nLanguage: en\n\n\
00:00:00.880 --> 00:00:03.270 align:start position:0%\n\n\
hi<00:00:01.199><c> everyone</c><00:00:01.439><c> welcome</c>\n\n\
00:00:03.270 --> 00:00:03.280 align:start position:0%\nhi everyone welcome\n\n";
        let parsed = parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(texts(&parsed), ["hi everyone welcome"]);
        assert_eq!(parsed.items[0].words.len(), 3);
    }

    #[test]
    fn text_block_after_a_cue_with_text_is_an_error() {
        let text = "WEBVTT\n\n00:01.000 --> 00:02.000\none\n\nstray text\n\n00:03.000 --> 00:04.000\ntwo\n";
        let parsed = parse(text);
        assert_eq!(texts(&parsed), ["one", "two"]);
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].location().unwrap().line, Some(6));
    }

    #[test]
    fn plain_file_with_bom_crlf_notes_styles_ids_entities_and_settings() {
        let text = "\u{FEFF}WEBVTT - a title\r\n\r\n\
STYLE\r\n::cue { color: lime }\r\n\r\n\
NOTE written by hand\r\nstill the note --> not a cue\r\n\r\n\
intro\r\n00:00:01.000 --> 00:00:04.500 line:0 position:20%\r\n\
<v Chef>Salt &amp; pepper,</v>\r\n<i>don&#39;t</i> &lt;skip&gt;&nbsp;it\r\n\r\n\
01:02:03.250 --> 01:02:04.000\r\n&quot;done&quot; &#x263A;\r\n";
        let parsed = parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(texts(&parsed), ["Salt & pepper, don't <skip> it", "\"done\" ☺"]);
        assert_eq!(parsed.items[0].start, 1.0);
        assert_eq!(parsed.items[0].end, 4.5);
        assert_eq!(parsed.items[1].start, 3723.25);
        assert!(parsed.items.iter().all(|c| c.words.is_empty()));
    }

    #[test]
    fn mm_ss_times_and_header_without_blank_line() {
        let parsed = parse("WEBVTT\n00:05.000 --> 01:10.500\nshort form\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.items.len(), 1);
        assert_eq!((parsed.items[0].start, parsed.items[0].end), (5.0, 70.5));
    }

    #[test]
    fn inverted_negative_and_malformed_times_are_per_cue_errors() {
        let text = "WEBVTT\n\n\
00:05.000 --> 00:04.000\ninverted\n\n\
-00:01.000 --> 00:02.000\nnegative\n\n\
00:0x.000 --> 00:03.000\nmalformed\n\n\
00:06.000 --> 00:07.000\ngood\n";
        let parsed = parse(text);
        assert_eq!(texts(&parsed), ["good"]);
        assert_eq!(parsed.errors.len(), 3);
        assert!(matches!(
            &parsed.errors[0],
            NarrationError::InvertedTime { at, start, end }
                if at.line == Some(3) && *start == 5.0 && *end == 4.0
        ));
        assert!(matches!(
            &parsed.errors[1],
            NarrationError::InvalidTime { at, value } if at.line == Some(6) && *value == -1.0
        ));
        assert!(matches!(
            &parsed.errors[2],
            NarrationError::Malformed { at, .. } if at.line == Some(9)
        ));
        let shown = parsed.errors[0].to_string();
        assert!(shown.starts_with("t.vtt:3:"), "{shown}");
    }

    #[test]
    fn missing_header_is_a_warning_and_cues_still_read() {
        let parsed = parse("00:01.000 --> 00:02.000\nno header\n");
        assert_eq!(texts(&parsed), ["no header"]);
        assert!(matches!(parsed.warnings.as_slice(), [Warning::MissingWebVttHeader { .. }]));
    }

    #[test]
    fn cue_of_only_sound_tags_is_kept_empty() {
        let parsed = parse("WEBVTT\n\n00:01.000 --> 00:02.000\n[Music]\n");
        assert_eq!(texts(&parsed), [""]);
    }

    #[test]
    fn latin1_file_is_decoded_with_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.vtt");
        std::fs::write(&path, b"WEBVTT\n\n00:01.000 --> 00:02.000\ncr\xE8me br\xFBl\xE9e\n").unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(texts(&parsed), ["crème brûlée"]);
        assert!(
            matches!(parsed.warnings.as_slice(), [Warning::DecodedAs { first_invalid_byte: 34, encoding, .. }] if encoding == "windows-1252")
        );
    }

    #[test]
    fn czech_latin_2_file_is_decoded_with_the_detected_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cs.vtt");
        let text = "WEBVTT\n\n00:00.000 --> 00:02.000\nDobrý den, dnes budeme vařit guláš.\n\n\
                    00:02.000 --> 00:04.000\nNejdříve nakrájejte cibuli a česnek.\n";
        let (bytes, _, _) = encoding_rs::ISO_8859_2.encode(text);
        std::fs::write(&path, &bytes).unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(texts(&parsed), ["Dobrý den, dnes budeme vařit guláš.", "Nejdříve nakrájejte cibuli a česnek."]);
        assert!(
            matches!(parsed.warnings.as_slice(), [Warning::DecodedAs { encoding, .. }] if encoding == "ISO-8859-2"),
            "{:?}",
            parsed.warnings
        );
    }
}
