"""torch.distributed's gloo all_reduce of N float32 values between two
processes on loopback: the peer of `locvtp-flow bench --exchange`.
Prints one JSON object: the seconds of each timed round (process 0)."""
import argparse
import json
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, port, floats, rounds, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.full((floats,), float(rank + 1))
    dist.all_reduce(t)  # warm-up: connections and buffers
    times = []
    for _ in range(rounds):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--floats", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=29511)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, args.port, args.floats, args.rounds, queue)) for r in range(2)]
    for p in procs:
        p.start()
    times = queue.get()
    for p in procs:
        p.join()
    print(json.dumps({"seconds": times, "torch": torch.__version__}))
