//! locvtp-flow: pre-trains LocVTP video-text models and extracts clip
//! features for temporal localization, as timely-dataflow graphs described
//! by TOML files.
//!
//! * [`graph`]: graph files, `--set` overrides and their validation;
//! * [`engine`]: the stage-type trait, `prepare` (every check) and the
//!   generic builder of the dataflow;
//! * [`stage_types`]: one module per stage type;
//! * [`run`]: the cluster, the run itself, progress and the summary;
//! * [`cli`]: the command line; [`error`]: failures and their exit codes;
//! * [`tensorboard`]: the event files of the training metrics.

pub mod bench;
pub mod cli;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod graph;
pub mod inspect;
pub mod plot;
pub mod run;
pub mod stage_types;
pub mod tensorboard;
