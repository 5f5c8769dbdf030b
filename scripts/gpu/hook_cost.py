"""What one steered layer's hook costs on a GPU, inside a CUDA graph of torch.compile'd code (as vLLM runs it).

Qwen3-8B's width (4096), the plugin's real buffers (``BatchSteering``: 8 steerable directions, 6 read, rows for
256 requests), bf16 block outputs of T tokens in the ``pair`` layout. Variants, each compiled alone and
replayed 50 times per graph:

  sum       hidden + residual only (what every variant starts from)
  add       the additions alone: residual + (alphas[rows] @ basis)
  project   the projection on the unit directions alone (what the readout and the clamps need)
  delta-mm  core.steering_ops.steering_delta written as matrix products (fused=False: the form before the
            fused one, and what eager code runs)
  delta     the same as traced by torch.compile (fused: products summed over the n directions)
  hook      the plugin's whole hook: steering_delta (fused) and the readout's two index_add_

Prints microseconds per call; the difference to ``sum`` is what the hook adds per steered layer and step.
Usage: python scripts/gpu/hook_cost.py [T ...]   (default 64 256 1024)
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.steering_ops import steering_delta
from emolab.fastpath.batch import BatchSteering


def build(device: torch.device) -> BatchSteering:
    emotions = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    rng = np.random.default_rng(0)
    vectors = {e: rng.standard_normal((1, 4096)).astype(np.float32) for e in emotions}
    bundle = EmotionBundle(emotions, [20], vectors, {"num_layers": 36})
    basis = bundle.steering_basis("raw", derived=True)
    return BatchSteering([torch.nn.Identity()], bundle, basis, max_tokens=16384, max_rows=520, device=device,
                         dtype=torch.bfloat16, layouts=["pair"], layer_ids=[0])


def variants(s: BatchSteering) -> dict:
    def total(h, r):
        return h + r

    def add(h, r):
        x = h + r
        rows = s.token_rows[: x.shape[0]]
        return r + (s.add[rows] @ s.basis[0]).to(x.dtype)

    def project(h, r):
        return (h + r).float() @ s.units[0].T

    def delta(h, r, fused=None):
        x = h + r
        d, _ = steering_delta(x, s.token_rows[: x.shape[0]], s.add, s.basis[0], s.units[0], s.cross[0],
                              s.solve[:, 0], s.target[:, 0], fused=fused)
        return r + d.to(x.dtype)

    def delta_mm(h, r):
        return delta(h, r, fused=False)

    def hook(h, r):
        return r + s._delta(0, h + r)

    return {"sum": total, "add": add, "project": project, "delta-mm": delta_mm, "delta": delta, "hook": hook}


def time_graph(fn, h, r, calls: int = 50, replays: int = 20) -> float:
    for _ in range(3):
        fn(h, r)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(h, r)
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn(h, r)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return float(np.median(times))


def main(sizes: list[int]) -> None:
    device = torch.device("cuda")
    steering = build(device)
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    print(f"{'T':>6} " + " ".join(f"{name:>9}" for name in variants(steering)) + "   (us per call, CUDA graph)")
    for t in sizes:
        h = torch.randn(t, 4096, device=device, dtype=torch.bfloat16)
        r = torch.randn(t, 4096, device=device, dtype=torch.bfloat16)
        row = []
        for fn in variants(steering).values():
            torch._dynamo.reset()
            row.append(time_graph(torch.compile(fn, fullgraph=True, dynamic=False), h, r))
        print(f"{t:>6} " + " ".join(f"{v:9.1f}" for v in row), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 256, 1024])
