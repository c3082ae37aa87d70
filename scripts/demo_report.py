"""Downstream grounding over several seeds: mean and sample standard deviation
of every test metric for the pre-trained LocVTP features, the same C3D with
random weights, and the three baselines, from the grounding.json files that
scripts/demo_report.sh leaves in RUNS/seed<S>/ground-{locvtp,random}/.

    python scripts/demo_report.py RUNS SEED [SEED ...]

Prints a Markdown table, then whether LocVTP's features beat both random
weights and the strongest baseline at R@1 IoU 0.5 by more than the 95%
interval (the widest of the seeds' intervals of the compared numbers), and
as the last line the whole report as JSON.
"""

import json
import os
import statistics
import sys

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


def mean_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    runs, seeds = argv[1], argv[2:]
    results = {f: [load(runs, s, f) for s in seeds] for f in ("locvtp", "random")}
    first = results["locvtp"][0]
    keys = list(first["test"]["metrics"].keys())
    queries = sorted({r["test"]["queries"] for rs in results.values() for r in rs})
    report = {"seeds": [int(s) for s in seeds], "test_queries": queries, "metrics": {}}
    for name, features, method in ROWS:
        row = {}
        for k in keys:
            entries = [r["test"]["metrics"][k][method] for r in results[features]]
            m, sd = mean_sd([e["value"] for e in entries])
            half = max((e["high"] - e["low"]) / 2 for e in entries)
            row[k] = {"mean": m, "sd": sd, "half_interval": half}
        report["metrics"][name] = row

    print(f"test split: {', '.join(map(str, queries))} queries; seeds {', '.join(seeds)}; mean ± sd over seeds")
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
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
