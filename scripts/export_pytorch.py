#!/usr/bin/env python3
"""Export a locvtp-flow checkpoint as a checkpoint of the released LocVTP code.

    .venv/bin/python scripts/export_pytorch.py runs/pretrain/checkpoints/last.safetensors model_50e.pth
        [--text-encoder DIR] [--lr LR --milestones 20 40 --gamma 0.1]

The output is a `torch.save` of the dict the released checkpointer writes,
loadable with `torch.load(weights_only=True)`:

  model      the state dict under the released names, no `module.` prefix,
             for `model.load_state_dict(sd, strict=True)`; the frozen text
             encoder's weights come from its Hugging Face folder (DIR;
             default $LOCVTP_TEXT_ENCODER or the packaged all-MiniLM-L6-v2)
             as `textEncoder.model.*`, without `embeddings.position_ids`,
             which current transformers versions keep out of state dicts
  optimizer  `torch.optim.Adam(model.parameters()).state_dict()`, as the
             released train_net.py builds it over the whole model: state is
             keyed by position in `model.parameters()`, the text encoder's
             parameters included, and exists only for parameters that had
             gradients (not the text encoder, not C3D's fc7/fc8, which no
             loss reaches)
  scheduler  MultiStepLR's state dict after `epoch` epochs
  epoch      epochs completed (the released code saves the 1-based number
             of the epoch that just ended: the same number)
  locvtp     this project's metadata (model config, step, seed, ...), from
             which convert_released_checkpoint.py restores the exact
             training checkpoint

The learning rate schedule is the one recorded in the checkpoint
(`lr_schedule`); checkpoints without one get the released schedule (lr
0.001, milestones 20 40, gamma 0.1) unless --lr/--milestones/--gamma say
otherwise. A checkpoint of weights alone exports without `optimizer` and
`scheduler`.
"""
import argparse
import json
import sys
from collections import OrderedDict

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from released_names import (
    TEXT_PREFIX,
    default_text_encoder_dir,
    load_text_encoder,
    never_trained,
    parameter_names,
    released_order,
    trained_names,
)

RELEASED_SCHEDULE = {"lr": 0.001, "milestones": [20, 40], "gamma": 0.1}


def released_state_dict(weights, text):
    """Our weights and the text encoder's tensors in the released module order."""
    own = set(trained_names())
    missing, unknown = own - set(weights), set(weights) - own
    if missing or unknown:
        sys.exit(f"not a LocVTP checkpoint: missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]}")
    width = weights["textProjector.projection.weight"].shape[1]
    hidden = text["embeddings.word_embeddings.weight"].shape[1]
    if width != hidden:
        sys.exit(f"the text projection takes {width}-d features, the text encoder gives {hidden}-d (--text-encoder)")
    # Integer tensors of the folder (embeddings.position_ids) are buffers
    # that transformers keeps out of the state dict (persistent=False).
    text = {n: t for n, t in text.items() if t.is_floating_point()}
    merged = {**weights, **{TEXT_PREFIX + n: t for n, t in text.items()}}
    return OrderedDict((name, merged[name].contiguous()) for name in released_order(list(text)))


def adam_state(model, tensors):
    """Adam's per-parameter state, keyed by position in model.parameters()."""
    steps = int(tensors["optimizer.step"])
    state = {}
    for index, name in enumerate(parameter_names(model)):
        if name.startswith(TEXT_PREFIX) or steps == 0:
            continue
        moments = [tensors.get(f"optimizer.{name}.{k}") for k in ("exp_avg", "exp_avg_sq")]
        if any(m is None for m in moments):
            sys.exit(f"optimizer state of {name} missing")
        if never_trained(name):
            if any(m.count_nonzero() for m in moments):
                sys.exit(f"{name} has optimizer moments, but no loss reaches it")
            continue
        step = torch.tensor(float(steps), dtype=torch.float32)
        state[index] = {"step": step, "exp_avg": moments[0], "exp_avg_sq": moments[1]}
    return state


def schedule_states(n_params, adam, schedule, epoch):
    """param_groups and scheduler state as PyTorch writes them after
    `epoch` epochs of MultiStepLR, built by running PyTorch's own classes."""
    probe = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([probe], lr=schedule["lr"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=schedule["milestones"], gamma=schedule["gamma"])
    for _ in range(epoch):
        opt.step()  # no gradient: changes nothing, keeps the scheduler from warning
        sched.step()
    group = opt.state_dict()["param_groups"][0]
    group["params"] = list(range(n_params))
    return [group], sched.state_dict()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="locvtp-flow checkpoint (.safetensors)")
    ap.add_argument("out", help="output .pth")
    ap.add_argument("--text-encoder", help="Hugging Face folder of the text encoder the model was trained with")
    ap.add_argument("--lr", type=float, help="base learning rate (overrides the checkpoint's)")
    ap.add_argument("--milestones", type=int, nargs="*", help="epochs at which the rate drops (overrides)")
    ap.add_argument("--gamma", type=float, help="factor at each milestone (overrides)")
    args = ap.parse_args()

    tensors = load_file(args.checkpoint)
    with safe_open(args.checkpoint, "pt") as f:
        meta = f.metadata() or {}
    text = load_text_encoder(args.text_encoder or default_text_encoder_dir())
    weights = {n: t for n, t in tensors.items() if not n.startswith("optimizer.")}
    model = released_state_dict(weights, text)
    out = {"model": model}
    if "epoch" in meta:
        out["epoch"] = int(meta["epoch"])
    if "optimizer.step" in tensors:
        schedule = {**RELEASED_SCHEDULE, **json.loads(meta.get("lr_schedule", "{}"))}
        for key in ("lr", "milestones", "gamma"):
            if getattr(args, key) is not None:
                schedule[key] = getattr(args, key)
        groups, scheduler = schedule_states(
            len(parameter_names(model)), json.loads(meta["adam"]), schedule, out.get("epoch", 0)
        )
        out["optimizer"] = {"state": adam_state(model, tensors), "param_groups": groups}
        out["scheduler"] = scheduler
    out["locvtp"] = dict(meta)
    torch.save(out, args.out)
    states = len(out.get("optimizer", {}).get("state", {}))
    print(f"{len(model)} tensors and the state of {states} parameters written to {args.out}")


if __name__ == "__main__":
    main()
