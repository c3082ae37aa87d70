//! `locvtp-flow bench`: the decode stage against the physical limit and the
//! peers, and extraction end to end against its two halves, in one run on
//! the same videos.
//!
//! Decode: clips per second of our decode stage (one FFmpeg pass, libavfilter
//! scale + crop to 112x112 RGB, dense 16-frame clips), on one decoder thread
//! and with N decoder threads; the FFmpeg command line doing the same
//! resize and crop on one thread (the limit a loader built on FFmpeg can
//! reach); and the Python loaders of `benches/ratio_peers.py` (the released
//! code's reopen-and-seek PyAV loader, decord, torchcodec) where they are
//! installed. Each figure is the best of `--repeat` runs and is printed with
//! its ratio to ours.
//!
//! End to end, for each set of videos: the decode stage alone, the encoder
//! alone on as many synthetic clips at the same batch size, and
//! `locvtp-flow run` of an extraction graph over the same videos;
//! extraction should take at most 1.15 x the slower half, i.e. decoding and
//! encoding overlap. On the CPU the two halves get disjoint cores (decoder
//! threads and libtorch's intra-op threads), as in a run that overlaps them.

mod e2e;
mod exchange;
mod text_store;

use anyhow::{bail, Context, Result};
use clap::Args;
use locvtp_media::decode::{decode_video, probe, DecodeOptions, DecoderKind};
use locvtp_media::sampling::{DenseClipper, Tail};
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The Python peers, carried in the binary so that the benchmark runs from
/// any folder.
const PEERS_PY: &str = include_str!("../../../benches/ratio_peers.py");

const CLIP: usize = 16;
const SIZE: u32 = 112;
const FRAME_BYTES: usize = (SIZE * SIZE * 3) as usize;
/// Generated videos: a movie-like 2.35:1 frame and 720p.
const SHAPES: [(u32, u32); 2] = [(640, 272), (1280, 720)];
const FPS: u32 = 25;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Working folder: generated videos, the extraction run, bench.json.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// Measure these videos instead of generated ones (repeatable).
    #[arg(long = "video", value_name = "FILE")]
    videos: Vec<PathBuf>,
    /// Generated videos per frame size (640x272 and 1280x720); a multiple
    /// of the decoder threads lets the videos spread evenly over them.
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// Length of each generated video, seconds (25 fps).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Key-frame interval of the generated videos, frames (250 is libx264's
    /// default; web video often uses 2-5 s).
    #[arg(long, default_value_t = 250)]
    gop: u32,
    /// Decoder threads of the parallel measurements (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed runs of each measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python with torch and the peers installed (default: .venv/bin/python,
    /// else python3; `scripts/setup.sh --bench` installs the peers there).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Leave out the Python peers.
    #[arg(long)]
    no_python: bool,
    /// Leave out the end-to-end extraction measurement.
    #[arg(long)]
    no_e2e: bool,
    /// Leave out the decode comparison (only the end-to-end measurement).
    #[arg(long, conflicts_with = "no_e2e")]
    no_decode: bool,
    /// Instead: the caption-embedding store with this many captions.
    #[arg(long, value_name = "CAPTIONS")]
    text_store: Option<usize>,
    /// Hidden size of the synthetic entries of `--text-store`.
    #[arg(long, default_value_t = 64)]
    text_hidden: usize,
    /// Captions the real text encoder encodes in `--text-store`.
    #[arg(long, default_value_t = 2000)]
    text_encoder_captions: usize,
    /// Instead: the gradient exchange of the released model between two
    /// processes on loopback, next to torch.distributed's gloo all_reduce.
    #[arg(long)]
    exchange: bool,
    /// Floats exchanged (default: the released model's gradient).
    #[arg(long, default_value_t = 0)]
    exchange_floats: usize,
    /// Timed rounds of the exchange, in each of `--exchange-pairs` runs of
    /// ours and of gloo's.
    #[arg(long, default_value_t = 5)]
    exchange_rounds: usize,
    /// Runs of ours and of gloo's, alternately.
    #[arg(long, default_value_t = 3)]
    exchange_pairs: usize,
    /// One process of the exchange cluster (started by `--exchange`).
    #[arg(long, hide = true)]
    exchange_process: Option<usize>,
    #[arg(long, hide = true)]
    exchange_hosts: Option<PathBuf>,
    /// Decoder of the end-to-end measurement: `cpu`, or `nvdec` (the GPU's
    /// video decoder where FFmpeg and the driver offer it; the CPU's
    /// otherwise, with a message).
    #[arg(long, default_value = "cpu", value_parser = parse_decoder)]
    decoder: DecoderKind,
    /// Model of the end-to-end measurement.
    #[arg(long, default_value = "configs/c3d-small.toml")]
    model: PathBuf,
    /// Device of the end-to-end measurement.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Encoder batch size of the end-to-end measurement.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Decoder threads of the end-to-end measurement (default: half the
    /// cores when the encoder runs on the CPU, so that the two halves can
    /// overlap; all cores otherwise).
    #[arg(long)]
    e2e_decoder_threads: Option<usize>,
    /// Clips of each end-to-end measurement at least: a set's videos are
    /// listed again until they reach it, so that the pipeline's fill and
    /// drain (a batch of clips before the encoder starts, a batch after
    /// decoding ends) weigh as little as in a real run.
    #[arg(long, default_value_t = 256)]
    e2e_clips: u64,
    /// libtorch's intra-op threads for the encoder (default: the cores the
    /// decoders leave when the encoder runs on the CPU; libtorch's own
    /// choice otherwise).
    #[arg(long)]
    torch_threads: Option<usize>,
}

