//! Checkpoints in and out: the released-checkpoint converter, the export to
//! the released PyTorch code, and the `inspect` dump.

use locvtp_model::checkpoint::{load_weights, named_variables, read_safetensors, write_safetensors};
use locvtp_model::loss::{locvtp_losses, splice_samples, Draws, LossInputs, LossWeights};
use locvtp_model::text::{packaged_minilm_dir, TextBatch};
use locvtp_model::train::{
    forward_losses_t, gradients, load_training_checkpoint, parameter_names, save_training_checkpoint, zero_gradients,
    Adam, MultiStepLr, TrainMeta, LR_SCHEDULE_KEY,
};
use locvtp_model::{LocVtp, ModelConfig};
use locvtp_tests::{last_json, python, repo, run_flow};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn tiny() -> ModelConfig {
    ModelConfig::from_toml_file(&repo().join("configs/c3d-tiny.toml")).unwrap()
}

#[test]
fn a_released_pth_checkpoint_converts_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let original = LocVtp::new(&tiny(), Device::Cpu, 3);
    let plain = dir.path().join("plain.safetensors");
    write_safetensors(&plain, &named_variables(&original.vs), &BTreeMap::new()).unwrap();
    // Make a checkpoint shaped like the released code's: a torch.save'd dict
    // whose "model" has DDP's `module.` prefix and the text encoder.
    let pth = dir.path().join("model_0007.pth");
    let python = repo().join(".venv/bin/python");
    let script = format!(
        "import torch\nfrom safetensors.torch import load_file\nsd = {{'module.' + k: v for k, v in load_file({plain:?}).items()}}\nsd['module.textEncoder.model.embeddings.word_embeddings.weight'] = torch.zeros(3, 2)\ntorch.save({{'model': sd, 'epoch': 7}}, {pth:?})\n",
        plain = plain.to_str().unwrap(),
        pth = pth.to_str().unwrap()
    );
    let made = Command::new(&python).arg("-c").arg(&script).output().expect("the project's virtualenv python");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let converted = dir.path().join("converted.safetensors");
    let conv = Command::new(&python)
        .arg(repo().join("scripts/convert_released_checkpoint.py"))
        .arg(&pth)
        .arg(&converted)
        .output()
        .unwrap();
    assert!(conv.status.success(), "{}", String::from_utf8_lossy(&conv.stderr));

    let (tensors, meta) = read_safetensors(&converted).unwrap();
    assert_eq!(meta["epoch"], "7");
    assert!(tensors.iter().all(|(n, _)| !n.starts_with("module.") && !n.starts_with("textEncoder.")));
    let mut loaded = LocVtp::new(&tiny(), Device::Cpu, 4);
    let report = load_weights(&mut loaded.vs, &converted).unwrap();
    assert_eq!(report.loaded, original.vs.variables().len());
    for (name, t) in original.vs.variables() {
        assert!(t.equal(&loaded.vs.variables()[&name]), "{name} differs after conversion");
    }
}

