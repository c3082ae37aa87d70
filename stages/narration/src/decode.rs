//! Bytes to text for the line-oriented formats.
//!
//! Subtitles on users' disks come from many tools: UTF-8 with or without a
//! BOM, UTF-16 from Windows editors, and legacy 8-bit files in the code page
//! of their language (Windows-1251 for Russian, ISO-8859-2 for Czech or
//! Polish, Shift_JIS, ...). Rejecting the last kind would lose whole videos,
//! and reading them all as one code page would garble every letter outside
//! it, so a file that is not UTF-8 is decoded with the encoding `chardetng`
//! (Firefox's detector) finds most likely for its bytes, and the encoding
//! used is reported as a warning naming it.

use std::path::Path;

use encoding_rs::Encoding;

use crate::error::{NarrationError, Warning};

fn utf16(bytes: &[u8], little_endian: bool) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| {
            if little_endian {
                u16::from_le_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], pair[1]])
            }
        })
        .collect();
    String::from_utf16_lossy(&units)
}

/// Decodes a whole text file, dropping any byte-order mark.
pub(crate) fn decode_text(bytes: &[u8], file: &Path) -> (String, Option<Warning>) {
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return (utf16(rest, true), None);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return (utf16(rest, false), None);
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(e) => {
            let encoding = detect_legacy_encoding(bytes);
            // Single-byte encodings map every byte; multi-byte ones replace
            // a malformed sequence with U+FFFD rather than fail.
            let (text, _) = encoding.decode_without_bom_handling(bytes);
            let warning = Warning::DecodedAs {
                file: file.to_path_buf(),
                encoding: encoding.name().to_string(),
                first_invalid_byte: e.valid_up_to(),
            };
            (text.into_owned(), Some(warning))
        }
    }
}

/// Bytes outside ASCII below which a guess of one Latin code page over
/// another is not trusted (see [`detect_legacy_encoding`]).
const MIN_LATIN_EVIDENCE: usize = 4;

/// The most likely legacy encoding of bytes known not to be UTF-8.
///
/// Subtitle lines are short, and a file with one accented word gives the
/// detector a single letter to go on: `na\xEFve` is "naïve" in Windows-1252
/// and "naļve" in Windows-1257. So when the detector picks another Latin
/// code page from fewer than [`MIN_LATIN_EVIDENCE`] bytes outside ASCII,
/// Windows-1252 is used, as the most common encoding of Windows subtitle
/// tools (and a superset of Latin-1). Other scripts (Cyrillic, Greek, CJK)
/// are told apart from Latin text by a few bytes, and their guess stands.
fn detect_legacy_encoding(bytes: &[u8]) -> &'static Encoding {
    let mut detector = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
    detector.feed(bytes, true);
    let guess = detector.guess(None, chardetng::Utf8Detection::Deny);
    let other_latin = [
        encoding_rs::WINDOWS_1250,
        encoding_rs::WINDOWS_1254,
        encoding_rs::WINDOWS_1257,
        encoding_rs::WINDOWS_1258,
        encoding_rs::ISO_8859_2,
        encoding_rs::ISO_8859_3,
        encoding_rs::ISO_8859_4,
        encoding_rs::ISO_8859_10,
        encoding_rs::ISO_8859_13,
        encoding_rs::ISO_8859_14,
        encoding_rs::ISO_8859_15,
        encoding_rs::ISO_8859_16,
    ];
    let evidence = bytes.iter().filter(|b| !b.is_ascii()).count();
    if other_latin.contains(&guess) && evidence < MIN_LATIN_EVIDENCE {
        encoding_rs::WINDOWS_1252
    } else {
        guess
    }
}

/// Reads and decodes a text file.
pub(crate) fn read_text_file(path: &Path) -> Result<(String, Option<Warning>), NarrationError> {
    let bytes = std::fs::read(path).map_err(|e| NarrationError::io(path, e))?;
    Ok(decode_text(&bytes, path))
}

