//! The video listing: every file FFmpeg opens with a video stream is
//! extracted, whatever its extension (an animated GIF, a file without an
//! extension, an unknown one), and every other file of the folder is
//! counted in summary.json under `skipped_files` with its reason.

use locvtp_tests::{extract_graph, ffmpeg, ffprobe_frames, make_video, read_errors, read_summary, run_flow};
use std::collections::BTreeMap;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `reason -> (count, file names of the examples)` from a summary.
fn skipped_files(summary: &serde_json::Value) -> BTreeMap<String, (u64, Vec<String>)> {
    summary["skipped_files"]
        .as_object()
        .unwrap_or_else(|| panic!("no skipped_files in {summary}"))
        .iter()
        .map(|(reason, v)| {
            let names = v["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| Path::new(p.as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            (reason.clone(), (v["count"].as_u64().unwrap(), names))
        })
        .collect()
}

fn expect(entries: &[(&str, &[&str])]) -> BTreeMap<String, (u64, Vec<String>)> {
    entries
        .iter()
        .map(|(reason, names)| {
            (reason.to_string(), (names.len() as u64, names.iter().map(|n| n.to_string()).collect()))
        })
        .collect()
}

#[test]
fn every_file_ffmpeg_reads_as_video_is_extracted_and_the_rest_is_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("videos");
    std::fs::create_dir_all(v.join("extras")).unwrap();
    // Videos: a GIF of 37 frames (FFmpeg's GIF encoder writes the changed
    // rectangle of each frame, as animated GIFs on the web do), an MP4,
    // and videos without an extension or with one of no known kind.
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "37", s(&v.join("anim.gif"))]);
    make_video(&v.join("clip.mp4"), 64, 48, (25, 1), 1.0);
    make_video(&v.join("noext"), 48, 64, (30, 1), 0.7);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=48x48:rate=25",
        "-frames:v",
        "20",
        "-c:v",
        "ffv1",
        "-f",
        "matroska",
        s(&v.join("odd.vid")),
    ]);
    // Not videos: audio, audio with a cover picture, bytes FFmpeg cannot
    // read, subtitles, text, a still image, a hidden file and a folder.
    let sine = ["-f", "lavfi", "-i", "sine=frequency=440:duration=0.3"];
    ffmpeg(&[&sine[..], &["-c:a", "aac", "-f", "mp4", s(&v.join("song.dat"))]].concat());
    let cover = dir.path().join("cover.png");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=32x32", "-frames:v", "1", s(&cover)]);
    ffmpeg(
        &[
            &sine[..],
            &["-i", s(&cover), "-map", "0", "-map", "1", "-c:a", "aac", "-c:v", "png"],
            &["-disposition:v:0", "attached_pic", "-f", "mp4", s(&v.join("podcast.audio"))],
        ]
        .concat(),
    );
    std::fs::write(v.join("junk.xyz"), (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(v.join("clip.en.vtt"), "WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n").unwrap();
    std::fs::write(v.join("notes.txt"), "shot on a phone\n").unwrap();
    std::fs::copy(&cover, v.join("thumb.png")).unwrap();
    std::fs::write(v.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();

    let gif_frames = ffprobe_frames(&v.join("anim.gif"));
    assert_eq!(gif_frames, 37, "the GIF must have the frames it was made with");

    let out = dir.path().join("out");
    let graph = dir.path().join("extract.toml");
    std::fs::write(&graph, extract_graph(&v, &out, "")).unwrap();
    let o = run_flow(dir.path(), &["run", s(&graph), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    let features = locvtp_store::read_all(&out.join("features.h5"), "c3d_features").unwrap();
    assert_eq!(features.keys().map(String::as_str).collect::<Vec<_>>(), ["anim", "clip", "noext", "odd"]);
    assert_eq!(features["anim"].1, [3, 16], "37 frames make ceil(37 / 16) = 3 clips");
    for (id, file) in [("clip", "clip.mp4"), ("noext", "noext"), ("odd", "odd.vid")] {
        let frames = ffprobe_frames(&v.join(file));
        assert_eq!(features[id].1[0] as u64, frames.div_ceil(16), "{file}: {frames} frames");
    }
    let h5 = hdf5::File::open(out.join("features.h5")).unwrap();
    let frames: u64 = h5.dataset("anim/c3d_features").unwrap().attr("frames").unwrap().read_scalar().unwrap();
    assert_eq!(frames, 37, "every GIF frame is decoded");

    let summary = read_summary(&out);
    assert_eq!(summary["videos"]["total"], 4, "{summary}");
    assert_eq!(summary["videos"]["processed"], 4, "{summary}");
    assert_eq!(summary["videos"]["failed"], 0, "{summary}");
    assert!(read_errors(&out).is_empty(), "a file passed over is not an item error");
    let expected = expect(&[
        ("hidden_file", &[".DS_Store"]),
        ("no_video_stream", &["podcast.audio", "song.dat"]),
        ("non_video_extension", &["clip.en.vtt", "notes.txt", "thumb.png"]),
        ("not_a_file", &["extras"]),
        ("not_media", &["junk.xyz"]),
    ]);
    assert_eq!(skipped_files(&summary), expected, "{summary}");

    // Without probing, only the listed extensions are videos.
    let out2 = dir.path().join("out-no-probe");
    let o = run_flow(
        dir.path(),
        &[
            "run",
            s(&graph),
            "-q",
            "--set",
            "stages.videos.probe_unknown=false",
            "--set",
            &format!("run.output_dir={}", s(&out2)),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = read_summary(&out2);
    assert_eq!(summary["videos"]["processed"], 2, "{summary}");
    let skipped = skipped_files(&summary);
    assert_eq!(skipped["unknown_extension"].0, 5, "{summary}");
    assert_eq!(skipped["unknown_extension"].1, ["junk.xyz", "noext", "odd.vid", "podcast.audio", "song.dat"]);
}
