//! Checkpoints in and out: the released-checkpoint converter and the
//! `inspect` dump.

use locvtp_model::checkpoint::{load_weights, named_variables, read_safetensors, write_safetensors};
use locvtp_model::loss::{locvtp_losses, splice_samples, Draws, LossInputs, LossWeights};
use locvtp_model::{LocVtp, ModelConfig};
use locvtp_tests::{repo, run_flow};
use rand::SeedableRng;
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
