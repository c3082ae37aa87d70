//! Narration of scenes as WebVTT, and the sentences used as grounding
//! queries.

use std::fmt::Write as _;

use super::scene::Scene;

/// Narration for a scene; `variant` picks the wording.
fn first_cue_text(scene: &Scene, variant: usize) -> String {
    let (c, s) = (scene.colour.name(), scene.shape.name());
    let m = scene.motion;
    match variant % 5 {
        0 => format!("a {c} {s} {}", m.verb()),
        1 => format!("here we see a {c} {s} {}", m.gerund()),
        2 => format!("now there is a {c} {s} {} on a {} background", m.gerund(), scene.background.words()),
        3 => format!("watch the {c} {s} as it {}", m.verb()),
        _ => format!("next up a {c} {s} that {}", m.verb()),
    }
}

fn second_cue_text(scene: &Scene, variant: usize) -> String {
    let (c, s) = (scene.colour.name(), scene.shape.name());
    let m = scene.motion;
    match variant % 4 {
        0 => format!("the {c} {s} keeps {}", m.gerund()),
        1 => format!("you can see the {c} {s} against the {} background", scene.background.words()),
        2 => format!("still {} is the {c} {s}", m.gerund()),
        _ => format!("so the {s} is {c} and it {}", m.verb()),
    }
}

/// Deterministic wording choice: varies with the scene's position and
/// content, so repeated scenes in a set are not all narrated alike.
fn variant(index: usize, scene: &Scene) -> usize {
    index * 7 + scene.shape as usize * 3 + scene.colour as usize * 5 + scene.motion as usize * 11
}

/// The sentence describing a scene, as used for grounding queries:
/// "a red circle moves to the left."
pub fn scene_sentence(scene: &Scene) -> String {
    format!("{}.", first_cue_text(scene, 0))
}

/// `hh:mm:ss.mmm`, rounded to the millisecond.
pub fn vtt_timestamp(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// A WebVTT file narrating `scenes`: one cue per scene, two for scenes of
/// three seconds or more (split at the middle, as ASR splits speech).
pub fn narration_webvtt(scenes: &[Scene]) -> String {
    let mut out = String::from("WEBVTT\n");
    for (i, scene) in scenes.iter().enumerate() {
        let v = variant(i, scene);
        let (start_ms, end_ms) = (ms(scene.start_s), ms(scene.end_s));
        if end_ms <= start_ms {
            continue;
        }
        if scene.duration_s() >= 3.0 {
            let mid_ms = start_ms + (end_ms - start_ms) / 2;
            push_cue(&mut out, start_ms, mid_ms, &first_cue_text(scene, v));
            push_cue(&mut out, mid_ms, end_ms, &second_cue_text(scene, v));
        } else {
            push_cue(&mut out, start_ms, end_ms, &first_cue_text(scene, v));
        }
    }
    out
}

fn ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

fn push_cue(out: &mut String, start_ms: u64, end_ms: u64, text: &str) {
    let _ = write!(
        out,
        "\n{} --> {}\n{}\n",
        vtt_timestamp(start_ms as f64 / 1000.0),
        vtt_timestamp(end_ms as f64 / 1000.0),
        text
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::demo_set;
    use crate::synth::test_support::scene;
    use crate::synth::{Colour, Motion, Shape};

    /// Parses basic WebVTT: the header, then cues of `start --> end` and
    /// text lines, separated by blank lines. Returns (start, end, text).
    fn parse_vtt(text: &str) -> Vec<(f64, f64, String)> {
        fn time(s: &str) -> f64 {
            let parts: Vec<&str> = s.split(':').collect();
            assert_eq!(parts.len(), 3, "time {s}");
            assert!(parts[0].len() >= 2 && parts[1].len() == 2, "time {s}");
            let (sec, milli) = parts[2].split_once('.').expect("milliseconds");
            assert_eq!((sec.len(), milli.len()), (2, 3), "time {s}");
            let m: u32 = parts[1].parse().unwrap();
            let sc: u32 = sec.parse().unwrap();
            assert!(m < 60 && sc < 60);
            f64::from(parts[0].parse::<u32>().unwrap()) * 3600.0
                + f64::from(m) * 60.0
                + f64::from(sc)
                + f64::from(milli.parse::<u32>().unwrap()) / 1000.0
        }
        let mut blocks = text.split("\n\n");
        assert_eq!(blocks.next().unwrap().trim_end(), "WEBVTT");
        let mut cues = Vec::new();
        for block in blocks {
            let mut lines = block.lines();
            let timing = lines.next().expect("timing line");
            let (a, b) = timing.split_once(" --> ").expect("arrow");
            let body: Vec<&str> = lines.collect();
            assert!(!body.is_empty() && body.iter().all(|l| !l.trim().is_empty()));
            assert!(body.iter().all(|l| !l.contains("-->")));
            cues.push((time(a), time(b), body.join(" ")));
        }
        assert!(text.ends_with('\n'));
        cues
    }

    #[test]
    fn narration_is_valid_webvtt_naming_colour_and_shape() {
        let scenes = vec![
            scene(0.0, 2.5, Shape::Circle, Colour::Red, Motion::Left),
            scene(2.5, 6.2, Shape::Triangle, Colour::Yellow, Motion::Grow),
            scene(6.2, 3725.5, Shape::Cross, Colour::Purple, Motion::Still),
        ];
        let vtt = narration_webvtt(&scenes);
        let cues = parse_vtt(&vtt);
        assert_eq!(cues.len(), 5);
        let mut prev_end = 0.0;
        for (start, end, _) in &cues {
            assert!(end > start && *start >= prev_end - 1e-9);
            prev_end = *end;
        }
        assert_eq!(cues[0].0, 0.0);
        assert!((cues[4].1 - 3725.5).abs() < 1e-9);
        assert!(vtt.contains("01:02:05.500"));
        for s in &scenes {
            let inside: Vec<&String> = cues
                .iter()
                .filter(|(a, b, _)| *a >= s.start_s - 1e-9 && *b <= s.end_s + 1e-9)
                .map(|(_, _, t)| t)
                .collect();
            assert!(!inside.is_empty());
            for t in inside {
                assert!(t.contains(s.colour.name()) && t.contains(s.shape.name()), "{t}");
            }
        }
        assert_eq!(scene_sentence(&scenes[0]), "a red circle moves to the left.");
    }

    #[test]
    fn narration_wording_varies() {
        let set = demo_set(3);
        let mut texts = std::collections::HashSet::new();
        for v in &set {
            for (_, _, t) in parse_vtt(&narration_webvtt(&v.spec.scenes)) {
                let s = &t;
                texts.insert(s.split(' ').take(2).collect::<Vec<_>>().join(" "));
            }
        }
        assert!(texts.len() >= 5, "{texts:?}");
    }

    #[test]
    fn vtt_timestamps_round_to_the_millisecond() {
        assert_eq!(vtt_timestamp(0.0005), "00:00:00.001");
        assert_eq!(vtt_timestamp(59.9996), "00:01:00.000");
    }
}
