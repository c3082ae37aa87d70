//! Typed options from TOML tables, reporting every unknown key and as many
//! type errors as serde lets us find in one pass.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::error::Problem;
use super::source::{index_segment, Document};

/// Deserializes `table` (found at `prefix`) into `T`, whose keys are
/// `fields`. Unknown keys are all reported up front; then, since serde
/// stops at its first error, each failing key is reported, removed and the
/// rest retried, so that one pass finds every bad value. Returns `None` if
/// anything was wrong.
pub(crate) fn deserialize_table<T: DeserializeOwned>(
    mut table: toml::Table,
    fields: &[&str],
    prefix: &[String],
    doc: &Document,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let at = |segments: &[String]| {
        let mut path = prefix.to_vec();
        path.extend_from_slice(segments);
        path
    };
    let mut ok = true;
    let unknown: Vec<String> = table.keys().filter(|k| !fields.contains(&k.as_str())).cloned().collect();
    for key in unknown {
        problems.push(doc.problem(&at(std::slice::from_ref(&key)), unknown_key_message(&key, fields)));
        table.remove(&key);
        ok = false;
    }
    let mut removed = HashSet::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(value) => return ok.then_some(value),
            Err(err) => {
                let segments: Vec<String> = err
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Map { key } => Some(key.clone()),
                        Segment::Seq { index } => Some(index_segment(*index)),
                        Segment::Enum { .. } | Segment::Unknown => None,
                    })
                    .collect();
                let message = err.inner().message().trim_end().to_string();
                if let Some(field) = missing_field(&message) {
                    // A key we removed for being wrong is not also missing.
                    if !removed.contains(field) {
                        let mut path = segments.clone();
                        path.push(field.to_string());
                        problems.push(doc.problem(&at(&path), "missing required key"));
                    }
                    return None;
                }
                problems.push(doc.problem(&at(&segments), message));
                ok = false;
                match segments.first() {
                    Some(key) if table.remove(key).is_some() => {
                        removed.insert(key.clone());
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// The field named by serde's standard "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`'))
}

/// `unknown key; expected one of: a, b, c`, with a suggestion when the key
/// looks like a misspelling of one of them.
pub(crate) fn unknown_key_message(key: &str, expected: &[&str]) -> String {
    let mut message = if expected.is_empty() {
        "unknown key; this stage type takes no options".to_string()
    } else {
        format!("unknown key; expected one of: {}", expected.join(", "))
    };
    if let Some(close) = closest(key, expected) {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    message
}

/// The candidate nearest to `word` by edit distance, if it is near enough to
/// be a plausible typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Path of `key` inside `prefix`, for messages.
pub(crate) fn key_path(prefix: &[String], key: &str) -> Vec<String> {
    let mut path = prefix.to_vec();
    if !key.is_empty() {
        path.push(key.to_string());
    }
    path
}
