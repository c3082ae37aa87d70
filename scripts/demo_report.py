"""Downstream grounding over several seeds: mean and sample standard deviation
of every test metric for the pre-trained LocVTP features, the same C3D with
random weights, and the three baselines, from the grounding.json files that
scripts/demo_report.sh leaves in RUNS/seed<S>/ground-{locvtp,random}/.

    python scripts/demo_report.py [--demo DIR] [--layer LAYER] RUNS SEED [SEED ...]

(--layer fc6 reads the runs of `LAYER=fc6 scripts/demo_report.sh`:
ground-{locvtp,random}-fc6 and extract-{locvtp,random}-fc6.)

Prints a Markdown table, then whether LocVTP's features beat both random
weights and the strongest baseline at R@1 IoU 0.5 by more than the 95%
interval (the widest of the seeds' intervals of the compared numbers).

Then what the two feature sets keep of the scenes the queries describe,
from RUNS/seed<S>/extract-{locvtp,random}/features.h5 and the demo set's
manifest (DIR/manifest.json, default data/demo): each scene of the grounding
videos is the mean of the clip features whose centre falls in it;
"effective rank" is exp(entropy of the normalised singular values) of those
scene features (1 = every scene on one line, at most the feature width);
"shape", "colour", "motion" are the accuracies of a ridge probe predicting
the scene's attribute from its feature, ten folds split by video. A feature
set that lost what the queries name cannot be grounded on it, whatever the
grounding head.

The last line is the whole report as JSON.
"""

import json
import os
import statistics
import sys

import h5py
import numpy as np

KEY = "R@1_IoU0.5"
ROWS = [
    ("LocVTP features", "locvtp", "model"),
    ("random-init C3D features", "random", "model"),
    ("random window", "locvtp", "random_window"),
    ("whole video", "locvtp", "whole_video"),
    ("best fixed window (train)", "locvtp", "best_fixed_window"),
]
BASELINES = ["random_window", "whole_video", "best_fixed_window"]


def load(runs, seed, features):
    path = os.path.join(runs, f"seed{seed}", f"ground-{features}", "grounding.json")
    with open(path) as f:
        return json.load(f)


def scene_features(path, manifest):
    """(features [scenes, dim], attributes per scene, video id per scene)."""
    videos = {v["id"]: v for v in manifest["videos"]}
    xs, attrs, groups = [], [], []
    with h5py.File(path, "r") as f:
        stride, clip_frames = int(f.attrs["stride"]), int(f.attrs["clip_frames"])
        for vid, node in f.items():
            feats = np.asarray(node[next(iter(node.keys()))] if isinstance(node, h5py.Group) else node)
            num, den = videos[vid]["fps"]
            centres = (np.arange(len(feats)) * stride + clip_frames / 2) * den / num
            for scene in videos[vid]["scenes"]:
                inside = (centres >= scene["start_s"]) & (centres < scene["end_s"])
                if inside.any():
                    xs.append(feats[inside].mean(0))
                    attrs.append(scene)
                    groups.append(vid)
    return np.array(xs, dtype=np.float64), attrs, np.array(groups)


def effective_rank(x):
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_accuracy(x, attrs, groups, key, folds=10, ridge=1.0):
    labels = sorted({a[key] for a in attrs})
    target = np.array([labels.index(a[key]) for a in attrs])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(len(labels))[target]
    correct = 0
    for held in np.array_split(np.unique(groups), folds):
        test = np.isin(groups, held)
        a, b = x[~test], onehot[~test]
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
        correct += int((np.argmax(x[test] @ w, 1) == target[test]).sum())
    return correct / len(target), 1 / len(labels)


def feature_diagnostics(runs, seeds, demo, suffix):
    """None (with the reason printed) when a feature file or the manifest is missing."""
    needed = [os.path.join(demo, "manifest.json")] + [
        os.path.join(runs, f"seed{s}", f"extract-{f}{suffix}", "features.h5") for s in seeds for f in ("locvtp", "random")
    ]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        print(f"\nno feature diagnostics: {', '.join(missing)} missing")
        return None
    with open(needed[0]) as f:
        manifest = json.load(f)
    out = {}
    for name, features in (("LocVTP features", "locvtp"), ("random-init C3D features", "random")):
        per_seed = []
        for seed in seeds:
            path = os.path.join(runs, f"seed{seed}", f"extract-{features}{suffix}", "features.h5")
            x, attrs, groups = scene_features(path, manifest)
            entry = {"seed": int(seed), "scenes": len(x), "dim": int(x.shape[1]), "effective_rank": effective_rank(x)}
            for key in ("shape", "colour", "motion"):
                entry[key], entry[f"{key}_chance"] = probe_accuracy(x, attrs, groups, key)
            per_seed.append(entry)
        out[name] = per_seed
    return out


