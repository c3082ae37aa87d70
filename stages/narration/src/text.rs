//! Cue text cleaning shared by the readers: markup, entities, sound tags and
//! timestamps.

/// Which markup a cue line may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Markup {
    /// WebVTT: `<c>`, `<v Name>` and inline `<00:00:01.199>` word times.
    WebVtt,
    /// SubRip: HTML-ish `<i>`, `<font ...>` and ASS overrides like `{\an8}`.
    Srt,
    /// Already plain text (HowTo100M JSON).
    Plain,
}

/// One whitespace-separated word and the inline time it was given, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub text: String,
    pub time: Option<f64>,
}

/// Why a timestamp could not be read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeError {
    Malformed(String),
    Negative(f64),
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `hh:mm:ss.ttt` or `mm:ss.ttt`, accepting `,` as the decimal
/// separator (SubRip's, and a common slip in hand-made WebVTT) and any number
/// of fraction digits. A leading `-` is read so that negative times can be
/// reported as such rather than as garbage.
pub(crate) fn parse_timestamp(s: &str) -> Result<f64, TimeError> {
    let malformed = || TimeError::Malformed(format!("malformed time {s:?}"));
    let trimmed = s.trim();
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (hours, minutes, seconds) = match parts.as_slice() {
        [m, s] => ("0", *m, *s),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(malformed()),
    };
    let (whole, fraction) = match seconds.split_once(['.', ',']) {
        Some((w, f)) => (w, Some(f)),
        None => (seconds, None),
    };
    if !all_digits(hours)
        || !all_digits(minutes)
        || minutes.len() > 2
        || !all_digits(whole)
        || whole.len() > 2
        || fraction.is_some_and(|f| !all_digits(f))
    {
        return Err(malformed());
    }
    let h: f64 = hours.parse().map_err(|_| malformed())?;
    let m: f64 = minutes.parse().map_err(|_| malformed())?;
    // Parsed as one decimal so that "03.270" is the f64 nearest to 3.27.
    let sec: f64 = format!("{whole}.{}", fraction.unwrap_or("0")).parse().map_err(|_| malformed())?;
    if m >= 60.0 || sec >= 60.0 {
        return Err(TimeError::Malformed(format!("minutes and seconds must be below 60 in {s:?}")));
    }
    let value = h * 3600.0 + m * 60.0 + sec;
    if negative && value > 0.0 {
        return Err(TimeError::Negative(-value));
    }
    Ok(value)
}

fn named_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        // The text feeds a tokenizer, for which a non-breaking space is just
        // a space.
        "nbsp" => " ",
        // Direction marks are invisible; kept, they would only split or
        // pollute word pieces.
        "lrm" | "rlm" => "",
        _ => return None,
    })
}

fn numeric_entity(body: &str) -> Option<char> {
    let code = match body.strip_prefix(['x', 'X']) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => body.parse::<u32>().ok()?,
    };
    char::from_u32(code).filter(|&c| c != '\0')
}

/// Decodes the HTML entities that subtitle files use; an unknown or
/// unterminated entity is kept as written rather than guessed at.
pub(crate) fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let decoded = after.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let body = &after[..semi];
            let replacement = match body.strip_prefix('#') {
                Some(number) => numeric_entity(number).map(String::from),
                None => named_entity(body).map(String::from),
            };
            replacement.map(|r| (r, semi))
        });
        match decoded {
            Some((replacement, semi)) => {
                out.push_str(&replacement);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn push_words(buffer: &mut String, time: Option<f64>, tokens: &mut Vec<Token>) {
    let decoded = decode_entities(buffer);
    tokens.extend(decoded.split_whitespace().map(|w| Token { text: w.to_owned(), time }));
    buffer.clear();
}

/// Splits one cue line into words, removing markup. A WebVTT inline
/// timestamp starts a new run of words with that time; other tags vanish
/// without breaking a word, so `hel<i>lo</i>` stays one word.
pub(crate) fn tokenize(line: &str, markup: Markup) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut buffer = String::new();
    let mut time = None;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if markup != Markup::Plain && c == '<' {
            if let Some(close) = rest.find('>') {
                let inner = &rest[1..close];
                let is_tag = inner.chars().next().is_some_and(|first| first.is_ascii_alphanumeric() || first == '/')
                    && !inner.contains('<');
                if is_tag {
                    if markup == Markup::WebVtt && inner.starts_with(|c: char| c.is_ascii_digit()) {
                        if let Ok(t) = parse_timestamp(inner) {
                            push_words(&mut buffer, time, &mut tokens);
                            time = Some(t);
                        }
                    }
                    rest = &rest[close + 1..];
                    continue;
                }
            }
        }
        if markup == Markup::Srt && rest.starts_with("{\\") {
            if let Some(close) = rest.find('}') {
                rest = &rest[close + 1..];
                continue;
            }
        }
        buffer.push(c);
        rest = &rest[c.len_utf8()..];
    }
    push_words(&mut buffer, time, &mut tokens);
    tokens
}

