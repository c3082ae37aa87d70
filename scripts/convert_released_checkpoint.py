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
"""
import sys

import torch
from safetensors.torch import save_file


def convert(src: str, dst: str) -> int:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    out = {}
    for name, tensor in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.startswith("textEncoder."):
            continue
        out[name] = tensor.detach().to("cpu").contiguous()
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