#[test]
fn inspect_dumps_every_intermediate_and_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let (b, t, n, h) = (3i64, cfg.num_segments, 5i64, cfg.text_dim);
    tch::manual_seed(11);
    let fc6 = Tensor::rand([b, t, cfg.c3d.fc_dim], (Kind::Float, Device::Cpu));
    let sentence = Tensor::randn([b, h], (Kind::Float, Device::Cpu));
    let words = Tensor::randn([b, n, h], (Kind::Float, Device::Cpu));
    let lens = [5i64, 3, 1];
    let mask = Tensor::from_slice(&[1u8, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0]).reshape([b, n]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let draws = Draws::sample_padded(b, t, n, &lens, &mut rng);
    let mut inputs = vec![
        ("fc6".to_string(), fc6.shallow_clone()),
        ("sentence".to_string(), sentence.shallow_clone()),
        ("words".to_string(), words.shallow_clone()),
        ("word_mask".to_string(), mask.shallow_clone()),
    ];
    inputs.extend(draws.to_named_tensors());
    let input_path = dir.path().join("inputs.safetensors");
    write_safetensors(&input_path, &inputs, &BTreeMap::new()).unwrap();
    let out_path = dir.path().join("out.safetensors");
    let model_path = repo().join("configs/c3d-tiny.toml");
    let o = run_flow(
        dir.path(),
        &[
            "inspect",
            "--model",
            model_path.to_str().unwrap(),
            "--inputs",
            input_path.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
            "--seed",
            "9",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (dumped, _) = read_safetensors(&out_path).unwrap();
    let dumped: BTreeMap<String, Tensor> = dumped.into_iter().collect();
    for name in [
        "V",
        "S",
        "W",
        "V_spliced",
        "a",
        "pos_words",
        "pos_clips",
        "draws.neg_words",
        "loss.coarse",
        "loss.splice",
        "loss.fg_vid",
        "loss.fg_word",
        "loss.fg_vid_ctx",
        "loss.fg_word_ctx",
        "loss.total",
    ] {
        assert!(dumped.contains_key(name), "{name} missing from the dump");
    }
    assert_eq!(dumped["V"].size(), vec![b, t, cfg.projection_dim]);
    assert_eq!(dumped["a"].size(), vec![b, t, n]);

    // The same computation in-process, from the same seed's weights.
    let model = LocVtp::new(&cfg, Device::Cpu, 9);
    let expected = tch::no_grad(|| {
        let v = model.vid_proj.forward_t(&fc6, false);
        let vs = model.vid_proj.forward_t(&splice_samples(&fc6, &draws), false);
        let s = model.text_proj.forward_t(&sentence, false);
        let w = model.text_proj.forward_t(&words, false);
        let m = mask.to_kind(Kind::Bool);
        let li = LossInputs { v: &v, s: &s, w: &w, word_mask: &m, v_spliced: &vs };
        locvtp_losses((&model.splice, &model.context), &li, &draws, &LossWeights::default()).values()
    });
    for (name, value) in expected {
        let got = dumped[&format!("loss.{name}")].double_value(&[]);
        assert!((got - value).abs() <= 1e-6 * value.abs().max(1.0), "{name}: {got} vs {value}");
    }
}

/// A batch of random clips and caption features drawn from `seed` alone:
/// libtorch's global generator stays untouched, since other tests of this
/// binary seed it to initialise their models at the same time.
fn random_batch(cfg: &ModelConfig, seed: u64) -> (Tensor, TextBatch, Draws) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (b, t, n, h) = (2i64, cfg.num_segments, 4i64, cfg.text_dim);
    let pixels: Vec<u8> = (0..b * t * 16 * 112 * 112 * 3).map(|_| rng.random()).collect();
    let clips = Tensor::from_slice(&pixels).reshape([b, t, 16, 112, 112, 3]);
    let mut uniform = |shape: &[i64]| {
        let v: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_slice(&v).reshape(shape)
    };
    let (sentence, words) = (uniform(&[b, h]), uniform(&[b, n, h]));
    let lens = [4i64, 3];
    let mask: Vec<bool> = lens.iter().flat_map(|&l| (0..n).map(move |j| j < l)).collect();
    let word_mask = Tensor::from_slice(&mask).reshape([b, n]);
    let text = TextBatch { sentence, words, word_mask, word_lens: lens.to_vec() };
    (clips, text, Draws::sample(b, t, &lens, &mut rng))
}

#[test]
fn an_exported_checkpoint_resumes_in_the_released_model_and_converts_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let minilm = packaged_minilm_dir().expect("scripts/setup.sh installs all-MiniLM-L6-v2");
    let model = LocVtp::new(&cfg, Device::Cpu, 21);
    let mut adam = Adam::new(&model);
    let schedule = MultiStepLr { lr: 0.002, milestones: vec![1], gamma: 0.1 };
    // Dropout off: no draw from libtorch's global generator either.
    let backward = |seed| {
        let (clips, text, draws) = random_batch(&cfg, seed);
        forward_losses_t(&model, &clips, &text, &draws, &LossWeights::default(), false).total.backward();
    };
    // Two steps make the first epoch; its checkpoint is exported.
    for seed in [1, 2] {
        backward(seed);
        adam.step(&model, schedule.lr_at(0));
        zero_gradients(&model);
    }
    let meta = TrainMeta {
        epoch: 1,
        step: 2,
        seed: 21,
        extra: BTreeMap::from([(LR_SCHEDULE_KEY.to_string(), serde_json::to_string(&schedule).unwrap())]),
    };
    let ckpt = dir.path().join("epoch-001.safetensors");
    save_training_checkpoint(&ckpt, &model, &adam, &meta).unwrap();
    let pth = dir.path().join("model_1e.pth");
    python(&[&repo().join("scripts/export_pytorch.py"), &ckpt, &pth]);

    // The first step of the second epoch, here and in PyTorch with the same
    // gradients, from the exported state.
    backward(3);
    let grads: Vec<(String, Tensor)> =
        parameter_names(&model).into_iter().zip(gradients(&model)).map(|(n, g)| (format!("grad.{n}"), g)).collect();
    let grads_path = dir.path().join("grads.safetensors");
    write_safetensors(&grads_path, &grads, &BTreeMap::new()).unwrap();
    let before: BTreeMap<String, Tensor> = named_variables(&model.vs).into_iter().map(|(n, t)| (n, t.copy())).collect();
    adam.step(&model, schedule.lr_at(1));
    let stepped_path = dir.path().join("stepped.safetensors");
    let summary = last_json(&python(&[
        &repo().join("tests/python/released_model.py"),
        &"check-export",
        &pth,
        &"--config",
        &repo().join("configs/c3d-tiny.toml"),
        &"--text-encoder",
        &minilm,
        &"--checkpoint",
        &ckpt,
        &"--grads",
        &grads_path,
        &"--out",
        &stepped_path,
    ]));
    assert_eq!(summary["epoch"], 1);
    let lr = summary["lr"].as_f64().unwrap();
    assert!((lr - 0.0002).abs() < 1e-15, "the second epoch runs at a tenth of 0.002, not {lr}");
    // Every tensor but fc7's and fc8's has optimiser state.
    assert_eq!(summary["with_state"], model.vs.variables().len() - 4, "{summary}");
    let (stepped, _) = read_safetensors(&stepped_path).unwrap();
    let vars = model.vs.variables();
    assert_eq!(stepped.len(), vars.len());
    let mut moved = 0f64;
    for (name, theirs) in &stepped {
        let ours = &vars[name];
        moved = moved.max((ours - &before[name]).abs().max().double_value(&[]));
        let diff = (ours - theirs).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{name}: PyTorch's step differs by {diff}");
    }
    assert!(moved > 1e-5, "the step must move the weights for the comparison to mean anything");

    // Back to safetensors: the same checkpoint, which resumes.
    let back = dir.path().join("back.safetensors");
    python(&[&repo().join("scripts/convert_released_checkpoint.py"), &pth, &back]);
    let (original, original_meta) = read_safetensors(&ckpt).unwrap();
    let (restored, restored_meta) = read_safetensors(&back).unwrap();
    assert_eq!(restored_meta, original_meta);
    let names = |ts: &[(String, Tensor)]| ts.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&restored), names(&original));
    for ((name, a), (_, b)) in original.iter().zip(&restored) {
        assert!(a.kind() == b.kind() && a.size() == b.size() && a.equal(b), "{name} differs after the round trip");
    }
    let mut resumed = LocVtp::new(&cfg, Device::Cpu, 5);
    let (adam_back, meta_back) = load_training_checkpoint(&back, &mut resumed).unwrap();
    assert_eq!((adam_back.steps(), meta_back), (2, meta));
}
