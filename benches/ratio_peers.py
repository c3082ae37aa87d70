#!/usr/bin/env python3
"""Python video loaders timed on the same job as `locvtp-flow bench`'s decode
stage: every video cut into dense 16-frame clips (clip k = frames 16k ..
16k+15, the last one padded with its final frame), each frame resized so
that its short side is 112 (bilinear) and centre-cropped to 112x112.

Peers, each on one thread (FFmpeg decoding threads and torch's intra-op
threads set to 1, so that the figures compare per decoding thread):

  pyav-reference  what the released LocVTP loader does: for every clip,
                  open the file, seek to the clip's first frame, decode 16
                  frames to full-size RGB arrays, resize and crop them with
                  torch, normalise to float.
  decord          decord.VideoReader with the resize done inside decord,
                  clips by get_batch, crop by slicing.
  torchcodec      torchcodec.decoders.VideoDecoder with its Resize and
                  CenterCrop decoder transforms, clips by get_frames_in_range.

Prints one JSON line per peer: {"peer", "available", "version", "clips",
"frames", "seconds" (best of --repeat), "all_seconds"} or, for a peer that
cannot be imported, {"peer", "available": false, "reason"}.

    python3 benches/ratio_peers.py --repeat 3 a.mp4 b.mp4
"""

import argparse
import importlib
import json
import math
import sys
import time

CLIP = 16
SIZE = 112


def scaled_size(width, height):
    """(h, w) with the short side SIZE and the aspect kept, as decode.rs does."""
    if width >= height:
        return SIZE, max(SIZE, round(width * SIZE / height))
    return max(SIZE, round(height * SIZE / width)), SIZE


def probe(path):
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


def clip_indices(n, k):
    return [min(k * CLIP + i, n - 1) for i in range(CLIP)]


def pyav_reference(paths):
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    clips = frames_total = 0
    for path in paths:
        with av.open(path) as c:
            s = c.streams.video[0]
            fps = float(s.average_rate)
            tb = float(s.time_base)
            start_pts = s.start_time or 0
            n = s.frames or int(round(float(s.duration * s.time_base) * fps))
        frames_total += n
        for k in range(math.ceil(n / CLIP)):
            target = start_pts + int(round(k * CLIP / fps / tb))
            frames = []
            with av.open(path) as c:
                s = c.streams.video[0]
                s.thread_count = 1
                c.seek(target, stream=s, backward=True, any_frame=False)
                for f in c.decode(s):
                    if f.pts is not None and f.pts < target:
                        continue
                    frames.append(f.to_ndarray(format="rgb24"))
                    if len(frames) == CLIP:
                        break
            while len(frames) < CLIP:
                frames.append(frames[-1])
            x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
            h, w = scaled_size(x.shape[3], x.shape[2])
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            y0, x0 = (h - SIZE) // 2, (w - SIZE) // 2
            x = x[:, :, y0 : y0 + SIZE, x0 : x0 + SIZE]
            x = ((x / 255.0 - 0.5) / 0.5).permute(1, 0, 2, 3).contiguous()
            assert x.shape == (3, CLIP, SIZE, SIZE)
            clips += 1
    return clips, frames_total


def decord_loader(paths):
    import decord
    import numpy as np

    clips = frames_total = 0
    for path in paths:
        h, w = scaled_size(*probe(path))
        vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
        n = len(vr)
        frames_total += n
        y0, x0 = (h - SIZE) // 2, (w - SIZE) // 2
        for k in range(math.ceil(n / CLIP)):
            b = vr.get_batch(clip_indices(n, k)).asnumpy()
            clip = np.ascontiguousarray(b[:, y0 : y0 + SIZE, x0 : x0 + SIZE])
            assert clip.shape == (CLIP, SIZE, SIZE, 3)
            clips += 1
    return clips, frames_total


def torchcodec_loader(paths):
    import torch
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import CenterCrop, Resize

    torch.set_num_threads(1)
    clips = frames_total = 0
    for path in paths:
        h, w = scaled_size(*probe(path))
        dec = VideoDecoder(
            path,
            dimension_order="NHWC",
            num_ffmpeg_threads=1,
            seek_mode="approximate",
            transforms=[Resize(size=(h, w)), CenterCrop(size=(SIZE, SIZE))],
        )
        n = dec.metadata.num_frames
        frames_total += n
        for k in range(math.ceil(n / CLIP)):
            start = k * CLIP
            data = dec.get_frames_in_range(start, min(start + CLIP, n)).data
            if data.shape[0] < CLIP:
                data = torch.cat([data, data[-1:].expand(CLIP - data.shape[0], -1, -1, -1)])
            assert tuple(data.shape) == (CLIP, SIZE, SIZE, 3)
            clips += 1
    return clips, frames_total


PEERS = {
    "pyav-reference": ("av", pyav_reference),
    "decord": ("decord", decord_loader),
    "torchcodec": ("torchcodec", torchcodec_loader),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--peer", action="append", choices=sorted(PEERS), help="default: all")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for name in args.peer or list(PEERS):
        module, fn = PEERS[name]
        try:
            mod = importlib.import_module(module)
            if name == "pyav-reference":
                importlib.import_module("torch")
            version = getattr(mod, "__version__", "?")
        except Exception as e:  # an unavailable peer is a result, not a failure
            reason = f"{type(e).__name__}: {e} (scripts/setup.sh --bench installs the peers)"
            print(json.dumps({"peer": name, "available": False, "reason": reason}), flush=True)
            continue
        times = []
        clips = frames = 0
        try:
            for _ in range(max(1, args.repeat)):
                t = time.perf_counter()
                clips, frames = fn(args.videos)
                times.append(time.perf_counter() - t)
        except Exception as e:
            print(json.dumps({"peer": name, "available": False, "version": version,
                              "reason": f"failed: {type(e).__name__}: {e}"}), flush=True)
            continue
        print(json.dumps({"peer": name, "available": True, "version": version, "clips": clips, "frames": frames,
                          "seconds": min(times), "all_seconds": times}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
