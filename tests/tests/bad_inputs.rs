//! Bad and unusual videos mixed with good ones. Every good or degraded
//! video must come out in the HDF5 file with the right number of clips,
//! every bad one must be named in errors.jsonl (video id, stage, reason)
//! and counted in summary.json, and the run still exits 0.

use locvtp_tests::{
    extract_graph, ffmpeg, ffprobe_frames, ffprobe_value, make_video, read_errors, read_summary, run_flow,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// What the run must make of one input.
enum Expect {
    /// A group in the HDF5 file holding one row per 16 frames, with as many
    /// frames as ffprobe decodes from the file.
    Features,
    /// One errors.jsonl line at `stage` whose reason contains `reason`.
    Error { stage: &'static str, reason: &'static str },
}

struct Case {
    file: &'static str,
    expect: Expect,
}

impl Case {
    fn id(&self) -> &str {
        Path::new(self.file).file_stem().unwrap().to_str().unwrap()
    }
}

const CLIP: u64 = 16;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Bytes that are not any media format (a fixed linear congruential
/// sequence, so the test does not depend on a random generator).
fn junk(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Packet (offset, size) pairs of a file's video stream, in file order.
fn packet_spans(path: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,size", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let mut spans: Vec<(u64, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pos, size) = l.trim_end_matches(',').split_once(',')?;
            Some((pos.parse().ok()?, size.parse().ok()?))
        })
        .collect();
    spans.sort();
    spans
}

/// Presentation times of a file's video packets, sorted.
fn packet_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let mut t: Vec<f64> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim_end_matches(',').parse().ok()).collect();
    t.sort_by(f64::total_cmp);
    t
}

