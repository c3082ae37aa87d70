#!/usr/bin/env python3
"""The released LocVTP model as a PyTorch module tree, for the integration
tests: written from locvtp-method.md (sections 2 and 6), independently of
the scripts under test, so that its names, shapes and parameter order are
what the released code's `load_state_dict(strict=True)` and
`torch.optim.Adam(model.parameters())` see.

    released_model.py make-checkpoint OUT.pth --config TOML --text-encoder DIR
        a checkpoint shaped like a released one: random weights, the text
        encoder's weights, DDP's `module.` prefix on half of the names
    released_model.py features CKPT.pth --config TOML --text-encoder DIR --clips IN --out OUT
        fc6 and projected features of u8 clips [N, F, H, W, 3] (safetensors)
    released_model.py check-export EXPORTED.pth --config TOML --text-encoder DIR --checkpoint CKPT
        [--grads GRADS --out OUT]
        loads an exported checkpoint as the released code does and checks it
        against the locvtp-flow checkpoint it came from; with --grads, takes
        one Adam step with those gradients and writes the parameters to OUT

Every check failure raises; the last line printed is a JSON summary.
"""
import argparse
import json
import tomllib

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

NEVER_TRAINED = ("videoEncoder.embednet.fc7.", "videoEncoder.embednet.fc8.")


class C3D(nn.Module):
    def __init__(self, channels, fc_dim, num_classes):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.conv1 = nn.Conv3d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv3d(c1, c2, 3, padding=1)
        self.conv3a = nn.Conv3d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv3d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv3d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv3d(c4, c4, 3, padding=1)
        self.conv5a = nn.Conv3d(c4, c5, 3, padding=1)
        self.conv5b = nn.Conv3d(c5, c5, 3, padding=1)
        # pool5 of a 16x112x112 clip is c5 x 1 x 4 x 4.
        self.fc6 = nn.Linear(c5 * 16, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, num_classes)

    def fc6_features(self, x):
        h = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2), (1, 2, 2))
        h = F.max_pool3d(F.relu(self.conv2(h)), 2, 2)
        h = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(h)))), 2, 2)
        h = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(h)))), 2, 2)
        h = F.max_pool3d(F.relu(self.conv5b(F.relu(self.conv5a(h)))), 2, 2, padding=(0, 1, 1))
        return F.relu(self.fc6(h.flatten(1)))


class VideoEmbed(nn.Module):
    def __init__(self, *c3d_args):
        super().__init__()
        self.embednet = C3D(*c3d_args)


class ProjectionHead(nn.Module):
    def __init__(self, d_in, d_out, dropout=0.1):
        super().__init__()
        self.projection = nn.Linear(d_in, d_out)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x):
        p = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(self.gelu(p))) + p)


class Pretrained(nn.Module):
    """A pretrained encoder's tensors under their own dotted names: floats
    as frozen parameters, integers (position ids) as buffers outside the
    state dict, as transformers registers them. It holds what
    `DistilBertModel.from_pretrained` would, without its forward pass."""

    def __init__(self, tensors):
        super().__init__()
        for name, t in tensors.items():
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            if t.is_floating_point():
                module.register_parameter(leaf, nn.Parameter(t.clone(), requires_grad=False))
            else:
                module.register_buffer(leaf, t.clone(), persistent=False)


class TextEncoder(nn.Module):
    def __init__(self, tensors):
        super().__init__()
        self.model = Pretrained(tensors)


class Shiftpredict(nn.Module):
    def __init__(self, dim, segments):
        super().__init__()
        self.f_cls = nn.Linear(segments * dim, segments)


class ReleasedLocVTP(nn.Module):
    """clip/modeling/clip/clip.py's CLIP: the submodules in its order."""

    def __init__(self, cfg, text_tensors):
        super().__init__()
        c3d, d = cfg["c3d"], cfg["projection_dim"]
        text_dim = text_tensors["embeddings.word_embeddings.weight"].shape[1]
        self.videoEncoder = VideoEmbed(c3d["channels"], c3d["fc_dim"], c3d["num_classes"])
        self.textEncoder = TextEncoder(text_tensors)
        self.vidProjector = ProjectionHead(c3d["fc_dim"], d)
        self.textProjector = ProjectionHead(text_dim, d)
        self.similarityNorm = nn.Softmax(dim=2)
        self.shiftpredict = Shiftpredict(d, cfg["num_segments"])
        self.signProjWord = nn.Linear(1, d)
        self.distProjWord = nn.Linear(1, d)
        self.signProjVid = nn.Linear(1, d)
        self.distProjVid = nn.Linear(1, d)