/// Removes bracketed sound tags such as `[Music]` or `[Intro music]`. An
/// unclosed `[` is kept: it is more likely text than a tag.
pub(crate) fn remove_sound_tags(tokens: Vec<Token>) -> Vec<Token> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i].text.starts_with('[') {
            if let Some(offset) = tokens[i..].iter().position(|t| t.text.ends_with(']')) {
                i += offset + 1;
                continue;
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// Cleans one line: markup, entities, sound tags and whitespace.
pub(crate) fn clean_line(line: &str, markup: Markup) -> Vec<Token> {
    remove_sound_tags(tokenize(line, markup))
}

pub(crate) fn join_tokens(tokens: &[Token]) -> String {
    let mut text = String::new();
    for token in tokens {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&token.text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(tokens: &[Token]) -> Vec<&str> {
        tokens.iter().map(|t| t.text.as_str()).collect()
    }

    #[test]
    fn timestamps_in_both_forms_and_separators() {
        assert_eq!(parse_timestamp("00:00:03.270"), Ok(3.27));
        assert_eq!(parse_timestamp("01:02:03.5"), Ok(3723.5));
        assert_eq!(parse_timestamp("02:03.250"), Ok(123.25));
        assert_eq!(parse_timestamp("00:00:02,280"), Ok(2.28));
        assert_eq!(parse_timestamp("100:00:00.000"), Ok(360000.0));
        assert_eq!(parse_timestamp("00:00:07"), Ok(7.0));
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for bad in ["", "1.5", "00:61:00.000", "00:00:75.0", "aa:00.000", "0:0:0:0", "00:00.x"] {
            assert!(matches!(parse_timestamp(bad), Err(TimeError::Malformed(_))), "{bad:?} should be malformed");
        }
        assert_eq!(parse_timestamp("-00:00:01.500"), Err(TimeError::Negative(-1.5)));
    }

    #[test]
    fn entities_named_numeric_and_unknown() {
        assert_eq!(
            decode_entities("a &amp; b &lt;i&gt; &quot;x&quot; it&#39;s &#x27;y&#X27; c&nbsp;d"),
            "a & b <i> \"x\" it's 'y' c d"
        );
        assert_eq!(decode_entities("&bogus; & &amp &#xZZ;"), "&bogus; & &amp &#xZZ;");
        assert_eq!(decode_entities("caf&#233;"), "café");
    }

    #[test]
    fn webvtt_inline_timestamps_become_word_times() {
        let tokens = tokenize("hi<00:00:01.199><c> everyone</c><00:00:01.439><c> welcome</c>", Markup::WebVtt);
        assert_eq!(words(&tokens), ["hi", "everyone", "welcome"]);
        let times: Vec<Option<f64>> = tokens.iter().map(|t| t.time).collect();
        assert_eq!(times, [None, Some(1.199), Some(1.439)]);
    }

    #[test]
    fn tags_vanish_without_splitting_words_and_escaped_tags_stay_text() {
        let tokens = tokenize("<v Roger>hel<i>lo</i> &lt;b&gt; a < b", Markup::WebVtt);
        assert_eq!(words(&tokens), ["hello", "<b>", "a", "<", "b"]);
        let tokens = tokenize("{\\an8}<font color=\"#fff\">Top</font> line", Markup::Srt);
        assert_eq!(words(&tokens), ["Top", "line"]);
        let tokens = tokenize("<i>kept</i>", Markup::Plain);
        assert_eq!(words(&tokens), ["<i>kept</i>"]);
    }

    #[test]
    fn sound_tags_are_removed_but_unclosed_brackets_kept() {
        let tokens = clean_line("[Intro music] so [Music] today [ __ ] we", Markup::Srt);
        assert_eq!(words(&tokens), ["so", "today", "we"]);
        let tokens = clean_line("array[0 is first", Markup::Srt);
        assert_eq!(words(&tokens), ["array[0", "is", "first"]);
        let tokens = clean_line("[unclosed tag", Markup::Srt);
        assert_eq!(words(&tokens), ["[unclosed", "tag"]);
    }
}