/// Writes the corpus into `v` and says what each file must yield. All
/// videos are a few frames of a few dozen pixels, except the 4K one, which
/// has two frames.
fn make_corpus(v: &Path) -> Vec<Case> {
    let p = |name: &str| v.join(name);
    let lavfi = |src: &str, out: &str, frames: &str, codec: &[&str]| {
        let mut args = vec!["-f", "lavfi", "-i", src, "-frames:v", frames];
        args.extend_from_slice(codec);
        let out = p(out);
        args.push(s(&out));
        ffmpeg(&args);
    };
    let x264 =
        |pix: &'static str| -> Vec<&'static str> { vec!["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix] };

    // Good videos from the project's own synthetic generator.
    make_video(&p("good.mp4"), 64, 48, (25, 1), 1.0);
    make_video(&p("portrait.mp4"), 48, 96, (30, 1), 0.7);

    // Damaged or unusable files.
    std::fs::write(p("zero.mp4"), b"").unwrap();
    std::fs::write(p("random.mp4"), junk(16 << 10)).unwrap();
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", s(&p("audio_only.mp4"))]);
    let cover = v.parent().unwrap().join("cover.png");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", s(&cover)]);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=0.5",
        "-i",
        s(&cover),
        "-map",
        "0",
        "-map",
        "1",
        "-c:a",
        "aac",
        "-c:v",
        "png",
        "-disposition:v:0",
        "attached_pic",
        s(&p("audio_cover.mp4")),
    ]);

    // Truncated in the middle of the media data. With the index (moov) at
    // the front the frames before the cut are usable; with the index at the
    // end, as FFmpeg writes it by default, the cut takes the index too.
    let whole = v.parent().unwrap().join("whole.mp4");
    let mut codec = x264("yuv420p");
    codec.extend_from_slice(&["-movflags", "+faststart"]);
    lavfi("testsrc2=size=64x48:rate=25", "../whole.mp4", "100", &codec);
    let spans = packet_spans(&whole);
    assert_eq!(spans.len(), 100, "packets of the whole video");
    let (pos, size) = spans[spans.len() / 2];
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(p("truncated.mp4"), &bytes[..(pos + size / 2) as usize]).unwrap();
    lavfi("testsrc2=size=64x48:rate=25", "../whole_index_at_end.mp4", "100", &x264("yuv420p"));
    let bytes = std::fs::read(v.parent().unwrap().join("whole_index_at_end.mp4")).unwrap();
    std::fs::write(p("truncated_index_at_end.mp4"), &bytes[..bytes.len() / 2]).unwrap();

    // Fewer frames than one clip.
    lavfi("testsrc2=size=64x48:rate=25", "three_frames.mp4", "3", &x264("yuv420p"));
    // Odd sizes: 4:4:4 H.264, and portrait 4:2:0 whose chroma planes are
    // rounded up (FFV1 allows both).
    lavfi("testsrc=size=97x55:rate=25", "odd_97x55.mp4", "20", &x264("yuv444p"));
    lavfi("testsrc=size=55x97:rate=25", "odd_portrait_55x97.mkv", "20", &["-c:v", "ffv1", "-pix_fmt", "yuv420p"]);
    // Variable frame rate: 12 frames at 10 fps, then 28 at 30 fps.
    let mut codec = vec!["-vf", "setpts='if(lt(N,12),N/10,1.2+(N-12)/30)/TB'", "-fps_mode", "passthrough"];
    codec.extend(x264("yuv420p"));
    lavfi("testsrc2=size=64x48:rate=30", "vfr.mp4", "40", &codec);
    // 10-bit and 4:4:4 pixel formats. The 4:4:4 one is lossless so that the
    // rotation cases below can be compared exactly.
    lavfi("testsrc2=size=64x48:rate=25", "ten_bit.mp4", "20", &x264("yuv420p10le"));
    lavfi("testsrc2=size=64x48:rate=25", "yuv444.mp4", "20", &["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p"]);
    // Rotation metadata (a display matrix written by the MP4 muxer), and
    // the same pictures turned upright by FFmpeg's own autorotation.
    for angle in ["90", "270"] {
        let rotated = p(&format!("rotated_{angle}.mp4"));
        let tag = format!("rotate={angle}");
        ffmpeg(&["-i", s(&p("yuv444.mp4")), "-c", "copy", "-metadata:s:v:0", &tag, s(&rotated)]);
        let upright = p(&format!("upright_{angle}.mp4"));
        ffmpeg(&["-i", s(&rotated), "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", s(&upright)]);
    }
    // 4K frames, downscaled like any other.
    lavfi("testsrc2=size=3840x2160:rate=25", "uhd_4k.mp4", "2", &x264("yuv420p"));
    // A raw H.264 stream: no timestamps at all, and the frame size changes
    // half way.
    let mut raw = Vec::new();
    for (i, size) in ["64x48", "48x64"].iter().enumerate() {
        let part = v.parent().unwrap().join(format!("part{i}.h264"));
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=25"),
            "-frames:v",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
            s(&part),
        ]);
        raw.extend(std::fs::read(&part).unwrap());
    }
    std::fs::write(p("raw_h264_no_pts.mp4"), raw).unwrap();
    // Two files with one id: the listing keeps the first path in sorted
    // order (dup.mkv) and names the other.
    make_video(&p("dup.mp4"), 64, 48, (25, 1), 1.0);
    lavfi("testsrc2=size=64x48:rate=25", "dup.mkv", "20", &["-c:v", "ffv1"]);

    use Expect::*;
    vec![
        Case { file: "good.mp4", expect: Features },
        Case { file: "portrait.mp4", expect: Features },
        Case { file: "zero.mp4", expect: Error { stage: "decode", reason: "empty file (0 bytes)" } },
        Case { file: "random.mp4", expect: Error { stage: "decode", reason: "not a readable media file" } },
        Case { file: "audio_only.mp4", expect: Error { stage: "decode", reason: "no video stream" } },
        Case { file: "audio_cover.mp4", expect: Error { stage: "decode", reason: "only an attached cover picture" } },
        Case { file: "truncated.mp4", expect: Features },
        Case { file: "truncated_index_at_end.mp4", expect: Error { stage: "decode", reason: "truncated" } },
        Case { file: "three_frames.mp4", expect: Features },
        Case { file: "odd_97x55.mp4", expect: Features },
        Case { file: "odd_portrait_55x97.mkv", expect: Features },
        Case { file: "vfr.mp4", expect: Features },
        Case { file: "ten_bit.mp4", expect: Features },
        Case { file: "yuv444.mp4", expect: Features },
        Case { file: "rotated_90.mp4", expect: Features },
        Case { file: "upright_90.mp4", expect: Features },
        Case { file: "rotated_270.mp4", expect: Features },
        Case { file: "upright_270.mp4", expect: Features },
        Case { file: "uhd_4k.mp4", expect: Features },
        Case { file: "raw_h264_no_pts.mp4", expect: Features },
        Case { file: "dup.mkv", expect: Features },
        Case { file: "dup.mp4", expect: Error { stage: "list", reason: "duplicate video id" } },
    ]
}

