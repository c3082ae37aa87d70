//! Subtitle parsing (WebVTT plain and YouTube rolling, SRT, HowTo100M JSON)
//! and caption-clip alignment, on generated narration of about 20 minutes
//! per video, the length of a typical HowTo100M video.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use locvtp_narration::align::{align_video, AlignConfig};
use locvtp_narration::{howto100m, srt, webvtt, VideoCues};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

const WORDS: [&str; 16] = [
    "now", "we", "add", "the", "chopped", "onions", "to", "pan", "and", "stir", "them", "for", "a", "few", "minutes",
    "gently",
];
/// Cues per video: one every 3 s over 20 minutes.
const CUES: usize = 400;

fn ts(seconds: f64, sep: char) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn sentence(i: usize, n: usize) -> Vec<&'static str> {
    (0..n).map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()]).collect()
}

fn plain_vtt() -> String {
    let mut s = String::from("WEBVTT\n");
    for i in 0..CUES {
        let t = i as f64 * 3.0;
        let _ = write!(s, "\n{} --> {}\n{}\n", ts(t, '.'), ts(t + 2.8, '.'), sentence(i, 6 + i % 5).join(" "));
    }
    s
}

/// YouTube auto-captions: each cue repeats the previous line, then the new
/// one with inline word times, then a 10 ms hold cue.
fn rolling_vtt() -> String {
    let mut s = String::from("WEBVTT\nKind: captions\nLanguage: en\n");
    let mut previous = String::new();
    for i in 0..CUES {
        let t = i as f64 * 3.0;
        let words = sentence(i, 6 + i % 5);
        let mut line = words[0].to_string();
        for (k, w) in words.iter().enumerate().skip(1) {
            let _ = write!(line, "<{}><c> {w}</c>", ts(t + 0.3 * k as f64, '.'));
        }
        let _ = write!(s, "\n{} --> {} align:start position:0%\n{previous}\n{line}\n", ts(t, '.'), ts(t + 2.99, '.'));
        previous = words.join(" ");
        let _ = write!(s, "\n{} --> {} align:start position:0%\n{previous}\n \n", ts(t + 2.99, '.'), ts(t + 3.0, '.'));
    }
    s
}

fn srt_text() -> String {
    let mut s = String::new();
    for i in 0..CUES {
        let t = i as f64 * 3.0;
        let _ = write!(
            s,
            "{}\r\n{} --> {}\r\n{}\r\n\r\n",
            i + 1,
            ts(t, ','),
            ts(t + 2.8, ','),
            sentence(i, 6 + i % 5).join(" ")
        );
    }
    s
}

/// `videos` entries of HowTo100M's `caption.json`.
fn howto_json(videos: usize) -> String {
    let mut s = String::from("{");
    for v in 0..videos {
        let (mut starts, mut ends, mut texts) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..CUES {
            let t = i as f64 * 3.0;
            starts.push(format!("{t:.2}"));
            ends.push(format!("{:.2}", t + 2.8));
            texts.push(format!("\"{}\"", sentence(i + v, 6 + i % 5).join(" ")));
        }
        let _ = write!(
            s,
            "{}\"vid{v:08}\": {{\"start\": [{}], \"end\": [{}], \"text\": [{}]}}",
            if v == 0 { "" } else { ", " },
            starts.join(", "),
            ends.join(", "),
            texts.join(", ")
        );
    }
    s.push('}');
    s
}

fn bench_parse(c: &mut Criterion) {
    let plain = plain_vtt();
    let rolling = rolling_vtt();
    let srt_s = srt_text();
    let json = howto_json(20);
    let mut g = c.benchmark_group("narration_parse");
    for (name, text) in [("webvtt_plain_400cues", &plain), ("webvtt_rolling_400cues", &rolling)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| b.iter(|| black_box(webvtt::parse_str(text, Path::new("v.vtt")).items.len())));
    }
    g.throughput(Throughput::Bytes(srt_s.len() as u64));
    g.bench_function("srt_400cues", |b| b.iter(|| black_box(srt::parse_str(&srt_s, Path::new("v.srt")).items.len())));
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("howto100m_json_20videos", |b| {
        b.iter(|| black_box(howto100m::parse_str(&json, Path::new("caption.json")).items.len()))
    });
    g.finish();
}

fn bench_align(c: &mut Criterion) {
    let parsed = webvtt::parse_str(&rolling_vtt(), Path::new("v.vtt"));
    assert!(parsed.errors.is_empty(), "generated WebVTT must parse cleanly: {:?}", parsed.errors);
    let video = VideoCues { video_id: "vid".into(), cues: parsed.items };
    let config = AlignConfig::default();
    let mut g = c.benchmark_group("narration_align");
    g.throughput(Throughput::Elements(video.cues.len() as u64));
    g.bench_function("merge_and_clamp_400cues", |b| {
        b.iter(|| black_box(align_video(&video, CUES as f64 * 3.0 - 30.0, &config).kept.len()))
    });
    g.finish();
}

fn config() -> Criterion {
    locvtp_benches::quick(Duration::from_millis(300), Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_parse, bench_align
}
criterion_main!(benches);
