//! Typed stage options from a stage's table, with every problem located.

use super::deser::deserialize_table;
use super::error::Problem;
use super::source::Document;
use crate::engine::{DynStage, StageEntry, StageType};

/// Options of one stage as read from the file, before path resolution.
pub(crate) struct Parsed {
    pub options: Box<dyn DynStage>,
    /// Keys whose value differs from the type's default, or that have none.
    pub non_default: Vec<String>,
}

/// Deserializes a stage table (without `type` and `inputs`) into `T`'s
/// options: unknown keys are those missing from `T`'s schema.
pub(crate) fn parse_options<T: StageType>(
    table: toml::Table,
    prefix: &[String],
    doc: &Document,
    problems: &mut Vec<Problem>,
) -> Option<Parsed> {
    let entry = StageEntry::lookup(T::TYPE).expect("registered");
    let keys = entry.keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let options: T = deserialize_table(table.clone(), &keys, prefix, doc, problems)?;
    let non_default = non_default_keys(&options, &table, &keys);
    Some(Parsed { options: Box::new(options), non_default })
}

/// The keys of `table` whose value differs from what the type would have
/// without them: a key is non-default when dropping it changes the
/// deserialized value, or when it cannot be dropped (it is required).
fn non_default_keys<T: StageType>(options: &T, table: &toml::Table, order: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = table
        .keys()
        .filter(|key| {
            let mut without = table.clone();
            without.remove(*key);
            match toml::Value::Table(without).try_into::<T>() {
                Ok(default) => &default != options,
                Err(_) => true,
            }
        })
        .cloned()
        .collect();
    keys.sort_by_key(|k| order.iter().position(|o| o == k));
    keys
}
