#!/usr/bin/env python3
"""The computation `gpu-bench` times, written in plain PyTorch.

Same C3D, projection heads, context projections and splice predictor as
stages/model (locvtp-method.md section 2), the same six losses, Adam as
`torch.optim.Adam`, on the same synthetic inputs: u8 clips `[N, F, H, W, 3]`
copied from host memory every batch, normalised on the device, in fp32 and
under `torch.autocast(dtype=torch.bfloat16)`. It prints one JSON line per
measurement with the fields `gpu-bench` prints, so the two can be put side by
side:

    python3 torch_reference.py --device cuda --model full
    python3 torch_reference.py --device cpu --model tiny --iters 2 --warmup 1

Only torch is needed.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

NCE_TEMPERATURE = 0.07
NUM_NEGATIVES = 4

# (channels, fc_dim, projection_dim, text_dim, num_segments), as configs/c3d-*.toml.
MODELS = {
    "tiny": ([2, 4, 4, 8, 8], 32, 16, 384, 3),
    "small": ([8, 16, 32, 64, 64], 256, 64, 384, 4),
    "full": ([64, 128, 256, 512, 512], 4096, 256, 768, 10),
}
FRAMES = 16
SIZE = 112


class C3D(nn.Module):
    def __init__(self, channels, fc_dim, num_classes=487):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        conv = lambda i, o: nn.Conv3d(i, o, kernel_size=3, padding=1)
        self.conv1, self.conv2 = conv(3, c1), conv(c1, c2)
        self.conv3a, self.conv3b = conv(c2, c3), conv(c3, c3)
        self.conv4a, self.conv4b = conv(c3, c4), conv(c4, c4)
        self.conv5a, self.conv5b = conv(c4, c5), conv(c5, c5)
        pool5 = c5 * 1 * 4 * 4
        self.fc6 = nn.Linear(pool5, fc_dim)
        # Present (and optimised) as in the Rust model; never run.
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, num_classes)

    def forward(self, x):
        x = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2), (1, 2, 2))
        x = F.max_pool3d(F.relu(self.conv2(x)), 2, 2)
        x = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(x)))), 2, 2)
        x = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(x)))), 2, 2)
        x = F.max_pool3d(F.relu(self.conv5b(F.relu(self.conv5a(x)))), 2, 2, padding=(0, 1, 1))
        return F.relu(self.fc6(x.flatten(1)))


class ProjectionHead(nn.Module):
    def __init__(self, d_in, d_out, dropout=0.1):
        super().__init__()
        self.projection = nn.Linear(d_in, d_out)
        self.fc = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x):
        p = self.projection(x)
        h = self.dropout(self.fc(F.gelu(p)))
        return self.layer_norm(h + p)


class LocVtp(nn.Module):
    def __init__(self, size):
        super().__init__()
        channels, fc_dim, d, text_dim, t = MODELS[size]
        self.t = t
        self.c3d = C3D(channels, fc_dim)
        self.vid_proj = ProjectionHead(fc_dim, d)
        self.text_proj = ProjectionHead(text_dim, d)
        self.sign_word, self.dist_word = nn.Linear(1, d), nn.Linear(1, d)
        self.sign_vid, self.dist_vid = nn.Linear(1, d), nn.Linear(1, d)
        self.splice = nn.Linear(t * d, t)


def normalise_u8(frames):
    """u8 [N, F, H, W, 3] to float [N, 3, F, H, W] in [-1, 1] (a permuted view:
    channels-last in memory, as the Rust encoder feeds it)."""
    return (frames.permute(0, 4, 1, 2, 3).float() / 255.0 - 0.5) / 0.5


def offset_embedding(sign, dist, d):
    d = d.to(sign.weight.dtype).unsqueeze(-1)
    return sign(d.sign()) + dist(d.abs())


def l2_normalise(x):
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


def gather_rows(x, idx):
    b, d = x.shape[0], x.shape[2]
    flat = idx.reshape(b, -1)
    rows = x.gather(1, flat.unsqueeze(-1).expand(b, flat.shape[1], d))
    return rows.reshape(*idx.shape, d)


def nce(q, k, negs, valid):
    q, k, negs = l2_normalise(q), l2_normalise(k), l2_normalise(negs)
    pos = (q * k).sum(-1, keepdim=True)
    neg = (negs * q.unsqueeze(-2)).sum(-1)
    logits = torch.cat([pos, neg], -1) / NCE_TEMPERATURE
    nll = -logits.log_softmax(-1)[..., 0]
    count = valid.to(nll.dtype).sum().clamp_min(1.0)
    return nll.masked_fill(~valid, 0.0).sum() / count


def splice_samples(x, perm, cuts):
    t = x.shape[1]
    keep = torch.arange(t, device=x.device).unsqueeze(0) < cuts.unsqueeze(1)
    keep = keep.reshape(keep.shape + (1,) * (x.dim() - 2))
    return torch.where(keep, x, x.index_select(0, perm))


def losses(m, clips, text, draws, tau=1.0, w_splice=1.0, w_fg=10.0):
    """The six terms of locvtp-method.md section 3, as stages/model computes them."""
    sentence, words, mask = text
    perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips = draws
    b, t = clips.shape[:2]
    dev = sentence.device
    segments = clips.to(dev).reshape(b * t, *clips.shape[2:])
    fc6 = m.c3d(normalise_u8(segments)).reshape(b, t, -1)
    # No-ops for draws already on the device; blocking copies (each waits for
    # the queued work) for draws in host memory.
    perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips = (
        x.to(dev) for x in (perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips))
    v = m.vid_proj(fc6)
    v_spliced = m.vid_proj(splice_samples(fc6, perm, cuts))
    s = m.text_proj(sentence)
    w = m.text_proj(words)

    vbar = v.mean(1)
    logits = s @ vbar.t() / tau
    targets = ((vbar @ vbar.t() + s @ s.t()) / 2.0 * tau).softmax(-1)
    soft_ce = lambda lg, tg: -(tg * lg.log_softmax(-1)).sum(-1).mean()
    coarse = (soft_ce(logits, targets) + soft_ce(logits.t(), targets.t())) / 2.0

    splice = F.nll_loss(m.splice(v_spliced.flatten(1)).log_softmax(-1), cuts)

    with torch.no_grad():
        pad = (~mask).unsqueeze(1)
        a = (v.detach() @ w.detach().transpose(1, 2)).masked_fill(pad, float("-inf")).softmax(-1).masked_fill(pad, 0.0)
        pos_words = a.masked_fill(pad, -1.0).argmax(-1)
        pos_clips = a.argmax(1).masked_fill(~mask, 0)

    clip_valid = mask.any(1, keepdim=True).expand(b, t)
    negw = gather_rows(w, neg_words)
    negc = gather_rows(v, neg_clips)
    fg_vid = nce(v, gather_rows(w, pos_words), negw, clip_valid)
    fg_word = nce(w, gather_rows(v, pos_clips), negc, mask)
    key = gather_rows(w, ctx_words) + offset_embedding(m.sign_word, m.dist_word, ctx_words - pos_words)
    fg_vid_ctx = nce(v, key, negw, clip_valid)
    key = gather_rows(v, ctx_clips) + offset_embedding(m.sign_vid, m.dist_vid, ctx_clips - pos_clips)
    fg_word_ctx = nce(w, key, negc, mask)
    return coarse + w_splice * splice + w_fg * (fg_vid + fg_word + fg_vid_ctx + fg_word_ctx)


def text_batch(b, n, h, dev):
    lens = torch.tensor([max(n - i % 4, 1) for i in range(b)], device=dev)
    mask = torch.arange(n, device=dev).unsqueeze(0) < lens.unsqueeze(1)
    words = torch.randn(b, n, h, device=dev) * mask.unsqueeze(-1)
    return (torch.randn(b, h, device=dev), words, mask), lens


def sample_draws(b, t, n, lens, gen):
    """The same kinds and shapes of draws as loss::Draws (a derangement, cuts,
    4 negatives per query, context indices), drawn once on the host."""
    if b > 1:
        perm = torch.roll(torch.arange(b), 1)
    else:
        perm = torch.zeros(1, dtype=torch.long)
    cuts = torch.randint(0, t, (b,), generator=gen)
    lens_c = lens.cpu()
    u = lambda *shape: torch.rand(*shape, generator=gen)
    neg_words = (u(b, t, NUM_NEGATIVES) * lens_c.view(b, 1, 1)).long()
    neg_clips = torch.randint(0, t, (b, n, NUM_NEGATIVES), generator=gen)
    ctx_words = (u(b, t) * lens_c.view(b, 1)).long()
    ctx_clips = torch.randint(0, t, (b, n), generator=gen)
    return perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips


def synchronize(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_loop(dev, warmup, iters, step):
    w = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(dev)
    warmup_s = time.perf_counter() - w
    t = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(dev)
    return warmup_s, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", choices=sorted(MODELS), default="full")
    ap.add_argument("--task", choices=["extract", "train", "all"], default="all")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--extract-batch", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--layout", choices=["channels-last", "contiguous"], default="channels-last")
    ap.add_argument("--resident-input", action="store_true")
    ap.add_argument("--no-cudnn-benchmark", action="store_true")
    ap.add_argument("--adam", choices=["foreach", "for-loop", "fused"], default="foreach",
                    help="torch.optim.Adam implementation (foreach is PyTorch's default on CUDA)")
    ap.add_argument("--phase-iters", type=int, default=0,
                    help="after the timed training loop, this many steps synchronised between forward, backward "
                         "and optimiser, to show where a step's time goes")
    ap.add_argument("--draws-on-host", action="store_true",
                    help="keep the loss draws in host memory and copy them to the device inside every step, "
                         "after C3D's forward, as stages/model does")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = LocVtp(args.model).to(dev)
    channels, fc_dim, d, text_dim, t = MODELS[args.model]
    params = sum(p.numel() for p in model.parameters())
    precisions = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]

    def record(task, bf16, batch, unit, per_iter, warmup_s, seconds):
        rec = {
            "impl": "pytorch",
            "task": task,
            "precision": "bf16-autocast" if bf16 else "fp32",
            "model": args.model,
            "device": str(dev),
            "batch": batch,
            "segments": t if task == "train" else 1,
            "frames": FRAMES,
            "layout": args.layout if task == "extract" else "channels-last",
            "input": "device" if args.resident_input else "host-u8",
            "warmup_iters": args.warmup,
            "iters": args.iters,
            "warmup_s": warmup_s,
            "seconds": seconds,
            "ms_per_iter": 1e3 * seconds / args.iters,
            "unit": unit,
            "per_s": per_iter * args.iters / seconds,
            "params": params,
            "torch": torch.__version__,
        }
        if dev.type == "cuda":
            rec["gpu"] = torch.cuda.get_device_name(dev)
            rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
            rec["cudnn"] = torch.backends.cudnn.version()
        return rec

    results = []
    for bf16 in precisions:
        amp = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
        if args.task in ("extract", "all"):
            print(f"extract {'bf16' if bf16 else 'fp32'} ...", file=sys.stderr)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            model.eval()
            b = args.extract_batch
            host = torch.randint(0, 256, (b, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8)
            resident = host.to(dev)

            def extract_step():
                with torch.no_grad(), amp():
                    u8s = resident if args.resident_input else host.to(dev)
                    x = normalise_u8(u8s)
                    if args.layout == "contiguous":
                        x = x.contiguous()
                    out = model.vid_proj(model.c3d(x)).float().cpu()
                assert out.shape == (b, d)

            ws, s = time_loop(dev, args.warmup, args.iters, extract_step)
            results.append(record("extract", bf16, b, "clips", b, ws, s))
            print(json.dumps(results[-1]), flush=True)
        if args.task in ("train", "all"):
            print(f"train {'bf16' if bf16 else 'fp32'} ...", file=sys.stderr)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            model.train()
            b = args.train_batch
            clips = torch.randint(0, 256, (b, t, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8)
            if args.resident_input:
                clips = clips.to(dev)
            text, lens = text_batch(b, args.words, text_dim, dev)
            draws = sample_draws(b, t, args.words, lens, gen)
            if not args.draws_on_host:
                draws = tuple(x.to(dev) for x in draws)
            kw = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}[args.adam]
            if dev.type != "cuda":
                kw = {"foreach": False}
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kw)
            last = [None]

            def train_step():
                opt.zero_grad()
                with amp():
                    loss = losses(model, clips, text, draws)
                loss.backward()
                opt.step()
                last[0] = loss.detach()

            ws, s = time_loop(dev, args.warmup, args.iters, train_step)
            rec = record("train", bf16, b, "samples", b, ws, s)
            rec["clips_per_s"] = b * t * args.iters / s
            rec["draws"] = "host" if args.draws_on_host else "device"
            if args.phase_iters > 0:
                ms = [0.0, 0.0, 0.0]
                for _ in range(args.phase_iters):
                    synchronize(dev)
                    t0 = time.perf_counter()
                    opt.zero_grad()
                    with amp():
                        loss = losses(model, clips, text, draws)
                    synchronize(dev)
                    t1 = time.perf_counter()
                    loss.backward()
                    synchronize(dev)
                    t2 = time.perf_counter()
                    opt.step()
                    synchronize(dev)
                    t3 = time.perf_counter()
                    for i, d in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                        ms[i] += 1e3 * d / args.phase_iters
                rec["phases_ms"] = {"forward": ms[0], "backward": ms[1], "optimizer": ms[2]}
            loss = float(last[0])
            rec["last_loss"] = loss if math.isfinite(loss) else None
            if rec["last_loss"] is None:
                print(f"warning: the training loss is {loss} after {args.warmup + args.iters} steps", file=sys.stderr)
            rec["adam"] = args.adam if dev.type == "cuda" else "for-loop"
            results.append(rec)
            print(json.dumps(rec), flush=True)

    print(f"{'task':<8} {'precision':<14} {'batch':>6} {'ms/iter':>10} {'rate':>12}", file=sys.stderr)
    for r in results:
        print(f"{r['task']:<8} {r['precision']:<14} {r['batch']:>6} {r['ms_per_iter']:>10.2f} {r['per_s']:>8.1f} {r['unit']}/s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