def text_tensors(folder):
    tensors = load_file(f"{folder}/model.safetensors")
    return {n: tensors[n] for n in sorted(tensors)}


def build(args):
    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)["model"]
    return ReleasedLocVTP(cfg, text_tensors(args.text_encoder))


def make_checkpoint(args):
    torch.manual_seed(args.seed)
    model = build(args)
    # A zero splice head gives a splice loss of ln T on the first training
    # step whatever the random draws: a test can tell these weights were used.
    nn.init.zeros_(model.shiftpredict.f_cls.weight)
    nn.init.zeros_(model.shiftpredict.f_cls.bias)
    sd = model.state_dict()
    released = {("module." if i % 2 == 0 else "") + name: t for i, (name, t) in enumerate(sd.items())}
    torch.save({"model": released, "epoch": 50}, args.path)
    return {
        "tensors": len(released),
        "text_encoder": sum(n.startswith("textEncoder.") for n in sd),
        "module_prefixed": sum(n.startswith("module.") for n in released),
    }


def features(args):
    model = build(args).eval()
    sd = torch.load(args.path, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict({n.removeprefix("module."): t for n, t in sd.items()}, strict=True)
    clips = load_file(args.clips)["clips"]
    x = (clips.permute(0, 4, 1, 2, 3).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        fc6 = model.videoEncoder.embednet.fc6_features(x)
        save_file({"fc6": fc6, "projected": model.vidProjector(fc6)}, args.out)
    return {"clips": clips.shape[0]}


def check_export(args):
    exported = torch.load(args.path, map_location="cpu", weights_only=True)
    model = build(args)
    model.load_state_dict(exported["model"], strict=True)
    # As the released train_net.py: Adam over every parameter of the model.
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 40])
    opt.load_state_dict(exported["optimizer"])
    sched.load_state_dict(exported["scheduler"])

    ours = load_file(args.checkpoint)
    with safe_open(args.checkpoint, "pt") as f:
        meta = f.metadata()
    steps = int(ours["optimizer.step"])
    text = text_tensors(args.text_encoder)
    with_state = 0
    for name, p in model.named_parameters():
        st = opt.state.get(p, {})
        if name.startswith("textEncoder.model."):
            assert torch.equal(p, text[name.removeprefix("textEncoder.model.")]), name
            assert not st, f"{name}: the frozen text encoder has optimizer state"
            continue
        assert torch.equal(p, ours[name]), f"{name}: weights differ"
        if name.startswith(NEVER_TRAINED):
            assert not st, f"{name}: no loss reaches it, yet it has optimizer state"
            continue
        assert st, f"{name}: no optimizer state"
        assert float(st["step"]) == steps, f"{name}: step {st['step']} against {steps}"
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[key], ours[f"optimizer.{name}.{key}"]), f"{name}: {key} differs"
        with_state += 1
    assert exported["epoch"] == int(meta["epoch"]) == sched.last_epoch
    summary = {"lr": opt.param_groups[0]["lr"], "epoch": exported["epoch"], "with_state": with_state}

    if args.grads:
        # The released forward never reaches fc7/fc8: their gradient stays None.
        grads = load_file(args.grads)
        for name, p in model.named_parameters():
            if f"grad.{name}" in grads and not name.startswith(NEVER_TRAINED):
                p.grad = grads[f"grad.{name}"]
        opt.step()
        params = {n: p.detach() for n, p in model.named_parameters() if not n.startswith("textEncoder.")}
        save_file(params, args.out)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["make-checkpoint", "features", "check-export"])
    ap.add_argument("path", help="the .pth to write, read or check")
    ap.add_argument("--config", required=True, help="locvtp-flow model config (TOML) giving the widths")
    ap.add_argument("--text-encoder", required=True, help="Hugging Face folder of the text encoder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips")
    ap.add_argument("--checkpoint")
    ap.add_argument("--grads")
    ap.add_argument("--out")
    args = ap.parse_args()
    run = {"make-checkpoint": make_checkpoint, "features": features, "check-export": check_export}[args.command]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
