//! From ASR cues to training caption clips.
//!
//! ASR cues are short (HowTo100M's average about 4 s with a few words) and a
//! caption clip needs a few seconds of video behind its text, so
//! consecutive cues are merged; the merged clips are then fitted to the
//! video's probed duration. Nothing is dropped without a [`DropReason`].

use serde::{Deserialize, Serialize};

use crate::error::NarrationError;
use crate::{Cue, VideoCues, Word};

/// A training sample's text and span, in seconds from the video's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionClip {
    pub video_id: String,
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    /// Word times inside `[start_s, end_s)`, when the source had them.
    pub words: Vec<Word>,
}

/// Merge and clamp parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    /// Merging stops once a clip spans this long (MIL-NCE: 4 s).
    pub min_seconds: f64,
    /// A merge that would make the span longer than this is not made.
    ///
    /// Default 16 s: four times `min_seconds`, so that several sub-second
    /// cues can still be merged up to the target even across short pauses,
    /// while narration stays close to what is on screen (ASR talk drifts
    /// from the pictures over longer windows) and the T segments sampled
    /// from the clip stay at most a couple of seconds apart.
    pub max_seconds: f64,
    /// A merge that would make the text longer than this many
    /// whitespace-separated words is not made. 32 words is about two spoken
    /// sentences and keeps word-level losses over a handful of clips.
    pub max_words: usize,
    /// After clamping, clips shorter than this are dropped. Default 1 s: at
    /// 24-30 fps that is under two 16-frame segments, below which the
    /// segment sampler mostly repeats frames.
    pub min_clip_seconds: f64,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self { min_seconds: 4.0, max_seconds: 16.0, max_words: 32, min_clip_seconds: 1.0 }
    }
}

impl AlignConfig {
    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), NarrationError> {
        let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_non_negative(self.min_seconds) || !finite_non_negative(self.min_clip_seconds) {
            return Err(NarrationError::Config(
                "min_seconds and min_clip_seconds must be finite and non-negative".into(),
            ));
        }
        if !self.max_seconds.is_finite() || self.max_seconds < self.min_seconds {
            return Err(NarrationError::Config(format!(
                "max_seconds ({}) must be finite and at least min_seconds ({})",
                self.max_seconds, self.min_seconds
            )));
        }
        if self.min_clip_seconds > self.max_seconds {
            return Err(NarrationError::Config(format!(
                "min_clip_seconds ({}) above max_seconds ({}) would drop every merged clip",
                self.min_clip_seconds, self.max_seconds
            )));
        }
        if self.max_words == 0 {
            return Err(NarrationError::Config("max_words must be at least 1".into()));
        }
        Ok(())
    }
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

struct Group {
    start: f64,
    end: f64,
    words: usize,
    texts: Vec<String>,
    timed: Vec<Word>,
}

impl Group {
    fn new(cue: &Cue) -> Self {
        Self {
            start: cue.start,
            end: cue.end,
            words: word_count(&cue.text),
            texts: vec![cue.text.clone()],
            timed: cue.words.clone(),
        }
    }

    fn add(&mut self, cue: &Cue) {
        self.end = self.end.max(cue.end);
        self.words += word_count(&cue.text);
        self.texts.push(cue.text.clone());
        self.timed.extend(cue.words.iter().cloned());
    }

    fn into_clip(self, video_id: &str) -> CaptionClip {
        CaptionClip {
            video_id: video_id.to_owned(),
            start_s: self.start,
            end_s: self.end,
            text: self.texts.join(" "),
            words: self.timed,
        }
    }
}

/// Merges one video's cues, sorted by start, into caption clips.
///
/// A clip grows cue by cue until it spans `min_seconds`; a cue that would
/// push it past `max_seconds` or `max_words` starts a new clip instead. A
/// single cue already over a limit becomes a clip on its own: splitting its
/// text without word times would be guesswork. A cue with empty text (only
/// sound tags) is never merged, since it marks a stretch without speech; it
/// becomes an empty clip of its own, which [`clamp_to_video`] drops with
/// [`DropReason::EmptyText`].
pub fn merge_cues(video_id: &str, cues: &[Cue], config: &AlignConfig) -> Vec<CaptionClip> {
    let mut sorted: Vec<&Cue> = cues.iter().collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start));

    let mut clips = Vec::new();
    let mut group: Option<Group> = None;
    for cue in sorted {
        if cue.text.trim().is_empty() {
            clips.extend(group.take().map(|g| g.into_clip(video_id)));
            clips.push(Group::new(cue).into_clip(video_id));
            continue;
        }
        group = Some(match group.take() {
            None => Group::new(cue),
            Some(mut g) => {
                let long_enough = g.end - g.start >= config.min_seconds;
                let too_long = g.end.max(cue.end) - g.start > config.max_seconds;
                let too_wordy = g.words + word_count(&cue.text) > config.max_words;
                if long_enough || too_long || too_wordy {
                    clips.push(g.into_clip(video_id));
                    Group::new(cue)
                } else {
                    g.add(cue);
                    g
                }
            }
        });
    }
    clips.extend(group.map(|g| g.into_clip(video_id)));
    clips
}