/// Splits text into lines, accepting LF, CRLF and lone CR (old Mac tools),
/// numbered from 1.
pub(crate) fn numbered_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..i], &rest[i + skip..])
            }
            None => (rest, ""),
        };
        lines.push((lines.len() + 1, line));
        rest = next;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bom_is_dropped_without_warning() {
        let (text, warning) = decode_text(b"\xEF\xBB\xBFcaf\xC3\xA9", Path::new("a.srt"));
        assert_eq!(text, "café");
        assert!(warning.is_none());
    }

    #[test]
    fn invalid_utf8_is_decoded_as_windows_1252_with_warning() {
        // "café – “ok”" as a Windows editor saves it.
        let bytes = b"caf\xE9 \x96 \x93ok\x94";
        let (text, warning) = decode_text(bytes, Path::new("a.srt"));
        assert_eq!(text, "café – “ok”");
        match warning {
            Some(Warning::DecodedAs { encoding, first_invalid_byte, .. }) => {
                assert_eq!((encoding.as_str(), first_invalid_byte), ("windows-1252", 3))
            }
            other => panic!("expected a Windows-1252 warning, got {other:?}"),
        }
    }

    /// `text` in `encoding`, decoded back by [`decode_text`]: the text and
    /// the encoding the warning names.
    fn round_trip(text: &str, encoding: &'static Encoding) -> (String, String) {
        let (bytes, _, unmappable) = encoding.encode(text);
        assert!(!unmappable, "the sample is representable in {}", encoding.name());
        assert!(std::str::from_utf8(&bytes).is_err(), "the sample must not be valid UTF-8");
        match decode_text(&bytes, Path::new("a.vtt")) {
            (text, Some(Warning::DecodedAs { encoding, .. })) => (text, encoding),
            other => panic!("expected a decoding warning, got {other:?}"),
        }
    }

    #[test]
    fn cyrillic_in_windows_1251_is_detected() {
        let text = "Привет всем, сегодня мы будем готовить борщ.\nСначала нарежьте свёклу и морковь.\n";
        assert_eq!(round_trip(text, encoding_rs::WINDOWS_1251), (text.to_string(), "windows-1251".to_string()));
    }

    #[test]
    fn a_short_cyrillic_line_is_enough_and_one_accented_latin_word_stays_western() {
        assert_eq!(
            round_trip("Привет\n", encoding_rs::WINDOWS_1251),
            ("Привет\n".to_string(), "windows-1251".to_string())
        );
        // The detector alone reads this as Windows-1257 ("naļve").
        let text = "naïve “quote”\n";
        assert_eq!(round_trip(text, encoding_rs::WINDOWS_1252), (text.to_string(), "windows-1252".to_string()));
    }

    #[test]
    fn czech_and_polish_in_iso_8859_2_are_detected() {
        for text in [
            "Dobrý den, dnes budeme vařit guláš.\nNejdříve nakrájejte cibuli a česnek.\n",
            "Dzień dobry, dziś ugotujemy żurek.\nNajpierw pokrój kiełbasę i ziemniaki.\n",
        ] {
            assert_eq!(round_trip(text, encoding_rs::ISO_8859_2), (text.to_string(), "ISO-8859-2".to_string()));
        }
    }

    #[test]
    fn utf16_with_bom_is_decoded() {
        let mut le = vec![0xFF, 0xFE];
        le.extend("hé\n".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode_text(&le, Path::new("a")).0, "hé\n");
        let mut be = vec![0xFE, 0xFF];
        be.extend("hé\n".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(decode_text(&be, Path::new("a")).0, "hé\n");
    }

    #[test]
    fn lines_split_on_lf_crlf_and_cr() {
        let lines = numbered_lines("a\r\nb\nc\rd\r\n\r\ne");
        assert_eq!(lines, vec![(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, ""), (6, "e")]);
    }
}
