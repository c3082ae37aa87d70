//! The graph file as a TOML tree plus where each key came from, and the
//! `--set` overrides applied to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::error::{Location, Problem};

/// Where one key of the merged tree came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// 1-based line in the graph file.
    Line(usize),
    /// A `--set` argument, by its key as written.
    Set(String),
}

/// The graph file parsed into a plain TOML table (what serde reads) with the
/// origin of every key, so that problems found later can name a line even
/// though `toml::Value` carries no spans.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    pub file: PathBuf,
    pub root: toml::Table,
    origins: HashMap<Vec<String>, Origin>,
}

impl Document {
    /// Parses `text`; on TOML syntax errors returns them all, with lines.
    pub fn parse(text: &str, file: &Path) -> Result<Document, Vec<Problem>> {
        let (de, errors) = DeTable::parse_recoverable(text);
        let syntax = |e: &toml::de::Error| Problem {
            location: Location::File { path: file.to_path_buf(), line: e.span().map(|s| line_of(text, s.start)) },
            key: String::new(),
            message: format!("invalid TOML: {}", e.message().trim_end()),
        };
        if !errors.is_empty() {
            // Recovery after an error often reports follow-on errors on the
            // same line; the first one is the useful one.
            let mut problems: Vec<Problem> = errors.iter().map(syntax).collect();
            problems.dedup_by(|later, first| later.location == first.location);
            return Err(problems);
        }
        let root: toml::Table = toml::from_str(text).map_err(|e| vec![syntax(&e)])?;
        let mut origins = HashMap::new();
        record_origins(de.get_ref(), text, &mut Vec::new(), &mut origins);
        Ok(Document { file: file.to_path_buf(), root, origins })
    }

    /// The origin of `path` itself, without looking at enclosing tables:
    /// `None` means the key was not written anywhere (a default).
    pub fn exact_origin(&self, path: &[String]) -> Option<&Origin> {
        self.origins.get(path)
    }

    /// Where to report a problem about `path`: the key itself if it was
    /// written, otherwise the nearest enclosing table that was (a missing
    /// key is reported at its table's header).
    pub fn locate(&self, path: &[String]) -> Location {
        (0..=path.len()).rev().find_map(|n| self.origins.get(&path[..n])).map_or_else(
            || Location::File { path: self.file.clone(), line: None },
            |origin| match origin {
                Origin::Line(line) => Location::File { path: self.file.clone(), line: Some(*line) },
                Origin::Set(key) => Location::Set { key: key.clone() },
            },
        )
    }

    /// A problem about `path`, located by [`Document::locate`].
    pub fn problem(&self, path: &[String], message: impl Into<String>) -> Problem {
        Problem { location: self.locate(path), key: dotted(path), message: message.into() }
    }

    /// Line of the key `path` in the file, if it was written there; used to
    /// keep stages in file order.
    pub fn line(&self, path: &[String]) -> Option<usize> {
        match self.origins.get(path) {
            Some(Origin::Line(line)) => Some(*line),
            _ => None,
        }
    }

    /// Sets `ov.key` to `ov.value`, creating tables on the way, and marks
    /// the key and everything below it as coming from `--set`.
    pub fn apply(&mut self, ov: &Override) -> Result<(), Problem> {
        let set_problem = |message: String| Problem {
            location: Location::Set { key: dotted(&ov.key) },
            key: dotted(&ov.key),
            message,
        };
        let (last, parents) = ov.key.split_last().expect("Override::parse rejects empty keys");
        let mut table = &mut self.root;
        for (depth, segment) in parents.iter().enumerate() {
            let entry = table.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                other => {
                    return Err(set_problem(format!(
                        "cannot set a key inside `{}`: it is {}, not a table",
                        dotted(&ov.key[..=depth]),
                        describe_value(other)
                    )));
                }
            };
            let prefix = ov.key[..=depth].to_vec();
            self.origins.entry(prefix).or_insert_with(|| Origin::Set(dotted(&ov.key)));
        }
        table.insert(last.clone(), ov.value.clone());
        self.origins.retain(|path, _| !(path.len() > ov.key.len() && path.starts_with(&ov.key)));
        self.origins.insert(ov.key.clone(), Origin::Set(dotted(&ov.key)));
        Ok(())
    }
}

