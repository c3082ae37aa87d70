//! Bytes to text for the line-oriented formats.
//!
//! Subtitles on users' disks come from many tools: UTF-8 with or without a
//! BOM, UTF-16 from Windows editors, and legacy 8-bit files. Rejecting the
//! last kind would lose whole videos over one accented letter, so invalid
//! UTF-8 is read as Windows-1252 and reported as a warning.

use std::path::Path;

use crate::error::{NarrationError, Warning};

/// Windows-1252 bytes 0x80..=0x9F. The five bytes the code page leaves
/// undefined map to the C1 control of the same value, as WHATWG specifies,
/// so that decoding never fails.
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{02C6}',
    '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}', '\u{0090}', '\u{2018}',
    '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{02DC}', '\u{2122}', '\u{0161}',
    '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

pub(crate) fn windows_1252(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

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
        Err(e) => (
            windows_1252(bytes),
            Some(Warning::DecodedAsWindows1252 { file: file.to_path_buf(), first_invalid_byte: e.valid_up_to() }),
        ),
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
            Some(Warning::DecodedAsWindows1252 { first_invalid_byte, .. }) => assert_eq!(first_invalid_byte, 3),
            other => panic!("expected a Windows-1252 warning, got {other:?}"),
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