/// Why a clip did not make it into training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No words left after removing markup and sound tags.
    EmptyText,
    /// The span does not overlap the video at all.
    OutsideVideo,
    /// Shorter than `min_clip_seconds` after clamping.
    TooShort,
    /// The video's duration is unknown, zero, negative or not finite.
    InvalidVideoDuration,
}

/// A clip that was dropped, as it was before clamping, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedClip {
    pub clip: CaptionClip,
    pub reason: DropReason,
}

/// The outcome of fitting clips to a video.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Clamped {
    pub kept: Vec<CaptionClip>,
    pub dropped: Vec<DroppedClip>,
}

/// Fits clips to a video of `duration_s` seconds: spans are clamped to
/// `[0, duration_s]`, word times outside the clamped span are removed, and
/// clips that are empty, outside the video or too short are dropped with
/// their reason.
pub fn clamp_to_video(clips: Vec<CaptionClip>, duration_s: f64, config: &AlignConfig) -> Clamped {
    let mut out = Clamped::default();
    let valid_duration = duration_s.is_finite() && duration_s > 0.0;
    for clip in clips {
        let reason = if !valid_duration {
            Some(DropReason::InvalidVideoDuration)
        } else if clip.text.trim().is_empty() {
            Some(DropReason::EmptyText)
        } else if clip.end_s <= 0.0 || clip.start_s >= duration_s {
            Some(DropReason::OutsideVideo)
        } else if clip.end_s.min(duration_s) - clip.start_s.max(0.0) < config.min_clip_seconds {
            Some(DropReason::TooShort)
        } else {
            None
        };
        if let Some(reason) = reason {
            out.dropped.push(DroppedClip { clip, reason });
            continue;
        }
        let start_s = clip.start_s.max(0.0);
        let end_s = clip.end_s.min(duration_s);
        let words = clip.words.into_iter().filter(|w| w.start >= start_s && w.start < end_s).collect();
        out.kept.push(CaptionClip { start_s, end_s, words, ..clip });
    }
    out
}