/// One set of videos measured together.
struct VideoSet {
    label: String,
    paths: Vec<PathBuf>,
    frames: u64,
    clips: u64,
    kbps: f64,
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What a figure was measured on: results differ between machines of the
/// same core count (CPU model, kernel), so every report names them.
fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    json!({ "cpu": cpu, "cores": cores(), "kernel": kernel, "load_before": load_avg() })
}

fn have_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fastest of `repeat` runs of `f`, which returns what it delivered.
fn best_of<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let out = f()?;
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, out));
        }
    }
    Ok(best.expect("at least one run"))
}

fn parse_decoder(name: &str) -> std::result::Result<DecoderKind, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("unknown decoder {name:?}: cpu or nvdec"))
}

/// Decodes one video as the decode stage and the dense clip sampler do;
/// returns (frames, clips).
fn decode_clips(path: &Path, codec_threads: usize, decoder: DecoderKind) -> Result<(u64, u64)> {
    let opts = DecodeOptions { codec_threads, chunk_frames: CLIP, frame_size: SIZE, decoder };
    let mut clipper = DenseClipper::new(CLIP, CLIP, Tail::Pad, FRAME_BYTES);
    let mut clips = 0u64;
    let summary = decode_video(path, &opts, |chunk| {
        for i in 0..chunk.len() {
            for clip in clipper.push(chunk.frame(i)) {
                std::hint::black_box(&clip.pixels);
                clips += 1;
            }
        }
        ControlFlow::Continue(())
    })?;
    clips += clipper.finish().len() as u64;
    Ok((summary.frames, clips))
}

/// The videos decoded by `threads` threads, each taking the next video,
/// one decoder thread per video (the decode operator's `threads`).
fn decode_parallel(paths: &[PathBuf], threads: usize, codec_threads: usize, decoder: DecoderKind) -> Result<u64> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let mut clips = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = paths.get(i) else {
                            return Ok(clips);
                        };
                        clips += decode_clips(p, codec_threads, decoder)?.1;
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("decoder thread panicked")).sum()
    })
}

