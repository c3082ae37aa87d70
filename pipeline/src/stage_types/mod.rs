//! Every stage type, one module each: options, ports, checks, `build`, and
//! an in-process test of the operator. A new stage type is a new module
//! here and one line in the list below.

use crate::engine::StageEntry;

macro_rules! stage_types {
    ($($module:ident::$options:ident,)*) => {
        $(pub mod $module;)*

        /// Every registered stage type, in the order listings show them.
        pub static STAGE_TYPES: &[StageEntry] = &[$(StageEntry::of::<$module::$options>(),)*];
    };
}

stage_types! {
    video_files::VideoFiles,
    narration::NarrationReader,
    probe::Probe,
    align::Align,
    decode::Decode,
    dense_clips::DenseClips,
    c3d_encode::C3dEncode,
    segment_sampler::SegmentSampler,
    train::Train,
    hdf5_writer::Hdf5Writer,
    npy_writer::NpyWriter,
    evaluate::Evaluate,
    checkpoints::Checkpoints,
    metrics::Metrics,
    grounding_data::GroundingData,
    train_grounding::TrainGrounding,
    grounding_eval::GroundingEval,
}

#[cfg(test)]
pub(crate) mod testing;
