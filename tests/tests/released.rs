//! A checkpoint with exactly the released LocVTP names and shapes (full C3D,
//! T = 5, DDP's `module.` prefix, the text encoder inside) converts, gives
//! the features the released architecture computes in PyTorch, and starts
//! pre-training, all with configs/c3d-full.toml.

use locvtp_media::decode::{decode_video, DecodeOptions};
use locvtp_media::sampling::{DenseClipper, Tail};
use locvtp_media::synth::{narration_webvtt, write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
use locvtp_model::checkpoint::{file_sha256, read_safetensors, write_safetensors};
use locvtp_model::text::packaged_minilm_dir;
use locvtp_model::{C3dConfig, ModelConfig};
use locvtp_tests::{last_json, make_video, python, repo, run_flow};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

/// Name and shape of every tensor of the released checkpoint besides the
/// text encoder (locvtp-method.md sections 2 and 6), for a text encoder of
/// `text_dim` (768 in the released model).
fn released_shapes(text_dim: i64) -> BTreeMap<String, Vec<i64>> {
    let mut shapes = BTreeMap::new();
    let mut add = |name: &str, weight: Vec<i64>| {
        shapes.insert(format!("{name}.bias"), vec![weight[0]]);
        shapes.insert(format!("{name}.weight"), weight);
    };
    let convs = [("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256)];
    let convs5 = [("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)];
    for (name, i, o) in convs.into_iter().chain(convs5) {
        add(&format!("videoEncoder.embednet.{name}"), vec![o, i, 3, 3, 3]);
    }
    add("videoEncoder.embednet.fc6", vec![4096, 8192]);
    add("videoEncoder.embednet.fc7", vec![4096, 4096]);
    add("videoEncoder.embednet.fc8", vec![487, 4096]);
    for (head, d_in) in [("vidProjector", 4096), ("textProjector", text_dim)] {
        add(&format!("{head}.projection"), vec![256, d_in]);
        add(&format!("{head}.fc"), vec![256, 256]);
        add(&format!("{head}.layer_norm"), vec![256]);
    }
    add("shiftpredict.f_cls", vec![5, 1280]);
    for name in ["signProjWord", "distProjWord", "signProjVid", "distProjVid"] {
        add(name, vec![256, 1]);
    }
    shapes
}

/// The dense clips of `video` as the extraction graph cuts them, `[N, 16, 112, 112, 3]` u8.
fn dense_clips(video: &Path) -> Tensor {
    let mut clipper = DenseClipper::new(16, 16, Tail::Pad, 112 * 112 * 3);
    let mut clips = Vec::new();
    decode_video(video, &DecodeOptions::default(), |chunk| {
        for i in 0..chunk.len() {
            clips.extend(clipper.push(chunk.frame(i)));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    clips.extend(clipper.finish());
    let pixels: Vec<u8> = clips.iter().flat_map(|c| c.pixels.iter().copied()).collect();
    Tensor::from_slice(&pixels).reshape([clips.len() as i64, 16, 112, 112, 3])
}

fn extract_graph(video_dir: &Path, out: &Path, model: &Path, checkpoint: &Path) -> String {
    format!(
        r#"[run]
output_dir = "{out}"

[stages.videos]
type = "video_files"
dir = "{videos}"

[stages.decode]
type = "decode"
inputs = ["videos"]

[stages.clips]
type = "dense_clips"
inputs = ["decode"]

[stages.encode]
type = "c3d_encode"
inputs = ["clips"]
model = "{model}"
checkpoint = "{checkpoint}"
device = "cpu"
batch_size = 1

[stages.write]
type = "hdf5_writer"
inputs = ["encode"]
"#,
        out = out.display(),
        videos = video_dir.display(),
        model = model.display(),
        checkpoint = checkpoint.display(),
    )
}

/// One epoch of batch 1 over the caption clips of `data`.
fn pretrain_graph(data: &Path, out: &Path, model: &Path, text: &Path, init: &Path) -> String {
    format!(
        r#"[run]
output_dir = "{out}"
seed = 5

[stages.videos]
type = "video_files"
dir = "{data}/videos"

[stages.narration]
type = "narration"
inputs = ["videos"]
dir = "{data}/narration"

[stages.meta]
type = "probe"
inputs = ["videos"]

[stages.captions]
type = "align"
inputs = ["narration", "meta"]
min_seconds = 0.5
max_seconds = 1.5

[stages.samples]
type = "segment_sampler"
inputs = ["captions"]
num_segments = 5
frames_per_segment = 16

[stages.train]
type = "train"
inputs = ["samples"]
model = "{model}"
text_encoder = "{text}"
init_checkpoint = "{init}"
device = "cpu"
epochs = 1
batch_size = 2

[stages.metrics]
type = "metrics"
inputs = ["train"]
"#,
        out = out.display(),
        data = data.display(),
        model = model.display(),
        text = text.display(),
        init = init.display(),
    )
}

/// One video with one narrated scene: one caption clip, so one step of
/// batch 1 (each sample costs C3D's forward and backward pass over T = 5
/// clips, which is slow on a CPU).
fn narrated_video(data: &Path) {
    // Two caption clips: the smallest batch with an in-batch negative.
    let scenes = vec![
        Scene {
            start_s: 0.0,
            end_s: 1.2,
            shape: Shape::Circle,
            colour: Colour::Red,
            motion: Motion::Left,
            background: Background::Black,
        },
        Scene {
            start_s: 1.2,
            end_s: 2.4,
            shape: Shape::Square,
            colour: Colour::Blue,
            motion: Motion::Up,
            background: Background::Grey,
        },
    ];
    for sub in ["videos", "narration"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    write_video(&SynthSpec::new(64, 48, (25, 1), 2.4, scenes.clone()), &data.join("videos/v0.mp4")).unwrap();
    std::fs::write(data.join("narration/v0.vtt"), narration_webvtt(&scenes)).unwrap();
}

fn lap(label: &str, since: &mut Instant) {
    eprintln!("{label}: {:.1} s", since.elapsed().as_secs_f64());
    *since = Instant::now();
}

#[test]
fn a_released_checkpoint_extracts_features_and_starts_pretraining() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut clock = Instant::now();
    let minilm = packaged_minilm_dir().expect("scripts/setup.sh installs all-MiniLM-L6-v2");

    // configs/c3d-full.toml unchanged but for the text width: the released
    // model used DistilBERT-base (768), the encoder installed here is
    // all-MiniLM-L6-v2 (384).
    let full = std::fs::read_to_string(repo().join("configs/c3d-full.toml")).unwrap();
    let config = d.join("c3d-full-minilm.toml");
    std::fs::write(&config, full.replacen("text_dim = 768", "text_dim = 384", 1)).unwrap();
    let cfg = ModelConfig::from_toml_file(&config).unwrap();
    assert_eq!((cfg.num_segments, cfg.projection_dim, cfg.text_dim), (5, 256, 384));
    assert_eq!((cfg.c3d.channels, cfg.c3d.fc_dim, cfg.c3d.num_classes), (C3dConfig::default().channels, 4096, 487));

    let pth = d.join("model_50e.pth");
    let made = last_json(&python(&[
        &repo().join("tests/python/released_model.py"),
        &"make-checkpoint",
        &pth,
        &"--config",
        &config,
        &"--text-encoder",
        &minilm,
    ]));
    let converted = d.join("released.safetensors");
    python(&[&repo().join("scripts/convert_released_checkpoint.py"), &pth, &converted]);
    let (tensors, meta) = read_safetensors(&converted).unwrap();
    let shapes: BTreeMap<String, Vec<i64>> = tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    assert_eq!(shapes, released_shapes(384), "the converted checkpoint holds the released tensors and no others");
    let (text, _) = read_safetensors(&minilm.join("model.safetensors")).unwrap();
    let text_weights = text.iter().filter(|(_, t)| t.is_floating_point()).count();
    assert_eq!(made["text_encoder"], text_weights, "{made}: all-MiniLM-L6-v2's weights are in the .pth");
    assert_eq!(made["module_prefixed"], (44 + text_weights).div_ceil(2), "{made}: every other name has `module.`");
    assert_eq!(meta["epoch"], "50");
    lap("released checkpoint made and converted", &mut clock);

    // Extraction with the converted checkpoint.
    let videos = d.join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let video = videos.join("short.mp4");
    make_video(&video, 160, 120, (25, 1), 0.6);
    let out = d.join("features");
    let graph = d.join("extract.toml");
    std::fs::write(&graph, extract_graph(&videos, &out, &config, &converted)).unwrap();
    let o = run_flow(d, &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lap("extraction", &mut clock);
    let h5 = out.join("features.h5");
    let (features, shape) = locvtp_store::read_features(&h5, "short", "c3d_features").unwrap();
    assert_eq!(shape, [1, 256], "15 frames make one 16-frame clip");
    let attr: hdf5::types::VarLenUnicode = hdf5::File::open(&h5)
        .unwrap()
        .dataset("short/c3d_features")
        .unwrap()
        .attr("checkpoint")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(attr.as_str(), file_sha256(&converted).unwrap());

    // The released architecture in PyTorch, from the original .pth, on the
    // same clip.
    let clips_path = d.join("clips.safetensors");
    let clips = dense_clips(&video);
    assert_eq!(clips.size()[0], 1);
    write_safetensors(&clips_path, &[("clips".to_string(), clips)], &BTreeMap::new()).unwrap();
    let reference = d.join("reference.safetensors");
    python(&[
        &repo().join("tests/python/released_model.py"),
        &"features",
        &pth,
        &"--config",
        &config,
        &"--text-encoder",
        &minilm,
        &"--clips",
        &clips_path,
        &"--out",
        &reference,
    ]);
    let (expected, _) = read_safetensors(&reference).unwrap();
    let expected =
        Vec::<f32>::try_from(&expected.iter().find(|(n, _)| n == "projected").unwrap().1.reshape([-1])).unwrap();
    let diff = features.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "features differ from the released model's by {diff}");
    assert!(expected.iter().any(|v| (v - expected[0]).abs() > 1e-3), "a degenerate feature proves nothing");
    lap(&format!("reference features in PyTorch (largest difference {diff:.1e})"), &mut clock);

    // Pre-training from it: the fixture's splice head is zero, so the first
    // step's splice loss is ln 5 whatever the draws.
    let data = d.join("data");
    narrated_video(&data);
    let train_out = d.join("pretrain");
    let graph = d.join("pretrain.toml");
    std::fs::write(&graph, pretrain_graph(&data, &train_out, &config, &minilm, &converted)).unwrap();
    let o = run_flow(d, &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lap("one pre-training step", &mut clock);
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(train_out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    for term in ["coarse", "splice", "fg_vid", "fg_word", "fg_vid_ctx", "fg_word_ctx", "total"] {
        assert!(metrics[0][term].as_f64().unwrap().is_finite(), "{term} in {}", metrics[0]);
    }
    let splice = metrics[0]["splice"].as_f64().unwrap();
    assert!((splice - 5f64.ln()).abs() < 1e-5, "splice loss {splice}: the training did not start from the checkpoint");
}