/// The corpus must be what it claims to be, or the run proves nothing.
fn check_corpus(v: &Path) {
    assert_eq!(ffprobe_value(&v.join("odd_97x55.mp4"), "stream=width,height"), "97,55");
    assert_eq!(ffprobe_value(&v.join("odd_portrait_55x97.mkv"), "stream=width,height,pix_fmt"), "55,97,yuv420p");
    assert_eq!(ffprobe_value(&v.join("ten_bit.mp4"), "stream=pix_fmt"), "yuv420p10le");
    assert_eq!(ffprobe_value(&v.join("yuv444.mp4"), "stream=pix_fmt"), "yuv444p");
    assert_eq!(ffprobe_value(&v.join("uhd_4k.mp4"), "stream=width,height"), "3840,2160");
    for angle in ["90", "270"] {
        let rotated = v.join(format!("rotated_{angle}.mp4"));
        assert!(!ffprobe_value(&rotated, "stream_side_data=rotation").is_empty(), "{angle}: no display matrix");
        let upright = v.join(format!("upright_{angle}.mp4"));
        assert_eq!(ffprobe_value(&upright, "stream=width,height"), "48,64", "autorotated copy");
        assert!(ffprobe_value(&upright, "stream_side_data=rotation").is_empty(), "{angle}: upright copy still rotated");
    }
    let times = packet_times(&v.join("vfr.mp4"));
    let steps: BTreeSet<u64> = times.windows(2).map(|w| ((w[1] - w[0]) * 1000.0).round() as u64).collect();
    assert!(steps.contains(&100) && steps.contains(&33), "vfr.mp4 frame intervals (ms): {steps:?}");
    assert_eq!(ffprobe_value(&v.join("raw_h264_no_pts.mp4"), "stream=codec_name"), "h264");
    assert_eq!(ffprobe_frames(&v.join("raw_h264_no_pts.mp4")), 20);
}