fn record_origins(
    table: &DeTable<'_>,
    text: &str,
    prefix: &mut Vec<String>,
    origins: &mut HashMap<Vec<String>, Origin>,
) {
    for (key, value) in table.iter() {
        prefix.push(key.get_ref().to_string());
        origins.insert(prefix.clone(), Origin::Line(line_of(text, key.span().start)));
        record_value_origins(value, text, prefix, origins);
        prefix.pop();
    }
}

fn record_value_origins(
    value: &toml::Spanned<DeValue<'_>>,
    text: &str,
    prefix: &mut Vec<String>,
    origins: &mut HashMap<Vec<String>, Origin>,
) {
    match value.get_ref() {
        DeValue::Table(table) => record_origins(table, text, prefix, origins),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                prefix.push(index_segment(i));
                origins.insert(prefix.clone(), Origin::Line(line_of(text, item.span().start)));
                record_value_origins(item, text, prefix, origins);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Path segment for the `i`-th element of an array; never a valid bare key,
/// so it cannot collide with a table key.
pub(crate) fn index_segment(i: usize) -> String {
    format!("[{i}]")
}

/// Whether `s` is a TOML bare key, which is also what stage names and
/// `--set` key segments may be.
pub(crate) fn is_bare_key(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A key path written the way a user would type it in TOML:
/// `stages.encode.milestones[1]`, quoting keys that are not bare.
pub(crate) fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    let mut out = String::new();
    for segment in path {
        let segment = segment.as_ref();
        if segment.starts_with('[') {
            out.push_str(segment);
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        if is_bare_key(segment) {
            out.push_str(segment);
        } else {
            out.push_str(&toml::Value::String(segment.to_string()).to_string());
        }
    }
    out
}

/// "a string", "an integer", ... for messages.
pub(crate) fn describe_value(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// A command-line override `--set dotted.key=value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Override {
    /// The key path, one segment per dotted part.
    pub key: Vec<String>,
    /// The value: parsed as a TOML value (integer, float, bool, array,
    /// inline table, quoted string) when it is one, the text itself
    /// otherwise, so that `--set run.output_dir=/tmp/x` needs no quotes.
    pub value: toml::Value,
}

impl Override {
    /// Parses `KEY=VALUE`.
    pub(crate) fn parse(arg: &str) -> Result<Override, Problem> {
        let invalid = |key: &str, message: String| Problem {
            location: Location::Set { key: key.to_string() },
            key: String::new(),
            message,
        };
        let Some((key, value)) = arg.split_once('=') else {
            return Err(invalid(arg.trim(), "expected KEY=VALUE, e.g. --set stages.encode.batch_size=64".to_string()));
        };
        let key = key.trim();
        let segments: Vec<String> = key.split('.').map(str::to_string).collect();
        if let Some(bad) = segments.iter().find(|s| !is_bare_key(s)) {
            return Err(invalid(
                key,
                format!(
                    "invalid key segment `{bad}`: keys are dotted names made of \
                     letters, digits, '_' and '-'"
                ),
            ));
        }
        Ok(Override { key: segments, value: parse_value(value.trim()) })
    }
}

fn parse_value(text: &str) -> toml::Value {
    // Parsing `v = <text>` as a document and requiring exactly the one key
    // keeps text such as "1\nw = 2" from smuggling in other keys.
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    match parsed {
        // No option is a datetime; a value that happens to look like one
        // (a run name such as 2024-05-01) is meant as text.
        None | Some(toml::Value::Datetime(_)) => toml::Value::String(text.to_string()),
        Some(value) => value,
    }
}