/// Merges a video's cues and fits them to its duration in one step.
pub fn align_video(video: &VideoCues, duration_s: f64, config: &AlignConfig) -> Clamped {
    clamp_to_video(merge_cues(&video.video_id, &video.cues, config), duration_s, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cue(start: f64, end: f64, text: &str) -> Cue {
        Cue { start, end, text: text.into(), words: Vec::new() }
    }

    fn spans(clips: &[CaptionClip]) -> Vec<(f64, f64)> {
        clips.iter().map(|c| (c.start_s, c.end_s)).collect()
    }

    fn clip(start: f64, end: f64, text: &str) -> CaptionClip {
        CaptionClip { video_id: "v".into(), start_s: start, end_s: end, text: text.into(), words: Vec::new() }
    }

    #[test]
    fn merges_until_min_seconds_in_start_order() {
        let cues = [cue(3.0, 4.5, "c"), cue(0.0, 1.5, "a"), cue(1.5, 3.0, "b"), cue(4.5, 6.0, "d"), cue(6.0, 7.0, "e")];
        let clips = merge_cues("v", &cues, &AlignConfig::default());
        assert_eq!(spans(&clips), [(0.0, 4.5), (4.5, 7.0)]);
        assert_eq!(clips[0].text, "a b c");
        assert_eq!(clips[1].text, "d e");
        assert!(clips.iter().all(|c| c.video_id == "v"));
    }

    #[test]
    fn merging_stops_at_max_words() {
        let config = AlignConfig { max_words: 5, ..AlignConfig::default() };
        let cues = [
            cue(0.0, 1.0, "one two three"),
            cue(1.0, 2.0, "four five"),
            cue(2.0, 3.0, "six"),
            cue(3.0, 4.0, "seven eight nine ten eleven twelve"),
        ];
        let clips = merge_cues("v", &cues, &config);
        let texts: Vec<&str> = clips.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["one two three four five", "six", "seven eight nine ten eleven twelve"]);
    }

    #[test]
    fn merging_stops_at_max_seconds() {
        let config = AlignConfig { max_seconds: 6.0, ..AlignConfig::default() };
        let cues = [cue(0.0, 1.0, "a"), cue(5.5, 6.0, "b"), cue(6.5, 7.0, "c")];
        let clips = merge_cues("v", &cues, &config);
        assert_eq!(spans(&clips), [(0.0, 6.0), (6.5, 7.0)]);
        // Exactly max_seconds is allowed; one more merge would pass it.
        assert_eq!(clips[0].text, "a b");
    }

    #[test]
    fn empty_cue_is_not_merged_and_breaks_the_group() {
        let cues = [cue(0.0, 1.0, "a"), cue(1.0, 3.0, ""), cue(3.0, 4.0, "b")];
        let clips = merge_cues("v", &cues, &AlignConfig::default());
        let texts: Vec<&str> = clips.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["a", "", "b"]);
    }

    #[test]
    fn overlapping_cues_extend_to_the_latest_end() {
        let cues = [cue(0.0, 3.0, "a"), cue(1.0, 2.0, "b"), cue(2.0, 5.0, "c")];
        let clips = merge_cues("v", &cues, &AlignConfig::default());
        assert_eq!(spans(&clips), [(0.0, 5.0)]);
    }

    #[test]
    fn clamping_and_drop_reasons() {
        let config = AlignConfig::default();
        let mut timed = clip(-2.0, 3.0, "starts before");
        timed.words = vec![Word { start: -1.0, text: "starts".into() }, Word { start: 0.5, text: "before".into() }];
        let clips = vec![
            timed,
            clip(8.0, 12.0, "runs past the end"),
            clip(2.0, 4.0, "  "),
            clip(10.0, 14.0, "after the end"),
            clip(-5.0, 0.0, "ends at zero"),
            clip(9.6, 13.0, "mostly past the end"),
        ];
        let out = clamp_to_video(clips, 10.0, &config);
        assert_eq!(spans(&out.kept), [(0.0, 3.0), (8.0, 10.0)]);
        let words: Vec<&str> = out.kept[0].words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(words, ["before"]);
        let reasons: Vec<(&str, DropReason)> = out.dropped.iter().map(|d| (d.clip.text.as_str(), d.reason)).collect();
        assert_eq!(
            reasons,
            [
                ("  ", DropReason::EmptyText),
                ("after the end", DropReason::OutsideVideo),
                ("ends at zero", DropReason::OutsideVideo),
                ("mostly past the end", DropReason::TooShort),
            ]
        );
        // Dropped clips keep their original span for the report.
        assert_eq!(out.dropped[3].clip.end_s, 13.0);
    }

    #[test]
    fn unknown_duration_drops_everything_with_its_reason() {
        for duration in [0.0, -1.0, f64::NAN] {
            let out = clamp_to_video(vec![clip(0.0, 5.0, "a")], duration, &AlignConfig::default());
            assert!(out.kept.is_empty());
            assert_eq!(out.dropped[0].reason, DropReason::InvalidVideoDuration);
        }
    }

    #[test]
    fn align_video_merges_then_clamps() {
        let video = VideoCues {
            video_id: "vid".into(),
            cues: vec![
                cue(0.0, 2.0, "so today"),
                cue(2.0, 4.0, "we make"),
                cue(4.0, 5.0, ""),
                cue(58.0, 61.0, "bye now"),
            ],
        };
        let out = align_video(&video, 59.5, &AlignConfig::default());
        assert_eq!(spans(&out.kept), [(0.0, 4.0), (58.0, 59.5)]);
        assert_eq!(out.kept[0].text, "so today we make");
        assert_eq!(out.dropped.len(), 1);
        assert_eq!(out.dropped[0].reason, DropReason::EmptyText);
    }

    #[test]
    fn config_deserialises_with_defaults_and_rejects_unknown_fields() {
        let config: AlignConfig = serde_json::from_str(r#"{"max_words": 20}"#).unwrap();
        assert_eq!(config, AlignConfig { max_words: 20, ..AlignConfig::default() });
        let error = serde_json::from_str::<AlignConfig>(r#"{"max_word": 20}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
        assert_eq!(AlignConfig::default().min_seconds, 4.0);
    }

    #[test]
    fn config_validation() {
        assert!(AlignConfig::default().validate().is_ok());
        let bad = [
            AlignConfig { max_seconds: 3.0, ..AlignConfig::default() },
            AlignConfig { max_words: 0, ..AlignConfig::default() },
            AlignConfig { min_seconds: f64::NAN, ..AlignConfig::default() },
            AlignConfig { min_clip_seconds: 20.0, ..AlignConfig::default() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(NarrationError::Config(_))), "{config:?} should be rejected");
        }
    }
}
