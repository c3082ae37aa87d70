"""Writes a HowTo100M-format caption.json of N videos (`--videos`), the
first ones named like a generated corpus (c000000, ...) so that a corpus
folder's videos find their narration in it; each video has 15 cues."""
import argparse
import json
import random

parser = argparse.ArgumentParser()
parser.add_argument("--videos", type=int, default=1_000_000)
parser.add_argument("--out", required=True)
args = parser.parse_args()
rng = random.Random(0)
words = "a red blue green circle square triangle moves left right up down grows shrinks".split()
with open(args.out, "w") as f:
    f.write("{")
    for i in range(args.videos):
        starts = [1.5 * k for k in range(15)]
        entry = {
            "start": starts,
            "end": [s + 1.4 for s in starts],
            "text": [" ".join(rng.choice(words) for _ in range(5)) for _ in starts],
        }
        f.write(("" if i == 0 else ",\n") + json.dumps(f"c{i:06d}") + ": " + json.dumps(entry))
    f.write("}\n")
