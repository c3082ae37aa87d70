//! What flows along an edge: one [`DataKind`] per message type, and the
//! stream of any kind that the builder passes between stages.

use locvtp_operators::grounding::GroundingSample;
use locvtp_operators::samples::Sample;
use locvtp_operators::train::TrainEvent;
use locvtp_operators::{ClipMsg, FeatureMsg, FrameMsg, Narration, VideoCaptions, VideoItem, VideoMeta};
use std::fmt;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, Stream};

/// A message type that travels along graph edges.
pub trait Message: Clone + 'static + Sized {
    const KIND: DataKind;
    fn wrap(stream: Stream<'_, u64, Vec<Self>>) -> AnyStream<'_>;
    fn unwrap(stream: AnyStream<'_>) -> Result<Stream<'_, u64, Vec<Self>>, AnyStream<'_>>;
}

macro_rules! data_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident($msg:ty),)*) => {
        /// What flows along an edge between two stages.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DataKind {
            $($(#[doc = $doc])* $kind,)*
        }

        /// A built stream of one of the kinds.
        pub enum AnyStream<'s> {
            $($kind(Stream<'s, u64, Vec<$msg>>),)*
        }

        impl<'s> AnyStream<'s> {
            pub fn kind(&self) -> DataKind {
                match self {
                    $(AnyStream::$kind(_) => DataKind::$kind,)*
                }
            }

            /// The same stream, observed by `probe`.
            pub fn probed(self, probe: &ProbeHandle<u64>) -> AnyStream<'s> {
                match self {
                    $(AnyStream::$kind(s) => AnyStream::$kind(s.probe_with(probe)),)*
                }
            }
        }

        impl Clone for AnyStream<'_> {
            fn clone(&self) -> Self {
                match self {
                    $(AnyStream::$kind(s) => AnyStream::$kind(s.clone()),)*
                }
            }
        }

        $(impl Message for $msg {
            const KIND: DataKind = DataKind::$kind;

            fn wrap(stream: Stream<'_, u64, Vec<Self>>) -> AnyStream<'_> {
                AnyStream::$kind(stream)
            }

            fn unwrap(stream: AnyStream<'_>) -> Result<Stream<'_, u64, Vec<Self>>, AnyStream<'_>> {
                #[allow(unreachable_patterns)]
                match stream {
                    AnyStream::$kind(s) => Ok(s),
                    other => Err(other),
                }
            }
        })*
    };
}

data_kinds! {
    /// Paths of video files, each with its video id.
    VideoFiles(VideoItem),
    /// Narration (ASR subtitle cues) of one video.
    Narration(Narration),
    /// Duration, frame rate and frame count of a video.
    VideoMeta(VideoMeta),
    /// The caption clips of a video, fitted to its duration.
    CaptionClips(VideoCaptions),
    /// Decoded RGB frames of one video, in chunks.
    Frames(FrameMsg),
    /// Fixed-length clips of frames.
    Clips(ClipMsg),
    /// One feature vector per clip.
    Features(FeatureMsg),
    /// Training samples: T segments of F frames with a caption, at a step.
    Samples(Sample),
    /// What training did at each step: losses, and the training state for
    /// checkpoints (and, from a grounding trainer, its ranked moments).
    Training(TrainEvent),
    /// Grounding queries of a split with their video's clip features.
    GroundingQueries(GroundingSample),
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
