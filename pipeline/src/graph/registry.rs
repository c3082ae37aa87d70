//! The stage-type registry: each type's ports, output and options.
//!
//! A new stage type is an options struct implementing [`StageSpec`] plus one
//! line in the `stage_types!` invocation at the bottom of this file, which
//! adds both the [`StageOptions`] variant and the [`STAGE_TYPES`] entry.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::deser::{deserialize_table, field_names};
use super::error::Problem;
use super::options::*;
use super::paths::PathResolver;
use super::source::Document;

/// What flows along an edge between two stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// Paths of video files, each with its video id.
    VideoFiles,
    /// Decoded RGB frames of one video, in chunks.
    Frames,
    /// Fixed-length clips of frames.
    Clips,
    /// One feature vector per clip.
    Features,
    /// Narration (ASR subtitle) cues per video.
    Narration,
    /// Narration cues aligned to time spans of a video.
    CaptionClips,
    /// Duration, frame rate and size of a video.
    VideoMeta,
    /// Training samples: frames of sampled segments with their captions.
    Samples,
    /// Loss values per training step.
    Losses,
    /// Text and video embeddings for evaluation.
    // Produced by the evaluation stages, which are not registered yet.
    #[allow(dead_code)]
    Embeddings,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One input port of a stage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// Short name, for messages and `check` listings.
    pub name: &'static str,
    pub kind: DataKind,
}

/// Problems an options type finds in its own values after deserializing
/// (ranges, combinations); each names the key it is about.
#[derive(Debug, Default)]
pub struct Checks {
    pub(crate) problems: Vec<(&'static str, String)>,
}

impl Checks {
    /// Reports `message` about option `key` (`""` for the stage as a whole).
    pub fn error(&mut self, key: &'static str, message: impl Into<String>) {
        self.problems.push((key, message.into()));
    }

    /// Requires an integer option to be at least 1.
    pub fn at_least_one(&mut self, key: &'static str, value: usize) {
        if value == 0 {
            self.error(key, "must be at least 1");
        }
    }

    /// Requires a float option to be finite and greater than zero.
    pub fn positive(&mut self, key: &'static str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.error(key, format!("must be a finite number > 0, got {value}"));
        }
    }

    /// Requires a float option to be finite and not negative.
    pub fn non_negative(&mut self, key: &'static str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.error(key, format!("must be a finite number >= 0, got {value}"));
        }
    }
}

/// Implemented by the options struct of each stage type.
///
/// The struct derives `Deserialize` with `#[serde(deny_unknown_fields)]` and
/// defaults for every optional key, and `Serialize` (used to tell which
/// options differ from their defaults, for `check`).
pub trait StageSpec:
    DeserializeOwned + Serialize + Clone + fmt::Debug + PartialEq + Into<StageOptions> + 'static
{
    /// The `type = "..."` name.
    const TYPE: &'static str;
    /// Input ports in the order `inputs = [...]` lists them; empty for
    /// sources.
    const INPUTS: &'static [Port];
    /// What the stage emits; `None` for sinks.
    const OUTPUT: Option<DataKind>;

    /// Makes relative paths absolute (see [`PathResolver`]).
    fn resolve_paths(&mut self, _paths: &PathResolver<'_>) {}

    /// Checks values serde cannot (ranges, combinations of keys).
    fn validate(&self, _checks: &mut Checks) {}
}

/// A registered stage type.
#[derive(Debug)]
pub struct StageType {
    pub name: &'static str,
    pub inputs: &'static [Port],
    pub output: Option<DataKind>,
    pub(crate) parse: fn(toml::Table, &[String], &Document, &mut Vec<Problem>) -> Option<Parsed>,
}

/// Options of one stage as read from the file, before path resolution.
pub(crate) struct Parsed {
    pub options: StageOptions,
    /// Keys whose value differs from the type's default, or that have none.
    pub non_default: Vec<String>,
}

impl StageType {
    const fn of<T: StageSpec>() -> StageType {
        StageType { name: T::TYPE, inputs: T::INPUTS, output: T::OUTPUT, parse: parse_options::<T> }
    }

    /// The registered type called `name`.
    pub fn lookup(name: &str) -> Option<&'static StageType> {
        STAGE_TYPES.iter().find(|t| t.name == name)
    }

    /// Takes no inputs.
    pub fn is_source(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Emits nothing.
    pub fn is_sink(&self) -> bool {
        self.output.is_none()
    }
}

fn parse_options<T: StageSpec>(
    table: toml::Table,
    prefix: &[String],
    doc: &Document,
    problems: &mut Vec<Problem>,
) -> Option<Parsed> {
    let options: T = deserialize_table(table.clone(), prefix, doc, problems)?;
    let non_default = non_default_keys(&options, &table);
    Some(Parsed { options: options.into(), non_default })
}

/// The keys of `table` whose value differs from what the type would have
/// without them: a key is non-default when dropping it changes the
/// deserialized value, or when it cannot be dropped (it is required).
fn non_default_keys<T: StageSpec>(options: &T, table: &toml::Table) -> Vec<String> {
    let order = field_names::<T>().unwrap_or(&[]);
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

macro_rules! stage_types {
    ($($variant:ident($options:ty)),* $(,)?) => {
        /// The typed options of one stage: one variant per registered stage
        /// type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum StageOptions {
            $($variant($options),)*
        }

        $(impl From<$options> for StageOptions {
            fn from(options: $options) -> Self {
                StageOptions::$variant(options)
            }
        })*

        /// Every registered stage type, in the order messages list them.
        pub static STAGE_TYPES: &[StageType] = &[$(StageType::of::<$options>(),)*];

        impl StageOptions {
            /// The `type = "..."` name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(StageOptions::$variant(_) => <$options as StageSpec>::TYPE,)*
                }
            }

            pub(crate) fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
                match self {
                    $(StageOptions::$variant(o) => o.resolve_paths(paths),)*
                }
            }

            pub(crate) fn validate(&self, checks: &mut Checks) {
                match self {
                    $(StageOptions::$variant(o) => o.validate(checks),)*
                }
            }

            /// The options as a TOML table, for listings.
            pub(crate) fn to_toml(&self) -> Option<toml::Table> {
                match self {
                    $(StageOptions::$variant(o) => toml::Table::try_from(o).ok(),)*
                }
            }
        }
    };
}

stage_types! {
    VideoFiles(VideoFilesOptions),
    Decode(DecodeOptions),
    DenseClips(DenseClipsOptions),
    C3dEncode(C3dEncodeOptions),
    Hdf5Writer(Hdf5WriterOptions),
    Narration(NarrationOptions),
    Probe(ProbeOptions),
    Align(AlignOptions),
    Segments(SegmentsOptions),
    Train(TrainOptions),
    Checkpoints(CheckpointsOptions),
    Metrics(MetricsOptions),
    Evaluate(EvaluateOptions),
}

impl StageOptions {
    /// The registry entry of this stage's type.
    pub fn stage_type(&self) -> &'static StageType {
        StageType::lookup(self.type_name()).expect("every StageOptions variant is registered")
    }
}