/// `ffmpeg -threads 1 -i X -vf scale=-2:112,crop=112:112 -f rawvideo
/// -pix_fmt rgb24 -y /dev/null`, or only its first frame when
/// `one_frame` (what starting the process and opening the file cost).
fn ffmpeg_cli(path: &Path, one_frame: bool) -> Result<()> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-threads", "1", "-i"]).arg(path);
    if one_frame {
        cmd.args(["-frames:v", "1"]);
    }
    let out = cmd
        .args(["-vf", "scale=-2:112,crop=112:112", "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!("ffmpeg failed on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Generates `count` videos of `w`x`h` with FFmpeg's test pattern and a
/// little temporal noise (so that the encoder has detail to code), H.264
/// (libx264, crf 23, preset medium, yuv420p), kept between runs.
fn generate(dir: &Path, w: u32, h: u32, args: &BenchArgs) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for i in 0..args.count {
        let path = dir.join(format!("gen-{w}x{h}-{}s-g{}-{i}.mp4", args.seconds, args.gop));
        if !path.exists() {
            eprintln!("generating {}", path.display());
            let partial = path.with_extension("partial.mp4");
            let status = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
                .arg(format!("testsrc2=size={w}x{h}:rate={FPS}:duration={}", args.seconds))
                .arg("-vf")
                .arg(format!("noise=alls=4:allf=t:all_seed={}", 1000 + i))
                .args(["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p", "-an"])
                .args(["-g", &args.gop.to_string(), "-y"])
                .arg(&partial)
                .stdin(Stdio::null())
                .status()
                .context("running ffmpeg to generate test videos")?;
            if !status.success() {
                bail!("ffmpeg could not generate {}", partial.display());
            }
            std::fs::rename(&partial, &path)?;
        }
        out.push(path);
    }
    Ok(out)
}

/// Without the `ffmpeg` command line (a GPU machine that has only the
/// portable binary and torch), the test videos come from locvtp-flow's own
/// generator: moving shapes on plain backgrounds, a scene every 2 s, in
/// H.264 when libx264 is linked and MPEG-4 part 2 otherwise (the portable
/// build). Their decoding cost differs from the CLI's noisy H.264, so the
/// label names the codec.
fn generate_without_cli(dir: &Path, w: u32, h: u32, args: &BenchArgs) -> Result<(Vec<PathBuf>, &'static str)> {
    use locvtp_media::synth::{Background, Colour, Motion, Scene, Shape, SynthSpec, VideoCodec};
    let codec = VideoCodec::H264.encoder_name().context("this FFmpeg has neither libx264 nor the mpeg4 encoder")?;
    let codec_label = if codec == "libx264" { "H.264" } else { "MPEG-4 part 2" };
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for i in 0..args.count {
        let path = dir.join(format!("synth-{w}x{h}-{}s-{codec}-{i}.mp4", args.seconds));
        if !path.exists() {
            eprintln!("generating {} (no ffmpeg command line: locvtp-flow's own generator)", path.display());
            let seconds = args.seconds;
            let scenes = (0..(seconds / 2.0).ceil() as usize)
                .map(|k| Scene {
                    start_s: 2.0 * k as f64,
                    end_s: (2.0 * (k + 1) as f64).min(seconds),
                    shape: Shape::ALL[(i + k) % Shape::ALL.len()],
                    colour: Colour::ALL[(3 * i + k) % Colour::ALL.len()],
                    motion: Motion::ALL[(i + 2 * k) % Motion::ALL.len()],
                    background: Background::ALL[(i + k) % Background::ALL.len()],
                })
                .collect();
            let spec = SynthSpec::new(w, h, (FPS as i32, 1), seconds, scenes);
            let partial = path.with_extension("partial.mp4");
            locvtp_media::synth::write_video(&spec, &partial)
                .with_context(|| format!("generating {}", partial.display()))?;
            std::fs::rename(&partial, &path)?;
        }
        out.push(path);
    }
    Ok((out, codec_label))
}

fn video_set(label: String, paths: Vec<PathBuf>) -> Result<VideoSet> {
    let (mut frames, mut clips, mut bits, mut secs) = (0, 0, 0.0, 0.0);
    for p in &paths {
        let (f, c) = decode_clips(p, 1, DecoderKind::Cpu).with_context(|| format!("{}: cannot decode", p.display()))?;
        frames += f;
        clips += c;
        bits += std::fs::metadata(p)?.len() as f64 * 8.0;
        secs += probe(p)?.duration_s;
    }
    Ok(VideoSet { label, paths, frames, clips, kbps: bits / secs.max(1e-9) / 1e3 })
}

pub(super) fn python_for(args: &BenchArgs) -> PathBuf {
    if let Some(p) = &args.python {
        return p.clone();
    }
    let venv = PathBuf::from(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        let p = Path::new(&v).join("bin/python");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("python3")
}

/// Runs the peers script; one JSON object per peer.
fn python_peers(args: &BenchArgs, set: &VideoSet) -> Result<Vec<Value>> {
    let script = args.out.join("ratio_peers.py");
    std::fs::write(&script, PEERS_PY)?;
    let out = Command::new(python_for(args))
        .arg(&script)
        .args(["--repeat", &args.repeat.to_string()])
        .args(&set.paths)
        .stdin(Stdio::null())
        .output()
        .context("running the Python peers")?;
    let peers: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if !out.status.success() || peers.is_empty() {
        bail!("the Python peers failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(peers)
}

struct Row {
    name: String,
    threads: usize,
    clips_per_s: Option<f64>,
    note: String,
}

fn print_rows(ours: f64, rows: &[Row]) {
    println!("  {:<52} {:>7} {:>9} {:>9}", "", "threads", "clips/s", "ours/it");
    for r in rows {
        match r.clips_per_s {
            Some(c) => println!("  {:<52} {:>7} {:>9.1} {:>8.2}x  {}", r.name, r.threads, c, ours / c, r.note),
            None => println!("  {:<52} {:>7} {:>9} {:>9}  {}", r.name, r.threads, "-", "-", r.note),
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn bench_decode(args: &BenchArgs, set: &VideoSet, threads: usize, ffmpeg: bool) -> Result<Value> {
    println!(
        "\n== {}: {} videos, {} frames, {} clips of {CLIP} frames, {:.0} kb/s (best of {}; load {})",
        set.label,
        set.paths.len(),
        set.frames,
        set.clips,
        set.kbps,
        args.repeat,
        load_avg()
    );
    let rate = |d: Duration, clips: u64| clips as f64 / d.as_secs_f64();
    let mut rows = Vec::new();
    let mut record = json!({ "videos": set.label, "count": set.paths.len(), "frames": set.frames, "clips": set.clips, "kbps": set.kbps });

    let (d, clips) = best_of(args.repeat, || decode_parallel(&set.paths, 1, 1, DecoderKind::Cpu))?;
    let ours = rate(d, clips);
    rows.push(Row {
        name: "ours: decode stage, 1 decoder thread".into(),
        threads: 1,
        clips_per_s: Some(ours),
        note: String::new(),
    });
    record["ours_1"] = json!(ours);

    let mut ours_n = None;
    if threads > 1 {
        let (d, clips) = best_of(args.repeat, || decode_parallel(&set.paths, threads, 1, DecoderKind::Cpu))?;
        let r = rate(d, clips);
        ours_n = Some(r);
        rows.push(Row {
            name: format!("ours: {threads} videos at once, 1 thread each"),
            threads,
            clips_per_s: Some(r),
            note: format!("{:.1} per thread", r / threads as f64),
        });
        let (d, clips) = best_of(args.repeat, || decode_parallel(&set.paths, 1, threads, DecoderKind::Cpu))?;
        let r2 = rate(d, clips);
        rows.push(Row {
            name: format!("ours: one video at a time, codec_threads={threads}"),
            threads,
            clips_per_s: Some(r2),
            note: format!("{:.1} per thread", r2 / threads as f64),
        });
        record["ours_parallel_videos"] = json!(r);
        record["ours_codec_threads"] = json!(r2);
        record["threads"] = json!(threads);
    }

    let mut ffmpeg_rate = None;
    if ffmpeg {
        let (d, ()) = best_of(args.repeat, || set.paths.iter().try_for_each(|p| ffmpeg_cli(p, false)))?;
        let r = rate(d, set.clips);
        ffmpeg_rate = Some(r);
        rows.push(Row {
            name: "ffmpeg CLI -threads 1 (scale=-2:112,crop, rgb24)".into(),
            threads: 1,
            clips_per_s: Some(r),
            note: "a process per video".into(),
        });
        let (start, ()) = best_of(args.repeat, || set.paths.iter().try_for_each(|p| ffmpeg_cli(p, true)))?;
        if d > start {
            let r = rate(d - start, set.clips);
            rows.push(Row {
                name: "ffmpeg CLI as above, less start-up (1-frame run)".into(),
                threads: 1,
                clips_per_s: Some(r),
                note: format!("start-up {:.0} ms per video", start.as_secs_f64() * 1e3 / set.paths.len() as f64),
            });
            record["ffmpeg_cli_less_startup"] = json!(r);
        }
        record["ffmpeg_cli"] = json!(r);
    } else {
        rows.push(Row { name: "ffmpeg CLI".into(), threads: 1, clips_per_s: None, note: "not found on PATH".into() });
    }

    let mut reference = None;
    if !args.no_python {
        match python_peers(args, set) {
            Ok(peers) => {
                for p in &peers {
                    let name = p["peer"].as_str().unwrap_or("?").to_string();
                    let version = p["version"].as_str().unwrap_or("");
                    if p["available"].as_bool() == Some(true) {
                        let r = p["clips"].as_f64().unwrap_or(0.0) / p["seconds"].as_f64().unwrap_or(f64::INFINITY);
                        if p["clips"].as_u64() != Some(set.clips) {
                            eprintln!("warning: {name} delivered {} clips, ours {}", p["clips"], set.clips);
                        }
                        if name == "pyav-reference" {
                            reference = Some(r);
                        }
                        rows.push(Row {
                            name: format!("python: {name} {version}"),
                            threads: 1,
                            clips_per_s: Some(r),
                            note: String::new(),
                        });
                    } else {
                        rows.push(Row {
                            name: format!("python: {name}"),
                            threads: 1,
                            clips_per_s: None,
                            note: format!("unavailable: {}", p["reason"].as_str().unwrap_or("?")),
                        });
                    }
                }
                record["python"] = json!(peers);
            }
            Err(e) => {
                rows.push(Row { name: "python peers".into(), threads: 1, clips_per_s: None, note: format!("{e:#}") });
                record["python_error"] = json!(format!("{e:#}"));
            }
        }
    }
    print_rows(ours, &rows);

    println!("  targets:");
    if let Some(f) = ffmpeg_rate {
        println!("    ours / ffmpeg CLI, one thread each: {:.2} (>= 0.9: {})", ours / f, verdict(ours / f >= 0.9));
        if let Some(n) = ours_n {
            let per = n / threads as f64 / f;
            println!(
                "    ours per decoder thread with {threads} threads / ffmpeg CLI: {per:.2} (>= 0.9: {})",
                verdict(per >= 0.9)
            );
        }
    }
    if let Some(n) = ours_n {
        // Whole videos go to threads: with equal videos, the busiest thread
        // decodes ceil(videos / threads) of them.
        let videos = set.paths.len();
        let ideal = videos as f64 / videos.div_ceil(threads) as f64;
        println!(
            "    scaling, {threads} decoder threads / 1: {:.2}x of an ideal {ideal:.2}x ({videos} videos, {} cores here)",
            n / ours,
            cores()
        );
    }
    if let Some(r) = reference {
        println!("    ours / reference-style loader: {:.1}x (>= 5: {})", ours / r, verdict(ours / r >= 5.0));
    }
    record["load_after"] = json!(load_avg());
    Ok(record)
}

fn bench(args: &BenchArgs) -> Result<Value> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let threads = args.threads.unwrap_or_else(cores).max(1);
    let ffmpeg = have_ffmpeg();
    let mut sets = Vec::new();
    if args.videos.is_empty() {
        for (w, h) in SHAPES {
            let set = if ffmpeg {
                let paths = generate(&args.out.join("videos"), w, h, args)?;
                video_set(format!("{w}x{h} H.264, {FPS} fps, GOP {}", args.gop), paths)?
            } else {
                let (paths, codec) = generate_without_cli(&args.out.join("videos"), w, h, args)?;
                video_set(format!("{w}x{h} {codec} (locvtp-flow's own encoder), {FPS} fps"), paths)?
            };
            sets.push(set);
        }
    } else {
        let first = probe(&args.videos[0])?;
        let label = match args.videos.len() {
            1 => format!("{} ({}x{} {})", args.videos[0].display(), first.width, first.height, first.codec),
            n => format!("{n} given videos (first: {}x{} {})", first.width, first.height, first.codec),
        };
        sets.push(video_set(label, args.videos.clone())?);
    }
    println!("locvtp-flow bench: {} cores, decoder threads {threads}; clips/s = 16-frame 112x112 RGB clips delivered per second", cores());
    let mut decode = Vec::new();
    for set in sets.iter().filter(|_| !args.no_decode) {
        decode.push(bench_decode(args, set, threads, ffmpeg)?);
    }
    let mut e2e = Vec::new();
    for set in sets.iter().filter(|_| !args.no_e2e) {
        e2e.push(e2e::bench_e2e(args, set)?);
    }
    Ok(json!({ "cores": cores(), "decode": decode, "end_to_end": e2e }))
}

impl BenchArgs {
    fn exchange_floats_or(&self, released: usize) -> usize {
        if self.exchange_floats > 0 {
            self.exchange_floats
        } else {
            released
        }
    }
}

/// Entry point of `locvtp-flow bench`.
pub fn main(args: &BenchArgs) -> Result<()> {
    if let (Some(p), Some(hosts)) = (args.exchange_process, &args.exchange_hosts) {
        return exchange::exchange_process(args, p, hosts);
    }
    let machine = machine();
    println!(
        "machine: {} ({} cores, Linux {})",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?")
    );
    let (mut report, name) = match (args.text_store, args.exchange) {
        (Some(n), _) => (text_store::bench_text_store(args, n)?, "text_store.json"),
        (None, true) => (exchange::bench_exchange(args)?, "exchange.json"),
        (None, false) => (bench(args)?, "bench.json"),
    };
    if let Some(fields) = report.as_object_mut() {
        fields.insert("machine".into(), machine);
    }
    let path = args.out.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}
