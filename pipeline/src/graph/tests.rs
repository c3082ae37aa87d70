use std::path::{Path, PathBuf};

use super::*;
use crate::engine::{DataKind, StageEntry};
use crate::stage_types::align::Align;
use crate::stage_types::c3d_encode::C3dEncode;
use crate::stage_types::decode::Decode;
use crate::stage_types::hdf5_writer::Hdf5Writer;
use crate::stage_types::narration::NarrationReader;
use crate::stage_types::train::Train;
use crate::stage_types::video_files::VideoFiles;
use locvtp_model::device::Device;
use locvtp_model::Layer;
use locvtp_narration::NarrationFormat;

const EXTRACT: &str = r#"
[run]
output_dir = "../runs/extract"

[stages.videos]
type = "video_files"
dir = "../data/videos"

[stages.decode]
type = "decode"
inputs = ["videos"]

[stages.clips]
type = "dense_clips"
inputs = ["decode"]

[stages.encode]
type = "c3d_encode"
inputs = ["clips"]
model = "../configs/c3d-tiny.toml"
batch_size = 4

[stages.write]
type = "hdf5_writer"
inputs = ["encode"]
"#;

const PRETRAIN: &str = r#"
[run]
output_dir = "runs/pretrain"
seed = 7

[stages.videos]
type = "video_files"
dir = "videos"

[stages.narration]
type = "narration"
inputs = ["videos"]
file = "caption.json"
format = "howto100m_json"

[stages.probe]
type = "probe"
inputs = ["videos"]

[stages.align]
type = "align"
inputs = ["narration", "probe"]

[stages.segments]
type = "segment_sampler"
inputs = ["align"]

[stages.train]
type = "train"
inputs = ["segments"]
model = "configs/c3d-tiny.toml"
milestones = [5, 8]
epochs = 10

[stages.checkpoints]
type = "checkpoints"
inputs = ["train"]

[stages.metrics]
type = "metrics"
inputs = ["train"]
"#;

const FILE: &str = "graphs/test.toml";
const CWD: &str = "/home/user/work";

fn parse(text: &str, overrides: &[&str]) -> Result<Graph, GraphError> {
    parse_str(text, Path::new(FILE), overrides, Path::new(CWD))
}

fn ok(text: &str, overrides: &[&str]) -> Graph {
    parse(text, overrides).unwrap_or_else(|e| panic!("expected a valid graph, got:\n{e}"))
}

fn errors_of(text: &str, overrides: &[&str]) -> Vec<Problem> {
    match parse(text, overrides) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems,
    }
}

/// The single problem about `key`, whatever else was reported.
fn problem_at<'a>(problems: &'a [Problem], key: &str) -> &'a Problem {
    let found: Vec<_> = problems.iter().filter(|p| p.key == key).collect();
    assert_eq!(found.len(), 1, "one problem at {key}, got {problems:#?}");
    found[0]
}

/// 1-based line of the first line of `text` containing `needle`.
fn line(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not in text")) + 1
}

fn at_line(n: usize) -> Location {
    Location::File { path: PathBuf::from(FILE), line: Some(n) }
}

fn set(key: &str) -> Location {
    Location::Set { key: key.to_string() }
}

