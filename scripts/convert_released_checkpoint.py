#!/usr/bin/env python3
"""Convert a checkpoint of the released LocVTP PyTorch code to safetensors.

    .venv/bin/python scripts/convert_released_checkpoint.py model_0049.pth out.safetensors

The released code saves `torch.save({"model": state_dict, ...})`, with a
`module.` prefix on every name when it trained under DistributedDataParallel.
The output holds the same tensors under the same names without that prefix,
minus the frozen text encoder (`textEncoder.*`), which locvtp-flow loads from
the Hugging Face folder instead. Point `c3d_encode.checkpoint` or
`train.init_checkpoint` at the output; the model config must match its
widths (configs/c3d-full.toml for the released model).

A .pth written by export_pytorch.py converts back to the training
checkpoint it came from: weights, Adam state and metadata, so that
`train.resume` continues it.
"""
import sys

import torch
from safetensors.torch import save_file

from released_names import TEXT_PREFIX, parameter_names, strip_module


def adam_tensors(model, ckpt):
    """`optimizer.*` tensors of a training checkpoint from Adam's state dict:
    state index i belongs to the i-th parameter of the state dict; a
    parameter without state (never stepped) has zero moments."""
    params = parameter_names(model)
    state = ckpt["optimizer"]["state"]
    steps = {int(s["step"]) for s in state.values()}
    if len(steps) > 1:
        sys.exit(f"parameters were stepped different numbers of times: {sorted(steps)}")
    out = {"optimizer.step": torch.tensor(steps.pop() if steps else 0, dtype=torch.int64)}
    for index, name in enumerate(params):
        if name.startswith(TEXT_PREFIX):
            continue
        s = state.get(index, {})
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"optimizer.{name}.{key}"] = s.get(key, torch.zeros_like(model[name])).contiguous()
    return out


def convert(src: str, dst: str) -> int:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    model = {strip_module(name): t.detach().to("cpu") for name, t in state.items()}
    out = {name: t.contiguous() for name, t in model.items() if not name.startswith("textEncoder.")}
    ours = ckpt.get("locvtp", {}) if isinstance(ckpt, dict) else {}
    if ours.get("format") == "locvtp-train" and "optimizer" in ckpt:
        out.update(adam_tensors(model, ckpt))
        meta = dict(ours)
    else:
        meta = {"source": src}
        for key in ("epoch", "iteration"):
            if isinstance(ckpt, dict) and key in ckpt:
                meta[key] = str(ckpt[key])
    save_file(out, dst, metadata=meta)
    return len(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = convert(sys.argv[1], sys.argv[2])
    print(f"{n} tensors written to {sys.argv[2]}")