def mean_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def main(argv):
    demo, layer = "data/demo", "projection"
    while len(argv) > 2 and argv[1] in ("--demo", "--layer"):
        if argv[1] == "--demo":
            demo = argv[2]
        else:
            layer = argv[2]
        argv = [argv[0]] + argv[3:]
    if len(argv) < 3:
        sys.exit(__doc__)
    runs, seeds = argv[1], argv[2:]
    suffix = "" if layer == "projection" else f"-{layer}"
    results = {f: [load(runs, s, f + suffix) for s in seeds] for f in ("locvtp", "random")}
    first = results["locvtp"][0]
    keys = list(first["test"]["metrics"].keys())
    queries = sorted({r["test"]["queries"] for rs in results.values() for r in rs})
    report = {"seeds": [int(s) for s in seeds], "layer": layer, "test_queries": queries, "metrics": {}}
    for name, features, method in ROWS:
        row = {}
        for k in keys:
            entries = [r["test"]["metrics"][k][method] for r in results[features]]
            m, sd = mean_sd([e["value"] for e in entries])
            half = max((e["high"] - e["low"]) / 2 for e in entries)
            row[k] = {"mean": m, "sd": sd, "half_interval": half}
        report["metrics"][name] = row

    print(
        f"features: C3D {layer}; test split: {', '.join(map(str, queries))} queries; "
        f"seeds {', '.join(seeds)}; mean ± sd over seeds"
    )
    print()
    print("| method | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, _, _ in ROWS:
        row = report["metrics"][name]
        print(f"| {name} | " + " | ".join(f"{row[k]['mean']:.3f} ± {row[k]['sd']:.3f}" for k in keys) + " |")
    print()

    ours = report["metrics"]["LocVTP features"][KEY]
    strongest = max(
        (n for n, _, m in ROWS if m in BASELINES), key=lambda n: report["metrics"][n][KEY]["mean"]
    )
    verdicts = {}
    for other in ("random-init C3D features", strongest):
        theirs = report["metrics"][other][KEY]
        margin = max(ours["half_interval"], theirs["half_interval"])
        diff = ours["mean"] - theirs["mean"]
        verdicts[other] = {"difference": diff, "interval": margin, "beats": diff > margin}
        word = "beats" if diff > margin else "does not beat"
        print(f"{KEY}: LocVTP features {word} {other} by more than the interval: {diff:+.3f} (interval ±{margin:.3f})")
    report["verdicts"] = verdicts
    report["strongest_baseline"] = strongest

    diagnostics = feature_diagnostics(runs, seeds, demo, suffix)
    report["feature_diagnostics"] = diagnostics
    if diagnostics is None:
        print(json.dumps(report))
        return
    first = diagnostics["LocVTP features"][0]
    print()
    print(
        f"what the features keep of the grounding videos' {first['scenes']} scenes "
        f"({first['dim']}-d; probe chance: shape {first['shape_chance']:.3f}, "
        f"colour {first['colour_chance']:.3f}, motion {first['motion_chance']:.3f}); mean ± sd over seeds"
    )
    print()
    columns = ["effective_rank", "shape", "colour", "motion"]
    print("| features | effective rank | shape | colour | motion | per seed (rank) |")
    print("|---|---|---|---|---|---|")
    for name, per_seed in diagnostics.items():
        cells = []
        for c in columns:
            m, sd = mean_sd([e[c] for e in per_seed])
            cells.append(f"{m:.1f} ± {sd:.1f}" if c == "effective_rank" else f"{m:.3f} ± {sd:.3f}")
        ranks = ", ".join(f"{e['effective_rank']:.1f}" for e in per_seed)
        print(f"| {name} | " + " | ".join(cells) + f" | {ranks} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