fn write_graph(dir: &Path, videos: &Path, out: &Path) -> String {
    let graph = dir.join(format!("{}.toml", out.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&graph, extract_graph(videos, out, "")).unwrap();
    graph.to_str().unwrap().to_string()
}

fn frames_attr(h5: &Path, id: &str) -> u64 {
    let file = hdf5::File::open(h5).unwrap();
    file.dataset(&format!("{id}/c3d_features")).unwrap().attr("frames").unwrap().read_scalar::<u64>().unwrap()
}

#[test]
fn bad_inputs_are_named_and_good_ones_all_come_out() {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("videos");
    std::fs::create_dir_all(&v).unwrap();
    let cases = make_corpus(&v);
    check_corpus(&v);
    let out = dir.path().join("out");
    let graph = write_graph(dir.path(), &v, &out);

    let o = run_flow(dir.path(), &["run", &graph, "-q"]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{stderr}");

    let h5 = out.join("features.h5");
    let features = locvtp_store::read_all(&h5, "c3d_features").unwrap();
    let errors = read_errors(&out);
    let mut total_clips = 0;
    for case in &cases {
        let id = case.id();
        match case.expect {
            Expect::Features => {
                let path = v.join(case.file);
                let frames = ffprobe_frames(&path);
                let (values, shape) =
                    features.get(id).unwrap_or_else(|| panic!("{id}: missing from the HDF5 file; {stderr}"));
                assert_eq!(frames_attr(&h5, id), frames, "{id}: frames decoded");
                assert_eq!(shape[0] as u64, frames.div_ceil(CLIP), "{id}: {frames} frames");
                assert_eq!(shape[1], 16, "{id}: feature size");
                assert!(values.iter().all(|x| x.is_finite()), "{id}: non-finite feature");
                total_clips += shape[0] as u64;
            }
            Expect::Error { stage, reason } => {
                let lines: Vec<_> = errors.iter().filter(|e| e["video_id"] == id).collect();
                assert_eq!(lines.len(), 1, "{id}: errors.jsonl lines {lines:?}");
                assert_eq!(lines[0]["stage"], stage, "{id}: {}", lines[0]);
                let why = lines[0]["reason"].as_str().unwrap();
                assert!(why.contains(reason), "{id}: reason {why:?} should say {reason:?}");
                if id != "dup" {
                    assert!(!features.contains_key(id), "{id}: a failed video is in the HDF5 file");
                }
            }
        }
    }
    // Degraded but usable, not rejected.
    assert_eq!(features["three_frames"].1[0], 1, "3 frames give one padded clip");
    assert_eq!(frames_attr(&h5, "uhd_4k"), 2);
    let cut = frames_attr(&h5, "truncated");
    assert!(cut > 0 && cut < 100, "truncated.mp4 gave {cut} of 100 frames");
    let dup = errors.iter().find(|e| e["video_id"] == "dup").unwrap();
    assert!(dup["reason"].as_str().unwrap().contains("dup.mp4"), "{dup}");
    assert_eq!(frames_attr(&h5, "dup"), 20, "dup.mkv is the file used");

    // Rotation metadata is applied the way FFmpeg itself applies it: the
    // rotated file's features equal those of its upright copy, bit for bit
    // (both lossless), and differ from the unrotated pictures.
    let bits = |id: &str| features[id].0.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits("rotated_90"), bits("upright_90"));
    assert_eq!(bits("rotated_270"), bits("upright_270"));
    assert_ne!(bits("upright_90"), bits("yuv444"));
    assert_ne!(bits("upright_90"), bits("upright_270"));

    let good: BTreeSet<&str> = cases.iter().filter(|c| matches!(c.expect, Expect::Features)).map(Case::id).collect();
    let bad = cases.len() - good.len();
    assert_eq!(features.keys().map(String::as_str).collect::<BTreeSet<_>>(), good);
    assert_eq!(errors.len(), bad, "one line per bad item: {errors:?}");
    for e in &errors {
        for key in ["video_id", "stage", "reason"] {
            assert!(e[key].as_str().is_some_and(|s| !s.is_empty()), "{e}: no {key}");
        }
    }
    let summary = read_summary(&out);
    let videos = &summary["videos"];
    assert_eq!(videos["total"], cases.len() as u64, "{summary}");
    assert_eq!(videos["processed"], good.len() as u64, "{summary}");
    assert_eq!(videos["failed"], bad as u64, "{summary}");
    assert_eq!(videos["skipped"], 0, "{summary}");
    assert_eq!(summary["clips"], total_clips, "{summary}");
    assert_eq!(summary["interrupted"], false, "{summary}");
    assert!(summary["errors_file"].as_str().is_some_and(|p| p.ends_with("errors.jsonl")), "{summary}");

    // --strict: the same items make the run fail. Run into the same folder:
    // errors.jsonl describes this run, not this run and the last.
    let o = run_flow(dir.path(), &["run", &graph, "-q", "--strict"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");
    assert_eq!(read_errors(&out).len(), bad, "errors.jsonl kept lines of the earlier run");
}

#[test]
fn a_folder_of_only_bad_files_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("videos");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("zero.mp4"), b"").unwrap();
    std::fs::write(v.join("random.mp4"), junk(4096)).unwrap();
    ffmpeg(&["-f", "lavfi", "-i", "sine=duration=0.2", "-c:a", "aac", s(&v.join("audio.mp4"))]);
    let out = dir.path().join("out");
    let graph = write_graph(dir.path(), &v, &out);
    let o = run_flow(dir.path(), &["run", &graph, "-q"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no video could be processed"), "{stderr}");
    let summary = read_summary(&out);
    assert_eq!(summary["videos"]["processed"], 0, "{summary}");
    assert_eq!(summary["videos"]["failed"], 3, "{summary}");
    let ids: BTreeSet<String> = read_errors(&out).iter().map(|e| e["video_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["audio", "random", "zero"].map(String::from).into());
}

#[test]
fn config_and_path_errors_exit_2_naming_the_file_and_key_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("videos");
    std::fs::create_dir_all(&v).unwrap();
    make_video(&v.join("a.mp4"), 32, 32, (25, 1), 0.2);
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"a file where a folder should be").unwrap();

    let mut cases: BTreeMap<&str, (String, Vec<String>)> = BTreeMap::new();
    // A value of the wrong type: the file, its line and the key.
    let out = dir.path().join("out-type");
    let text = extract_graph(&v, &out, "layer = 3\n");
    let line = text.lines().position(|l| l == "layer = 3").unwrap() + 1;
    cases.insert("wrong_type", (text, vec![format!("wrong_type.toml:{line}"), "layer".into()]));
    // An output folder that cannot be created (as root too: its parent is
    // a file).
    let out = blocker.join("out");
    let text = extract_graph(&v, &out, "");
    cases.insert("unwritable_output", (text, vec!["unwritable_output.toml".into(), "run.output_dir".into()]));
    // An output file whose folder cannot be created.
    let out = dir.path().join("out-path");
    let text = format!("{}path = \"{}\"\n", extract_graph(&v, &out, ""), blocker.join("features.h5").display());
    cases.insert("unwritable_file", (text, vec!["unwritable_file.toml".into(), "stages.write.path".into()]));

    for (name, (text, needles)) in cases {
        let graph = dir.path().join(format!("{name}.toml"));
        std::fs::write(&graph, &text).unwrap();
        let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(&needle), "{name}: {needle:?} missing from {stderr}");
        }
        for out in ["out-type", "out-path"] {
            let out = dir.path().join(out);
            assert!(!out.join("summary.json").exists() && !out.join("errors.jsonl").exists(), "{name}: work was done");
        }
    }
}

#[test]
fn the_pretraining_graph_trains_on_the_good_ones_and_names_the_bad() {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("videos");
    let n = dir.path().join("narration");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::create_dir_all(&n).unwrap();
    let cases = make_corpus(&v);
    for case in &cases {
        let cues = "WEBVTT\n\n00:00.000 --> 00:00.500\na red circle moves to the left\n\n00:00.500 --> 00:01.000\na blue square moves up\n";
        std::fs::write(n.join(format!("{}.vtt", case.id())), cues).unwrap();
    }
    let out = dir.path().join("out");
    let graph = dir.path().join("pretrain.toml");
    let model = locvtp_tests::repo().join("configs/c3d-tiny.toml");
    std::fs::write(
        &graph,
        format!(
            "[run]\noutput_dir = \"{out}\"\n\n[stages.videos]\ntype = \"video_files\"\ndir = \"{videos}\"\n\n\
             [stages.narration]\ntype = \"narration\"\ninputs = [\"videos\"]\ndir = \"{narration}\"\n\n[stages.meta]\ntype = \"probe\"\ninputs = [\"videos\"]\n\n\
             [stages.captions]\ntype = \"align\"\ninputs = [\"narration\", \"meta\"]\nmin_seconds = 0.2\nmax_seconds = 1.0\nmin_clip_seconds = 0.05\n\n\
             [stages.samples]\ntype = \"segment_sampler\"\ninputs = [\"captions\"]\nnum_segments = 3\n\n\
             [stages.train]\ntype = \"train\"\ninputs = [\"samples\"]\nmodel = \"{model}\"\ndevice = \"cpu\"\nepochs = 1\nbatch_size = 4\n\n\
             [stages.checkpoints]\ntype = \"checkpoints\"\ninputs = [\"train\"]\n\n[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\n",
            out = out.display(),
            videos = v.display(),
            narration = n.display(),
            model = model.display(),
        ),
    )
    .unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(out.join("checkpoints/last.safetensors").exists(), "{stderr}");
    assert!(!std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().is_empty());
    let errors = read_errors(&out);
    for case in &cases {
        if let Expect::Error { .. } = case.expect {
            assert!(
                errors.iter().any(|e| e["video_id"] == case.id()),
                "{} is not named in errors.jsonl: {errors:?}",
                case.file
            );
        }
    }
    let summary = read_summary(&out);
    let bad = cases.iter().filter(|c| matches!(c.expect, Expect::Error { .. })).count() as u64;
    assert!(summary["videos"]["processed"].as_u64().unwrap() + bad >= cases.len() as u64 - 1, "{summary}");
}