/// `text` with `line` inserted after the line containing `after`.
fn with_line(text: &str, after: &str, line: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && l.contains(after) {
            out.push_str(line);
            out.push('\n');
            done = true;
        }
    }
    assert!(done, "`{after}` not in text");
    out
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` not in text");
    text.replacen(from, to, 1)
}

fn encode(graph: &Graph) -> &C3dEncode {
    graph.stage("encode").expect("an encode stage").options::<C3dEncode>().expect("c3d_encode options")
}

#[test]
fn valid_extract_graph() {
    let graph = ok(EXTRACT, &[]);
    let names: Vec<&str> = graph.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["videos", "decode", "clips", "encode", "write"]);
    assert_eq!(graph.run.output_dir, Path::new("/home/user/work/runs/extract"));
    assert_eq!(graph.run.max_in_flight, 8);
    assert_eq!(graph.run.seed, 0);
    assert_eq!(graph.run.log_every_s, 10.0);
    assert_eq!(graph.stage("decode").unwrap().options::<Decode>(), Some(&Decode::default()));
    assert_eq!(graph.stage("encode").unwrap().inputs, ["clips"]);
    let encode = encode(&graph);
    assert_eq!(encode.batch_size, 4);
    assert_eq!(encode.queue, 4);
    assert_eq!(encode.layer, Layer::Projection);
    assert_eq!(encode.device, Device::Auto);
    assert_eq!(encode.checkpoint, None);
    assert_eq!(graph.stage("write").unwrap().output(), None);
    assert_eq!(graph.stage("clips").unwrap().output(), Some(DataKind::Clips));
}

#[test]
fn stages_come_in_topological_order_whatever_the_file_order() {
    let text = r#"
[run]
output_dir = "out"
[stages.write]
type = "hdf5_writer"
inputs = ["encode"]
[stages.encode]
type = "c3d_encode"
inputs = ["clips"]
[stages.clips]
type = "dense_clips"
inputs = ["decode"]
[stages.decode]
type = "decode"
inputs = ["videos"]
[stages.videos]
type = "video_files"
dir = "v"
"#;
    let graph = ok(text, &[]);
    let names: Vec<&str> = graph.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["videos", "decode", "clips", "encode", "write"]);
}

#[test]
fn every_stage_type_in_a_pretraining_graph() {
    let graph = ok(PRETRAIN, &[]);
    let order: Vec<&str> = graph.stages.iter().map(|s| s.name.as_str()).collect();
    let pos = |n: &str| order.iter().position(|s| *s == n).unwrap();
    assert!(pos("probe") < pos("align") && pos("narration") < pos("align"));
    assert!(pos("align") < pos("segments"));
    assert!(pos("train") < pos("metrics") && pos("train") < pos("checkpoints"));
    let train = graph.stage("train").unwrap().options::<Train>().expect("train options");
    assert_eq!(train.milestones, [5, 8]);
    assert_eq!(train.batch_size, 128);
    assert_eq!(train.lr, 0.001);
    assert_eq!(train.w_fg, 10.0);
    assert!(train.resume);
    let narration = graph.stage("narration").unwrap().options::<NarrationReader>().expect("narration options");
    assert_eq!(narration.format, NarrationFormat::Howto100mJson);
    let align = graph.stage("align").unwrap().options::<Align>().expect("align options");
    assert_eq!((align.config.min_seconds, align.config.max_seconds, align.config.max_words), (4.0, 16.0, 32));
    // One type per registry entry, and each used here but hdf5-only ones.
    let used: Vec<&str> = graph.stages.iter().map(|s| s.entry().name).collect();
    for ty in STAGE_TYPES_IN_PRETRAIN {
        assert!(used.contains(ty), "{ty} in the graph");
    }
}

const STAGE_TYPES_IN_PRETRAIN: &[&str] =
    &["video_files", "narration", "probe", "align", "segment_sampler", "train", "checkpoints", "metrics"];

#[test]
fn registry_names_are_unique_and_every_variant_is_registered() {
    let names: Vec<&str> = StageEntry::all().iter().map(|t| t.name).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    for name in &names {
        assert_eq!(StageEntry::lookup(name).unwrap().name, *name);
    }
    let sinks: Vec<&str> = StageEntry::all().iter().filter(|t| t.is_sink()).map(|t| t.name).collect();
    assert_eq!(sinks, ["hdf5_writer", "npy_writer", "evaluate", "checkpoints", "metrics", "grounding_eval"]);
}

#[test]
fn toml_syntax_error_has_a_line() {
    let text = with_line(EXTRACT, "batch_size = 4", "queue = = 3");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].location, at_line(line(&text, "queue = = 3")));
    assert!(problems[0].message.starts_with("invalid TOML"), "{}", problems[0].message);
}

#[test]
fn unknown_stage_option_is_reported_with_its_line_and_the_known_keys() {
    let text = with_line(EXTRACT, "batch_size = 4", "batchsize = 64");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let n = line(&text, "batchsize = 64");
    assert_eq!(
        problems[0].to_string(),
        format!(
            "graphs/test.toml:{n}: stages.encode.batchsize: unknown key; expected one of: \
             model, checkpoint, layer, device, batch_size, queue, precision (did you mean `batch_size`?)"
        )
    );
}

#[test]
fn unknown_keys_in_run_and_at_top_level() {
    let text = with_line(EXTRACT, "output_dir", "workers = 4");
    let text = format!("{text}\n[extra]\nx = 1\n");
    let problems = errors_of(&text, &[]);
    let run = problem_at(&problems, "run.workers");
    assert_eq!(run.location, at_line(line(&text, "workers = 4")));
    assert!(run.message.contains("output_dir, seed, max_in_flight, log_every_s"));
    let top = problem_at(&problems, "extra");
    assert_eq!(top.location, at_line(line(&text, "[extra]")));
    assert!(top.message.contains("expected one of: run, stages"));
}

#[test]
fn wrong_type_names_the_key_and_what_was_expected() {
    let text = replace(EXTRACT, "batch_size = 4", "batch_size = \"four\"");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(p.key, "stages.encode.batch_size");
    assert_eq!(p.location, at_line(line(&text, "batch_size = \"four\"")));
    assert!(p.message.contains("expected usize"), "{}", p.message);
}

#[test]
fn wrong_types_in_arrays_and_enums() {
    let text = replace(PRETRAIN, "milestones = [5, 8]", "milestones = [5, \"eight\"]");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.train.milestones[1]");
    assert_eq!(p.location, at_line(line(&text, "milestones")));

    let text = with_line(EXTRACT, "type = \"dense_clips\"", "tail = \"wrap\"");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.clips.tail");
    assert!(p.message.contains("`pad` or `drop`"), "{}", p.message);
}

#[test]
fn device_must_be_auto_cpu_cuda_or_cuda_n() {
    for (device, expected) in
        [("auto", Device::Auto), ("cpu", Device::Cpu), ("cuda", Device::Cuda(None)), ("cuda:1", Device::Cuda(Some(1)))]
    {
        let text = with_line(EXTRACT, "batch_size = 4", &format!("device = \"{device}\""));
        assert_eq!(encode(&ok(&text, &[])).device, expected);
        assert_eq!(expected.to_string(), device);
    }
    for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
        let text = with_line(EXTRACT, "batch_size = 4", &format!("device = \"{bad}\""));
        let problems = errors_of(&text, &[]);
        let p = problem_at(&problems, "stages.encode.device");
        assert!(p.message.contains("auto, cpu, cuda or cuda:N"), "{}", p.message);
    }
}

#[test]
fn missing_required_key_points_at_the_stage() {
    let text = replace(EXTRACT, "dir = \"../data/videos\"\n", "");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.videos.dir");
    assert_eq!(p.message, "missing required key");
    assert_eq!(p.location, at_line(line(&text, "[stages.videos]")));
}

#[test]
fn missing_or_unknown_stage_type_lists_the_known_types() {
    let text = replace(EXTRACT, "type = \"dense_clips\"", "type = \"dense_clip\"");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(p.key, "stages.clips.type");
    assert_eq!(p.location, at_line(line(&text, "dense_clip\"")));
    assert!(
        p.message.starts_with("unknown stage type `dense_clip`; expected one of: video_files, ")
            && p.message.contains(", dense_clips, "),
        "{}",
        p.message
    );
    assert!(p.message.ends_with("(did you mean `dense_clips`?)"), "{}", p.message);

    let text = replace(EXTRACT, "type = \"dense_clips\"\n", "");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.clips.type");
    assert!(p.message.contains("missing required key; expected one of: video_files"));
    assert_eq!(p.location, at_line(line(&text, "[stages.clips]")));
}

#[test]
fn input_naming_a_missing_stage() {
    let text = replace(EXTRACT, "inputs = [\"clips\"]", "inputs = [\"clip\"]");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(p.key, "stages.encode.inputs");
    assert_eq!(p.location, at_line(line(&text, "[\"clip\"]")));
    assert_eq!(
        p.message,
        "no stage named `clip`; the stages are: videos, decode, clips, encode, write \
         (did you mean `clips`?)"
    );
}

#[test]
fn wrong_number_of_inputs() {
    let text = replace(PRETRAIN, "inputs = [\"narration\", \"probe\"]", "inputs = [\"probe\"]");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.align.inputs");
    assert_eq!(p.message, "`align` takes 2 inputs: narration (Narration), meta (VideoMeta); got 1");

    let text = replace(EXTRACT, "inputs = [\"decode\"]\n", "");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.clips.inputs");
    assert_eq!(p.message, "missing; `dense_clips` takes 1 input: frames (Frames)");
    assert_eq!(p.location, at_line(line(&text, "[stages.clips]")));
}

#[test]
fn incompatible_edge_names_both_kinds_and_the_stage() {
    let text = replace(EXTRACT, "inputs = [\"encode\"]", "inputs = [\"decode\"]");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "stages.write.inputs");
    let write = line(&text, "[stages.write]");
    assert_eq!(problems[0].location, at_line(write + 2));
    assert_eq!(problems[0].message, "`hdf5_writer` expects Features, got Frames from stage `decode`");
}

#[test]
fn inputs_in_the_wrong_order_get_a_hint() {
    let text = replace(PRETRAIN, "[\"narration\", \"probe\"]", "[\"probe\", \"narration\"]");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(
        problems[0].message,
        "input `narration` of `align` expects Narration, got VideoMeta from stage `probe`; \
         list the inputs in the order narration (Narration), meta (VideoMeta)"
    );
}

#[test]
fn a_sink_cannot_feed_a_stage() {
    let text = format!("{EXTRACT}\n[stages.more]\ntype = \"hdf5_writer\"\ninputs = [\"write\"]\n");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.more.inputs");
    assert!(p.message.contains("stage `write` is a sink (hdf5_writer) and has no output"));
}

#[test]
fn cycles_are_named() {
    let text = replace(EXTRACT, "inputs = [\"videos\"]", "inputs = [\"encode\"]");
    let problems = errors_of(&text, &[]);
    let cycle: Vec<_> = problems.iter().filter(|p| p.message.contains("cycle")).collect();
    assert_eq!(cycle.len(), 1, "{problems:#?}");
    assert_eq!(cycle[0].key, "stages.decode.inputs");
    assert_eq!(cycle[0].message, "stages form a cycle: decode -> clips -> encode -> decode");
    assert_eq!(cycle[0].location, at_line(line(&text, "inputs = [\"encode\"]")));

    let text = replace(EXTRACT, "inputs = [\"decode\"]", "inputs = [\"clips\"]");
    let problems = errors_of(&text, &[]);
    assert!(problems.iter().any(|p| p.message == "stages form a cycle: clips -> clips"), "{problems:#?}");
}

#[test]
fn sources_take_no_inputs() {
    let text = with_line(EXTRACT, "type = \"video_files\"", "inputs = [\"write\"]");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.videos.inputs");
    assert_eq!(p.message, "`video_files` is a source and takes no inputs");
    assert_eq!(p.location, at_line(line(&text, "inputs = [\"write\"]")));
}

#[test]
fn a_graph_needs_a_sink() {
    let end = EXTRACT.find("[stages.write]").unwrap();
    let problems = errors_of(&EXTRACT[..end], &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "stages");
    assert!(problems[0].message.contains(
        "no sink, so it would compute nothing; \
                   add a stage of type hdf5_writer, npy_writer, evaluate, checkpoints, metrics"
    ));
}

#[test]
fn a_stage_whose_output_goes_nowhere_is_named_at_its_table() {
    let text = with_line(PRETRAIN, "[stages.checkpoints]", "");
    let text = replace(&text, "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\n", "");
    let text = replace(
        &text,
        "[stages.checkpoints]\n\ntype = \"checkpoints\"\ninputs = [\"train\"]\n",
        "[stages.checkpoints]\ntype = \"checkpoints\"\ninputs = [\"align\"]\n",
    );
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.checkpoints.inputs");
    assert!(p.message.contains("expects Training, got CaptionClips"), "{}", p.message);

    // With the edges right, a train stage nothing reads is the one problem.
    let text = replace(PRETRAIN, "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\n", "");
    let text = replace(&text, "[stages.checkpoints]\ntype = \"checkpoints\"\ninputs = [\"train\"]\n", "[stages.checkpoints]\ntype = \"metrics\"\ninputs = [\"train\"]\n[stages.extra]\ntype = \"probe\"\ninputs = [\"videos\"]\n");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "stages.extra");
    assert_eq!(problems[0].location, at_line(line(&text, "[stages.extra]")));
    assert!(problems[0].message.contains("goes nowhere"), "{}", problems[0].message);
}

#[test]
fn two_stages_cannot_write_one_file() {
    let text =
        format!("{EXTRACT}\n[stages.copy]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\npath = \"features.h5\"\n");
    let problems = errors_of(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(p.key, "stages.copy.path");
    assert_eq!(p.location, at_line(line(&text, "path = \"features.h5\"")));
    assert!(p.message.contains("also written by stages.write.path"), "{}", p.message);
}

#[test]
fn missing_run_and_stages() {
    let problems = errors_of("", &[]);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    problem_at(&problems, "run");
    problem_at(&problems, "stages");
}

#[test]
fn option_ranges_and_combinations_are_checked() {
    let text = replace(EXTRACT, "batch_size = 4", "batch_size = 0");
    let problems = errors_of(&text, &[]);
    assert_eq!(problem_at(&problems, "stages.encode.batch_size").message, "must be at least 1");

    let text = with_line(PRETRAIN, "format = \"howto100m_json\"", "dir = \"subs\"");
    let problems = errors_of(&text, &[]);
    problem_at(&problems, "stages.narration.file");

    let text = replace(PRETRAIN, "file = \"caption.json\"\n", "");
    let problems = errors_of(&text, &[]);
    let p = problem_at(&problems, "stages.narration");
    assert!(p.message.contains("needs `dir`"));
    assert_eq!(p.location, at_line(line(&text, "[stages.narration]")));
}

#[test]
fn several_problems_are_reported_at_once_in_line_order() {
    let text = replace(EXTRACT, "batch_size = 4", "batch_size = -4\nlayer = \"fc7\"");
    let text = replace(&text, "type = \"decode\"", "type = \"decoder\"");
    let text = replace(&text, "inputs = [\"encode\"]", "inputs = [\"clips\"]");
    let text = replace(&text, "output_dir = \"../runs/extract\"", "output_dir = 3");
    let err = parse(&text, &[]).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "run.output_dir",
            "stages.decode.type",
            "stages.encode.batch_size",
            "stages.encode.layer",
            "stages.write.inputs",
        ],
        "{err}"
    );
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 5, "{shown}");
    let n = line(&text, "layer = \"fc7\"");
    assert!(shown.contains(&format!("graphs/test.toml:{n}: stages.encode.layer: unknown variant `fc7`")), "{shown}");
}

#[test]
fn overrides_of_int_string_and_array() {
    let graph = ok(
        EXTRACT,
        &[
            "stages.encode.batch_size=64",
            "stages.encode.device=cuda:0",
            "stages.videos.extensions=[\"mp4\", \"webm\"]",
            "stages.decode.threads=4",
            "run.log_every_s=2.5",
        ],
    );
    assert_eq!(encode(&graph).batch_size, 64);
    assert_eq!(encode(&graph).device, Device::Cuda(Some(0)));
    let videos = graph.stage("videos").unwrap().options::<VideoFiles>().expect("videos options");
    assert_eq!(videos.extensions, ["mp4", "webm"]);
    let decode = graph.stage("decode").unwrap().options::<Decode>().expect("decode options");
    assert_eq!(decode.threads, 4);
    assert_eq!(graph.run.log_every_s, 2.5);
}

#[test]
fn override_values_parse_as_toml_or_else_as_text() {
    let graph = ok(
        EXTRACT,
        &[
            "stages.write.dataset=2024-05-01",
            "stages.encode=\t{ type = \"c3d_encode\", inputs = [\"clips\"], layer = \"fc6\" }",
        ],
    );
    let write = graph.stage("write").unwrap().options::<Hdf5Writer>().expect("write options");
    assert_eq!(write.dataset, "2024-05-01");
    assert_eq!(encode(&graph).layer, Layer::Fc6);
    assert_eq!(encode(&graph).batch_size, 8, "the inline table replaced the stage");
}

#[test]
fn overrides_can_add_stages() {
    let graph =
        ok(EXTRACT, &["stages.copy.type=hdf5_writer", "stages.copy.inputs=[\"encode\"]", "stages.copy.path=copy.h5"]);
    assert_eq!(graph.stage("copy").unwrap().inputs, ["encode"]);
}

#[test]
fn override_errors_are_located_at_the_override() {
    let problems = errors_of(
        EXTRACT,
        &[
            "stages.encode.batchsize=64",
            "stages.encode.batch_size=many",
            "stages.encode.batch_size.x=1",
            "no_equals_sign",
            "stages..x=1",
        ],
    );
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(
            &"--set stages.encode.batchsize: unknown key; expected one of: \
          model, checkpoint, layer, device, batch_size, queue, precision (did you mean `batch_size`?)"
                .to_string()
        ),
        "{shown:#?}"
    );
    assert!(
        shown.contains(&"--set stages.encode.batch_size: invalid type: string \"many\", expected usize".to_string()),
        "{shown:#?}"
    );
    let p = problem_at(&problems, "stages.encode.batch_size.x");
    assert_eq!(p.location, set("stages.encode.batch_size.x"));
    assert!(problems.iter().any(|p| p.location == set("no_equals_sign")));
    assert!(problems.iter().any(|p| p.location == set("stages..x")));
    assert_eq!(problems.len(), 5, "{shown:#?}");
}

#[test]
fn an_override_replaces_the_line_of_the_key_it_sets() {
    let text = replace(EXTRACT, "batch_size = 4", "batch_size = \"x\"");
    let problems = errors_of(&text, &["stages.encode.batch_size=y"]);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].location, set("stages.encode.batch_size"));
}

#[test]
fn relative_paths_in_the_file_are_relative_to_the_file() {
    let graph = ok(EXTRACT, &[]);
    let videos = graph.stage("videos").unwrap().options::<VideoFiles>().expect("videos options");
    assert_eq!(videos.dir, Path::new("/home/user/work/data/videos"));
    assert_eq!(encode(&graph).model, Path::new("/home/user/work/configs/c3d-tiny.toml"));
    let write = graph.stage("write").unwrap().options::<Hdf5Writer>().expect("write options");
    assert_eq!(
        write.path,
        Path::new("/home/user/work/runs/extract/features.h5"),
        "outputs are relative to run.output_dir"
    );
}

#[test]
fn relative_paths_from_overrides_and_defaults_are_relative_to_the_working_directory() {
    let graph = ok(
        EXTRACT,
        &[
            "stages.videos.dir=clips/../more",
            "stages.encode.checkpoint=./weights.safetensors",
            "run.output_dir=/tmp/out",
            "stages.write.path=sub/f.h5",
        ],
    );
    let videos = graph.stage("videos").unwrap().options::<VideoFiles>().expect("videos options");
    assert_eq!(videos.dir, Path::new("/home/user/work/clips/../more"));
    assert_eq!(encode(&graph).checkpoint.as_deref(), Some(Path::new("/home/user/work/weights.safetensors")));
    let write = graph.stage("write").unwrap().options::<Hdf5Writer>().expect("write options");
    assert_eq!(write.path, Path::new("/tmp/out/sub/f.h5"));

    let text = replace(EXTRACT, "model = \"../configs/c3d-tiny.toml\"\n", "");
    let graph = ok(&text, &[]);
    assert_eq!(
        encode(&graph).model,
        Path::new("/home/user/work/configs/c3d-full.toml"),
        "a default is not written in the file"
    );
}

#[test]
fn load_reads_the_file_and_resolves_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    std::fs::create_dir(&graphs).unwrap();
    let file = graphs.join("extract.toml");
    std::fs::write(&file, EXTRACT).unwrap();
    let graph = load(&file, &["stages.encode.batch_size=2"]).unwrap();
    let root = dir.path().canonicalize().unwrap();
    assert_eq!(graph.run.output_dir, root.join("runs/extract"));
    assert_eq!(encode(&graph).batch_size, 2);

    let missing = load(&graphs.join("nope.toml"), &[] as &[&str]).unwrap_err();
    assert!(missing.to_string().contains("cannot read the graph file"), "{missing}");
}

#[test]
fn describe_lists_stages_edges_kinds_and_non_default_options() {
    let graph = ok(EXTRACT, &["stages.decode.threads=2", "stages.decode.queue=9"]);
    let text = graph.describe();
    assert!(text.contains("graph graphs/test.toml: 5 stages, 1 sink"), "{text}");
    assert!(
        text.contains(
            "  videos [video_files] -> VideoFiles\n      dir = \"/home/user/work/data/videos\"    # Folder searched for videos"
        ),
        "{text}"
    );
    assert!(
        text.contains("  decode [decode] <- videos (VideoFiles) -> Frames\n      queue = 9    # Frame chunks buffered"),
        "{text}"
    );
    let encode = text.split("  encode [c3d_encode] <- clips (Clips) -> Features\n").nth(1).expect("encode listed");
    let lines: Vec<&str> = encode.lines().take(2).collect();
    assert!(lines[0].starts_with("      model = \"/home/user/work/configs/c3d-tiny.toml\"    # "), "{text}");
    assert!(lines[1].starts_with("      batch_size = 4    # "), "{text}");
    assert!(text.contains("  write [hdf5_writer] <- encode (Features) -> sink\n"), "{text}");
}

#[test]
fn every_graph_file_in_the_repository_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../graphs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("extract.toml")), "graphs/extract.toml exists");
    for file in files {
        let graph = load(&file, &[] as &[&str]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!graph.stages.is_empty());
    }
}
