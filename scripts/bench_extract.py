#!/usr/bin/env python
"""Extraction throughput against a bare batched forward pass over the same texts (a benchmark, not a test).

Three passes over the same balanced GoEmotions texts, same sorting (longest first), batching and
padding, interleaved and repeated so that noise from other load hits all of them alike:

* ``bare_full``  -- the whole model, no hooks (``logits_to_keep=1``: logits only for the last position);
* ``bare_trunc`` -- the decoder stack cut after the deepest searched layer, no hooks: the work
  extraction actually needs, so ``capture / bare_trunc`` is the overhead of the hooks themselves;
* ``capture``    -- ``emolab.extraction.capture.collect_activations`` (hooks, last-token gather, copy to host).

Capture stops after the deepest searched layer, so ``capture / bare_full`` can exceed 1.
Prints texts/s and tokens/s of each pass, both ratios, and a final one-line JSON summary.

    python scripts/bench_extract.py --model smollm2 --n-texts 192
    python scripts/bench_extract.py --model emolab/assets/qwen3_8b --random-init --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from emolab.core.emotions import DEFAULT_EMOTIONS
from emolab.core.layers import parse_layers
from emolab.core.models import decoder_layers, load_model
from emolab.extraction.capture import base_model, collect_activations
from emolab.extraction.data import build_dataset, load_records


def balanced_texts(n_texts: int, seed: int) -> list[str]:
    records, _ = load_records("bundled")
    per_class = math.ceil(n_texts / len(DEFAULT_EMOTIONS)) + 1
    ds = build_dataset(records, list(DEFAULT_EMOTIONS), max_per_class=per_class, test_size=0.5, seed=seed)
    texts = ds.train_texts + ds.val_texts
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:n_texts]]


def load(args: argparse.Namespace):
    # --random-init: weights from the config alone, built on the device (an 8B model in bf16 is 16 GB)
    return load_model(args.model, dtype=args.dtype, device=args.device,
                      load_format="dummy" if args.random_init else "auto")


def batches(tokenizer, texts: list[str], batch_size: int, max_length: int, device):
    """The same order and padding as collect_activations: longest first, padded per batch."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        yield tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length).to(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(model, tokenizer, texts, args, device, depth: int | None) -> None:
    """Forward with no hooks; ``depth`` keeps only the first ``depth`` blocks (restored afterwards)."""
    blocks = decoder_layers(model)
    stack = base_model(model)
    original = stack.layers
    try:
        if depth is not None:
            stack.layers = torch.nn.ModuleList(list(blocks)[:depth])
        with torch.inference_mode():
            for batch in batches(tokenizer, texts, args.batch_size, args.max_length, device):
                if depth is None:
                    model(**batch, use_cache=False, logits_to_keep=1)
                else:
                    stack(**batch, use_cache=False)
    finally:
        stack.layers = original
    sync(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="alias, local folder or hub id (a config folder with --random-init)")
    parser.add_argument("--random-init", action="store_true", help="random weights from the folder's config (no weights needed)")
    parser.add_argument("--n-texts", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layers", default="mid", help="searched layers, as emolab extract --layers")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    texts = balanced_texts(args.n_texts, args.seed)
    model, tokenizer = load(args)
    device = next(model.parameters()).device
    num_layers = len(decoder_layers(model))
    layers = parse_layers(args.layers, num_layers)
    depth = max(layers) + 1
    tokens = int(sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]))

    passes = {
        "bare_full": lambda: run_bare(model, tokenizer, texts, args, device, None),
        "bare_trunc": lambda: run_bare(model, tokenizer, texts, args, device, depth),
        "capture": lambda: (collect_activations(model, tokenizer, texts, layers, batch_size=args.batch_size,
                                                max_length=args.max_length, progress=False), sync(device)),
    }
    # Warm-up (kernels, allocator, tokenizer caches) on a slice, then timed rounds in rotating order.
    warm = texts[: args.batch_size]
    run_bare(model, tokenizer, warm, args, device, None)
    collect_activations(model, tokenizer, warm, layers, batch_size=args.batch_size, max_length=args.max_length, progress=False)
    times: dict[str, list[float]] = {name: [] for name in passes}
    names = list(passes)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - t0)

    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(f"model {args.model} ({type(model).__name__}, {num_layers} layers, hidden {model.config.hidden_size}, "
          f"{str(next(model.parameters()).dtype).replace('torch.', '')}, {device})")
    print(f"{len(texts)} texts, {tokens} real tokens, batch {args.batch_size}, max_length {args.max_length}, "
          f"searched layers {layers[0]}..{layers[-1]} ({len(layers)}), bare_trunc runs blocks 0..{depth - 1}, "
          f"{args.repeats} rounds")
    for name in names:
        print(f"  {name:<10}  {median[name]:8.3f} s  {len(texts) / median[name]:9.1f} texts/s  "
              f"{tokens / median[name]:10.1f} tokens/s   runs: {', '.join(f'{t:.3f}' for t in times[name])}")
    vs_full = median["bare_full"] / median["capture"]
    vs_trunc = median["bare_trunc"] / median["capture"]
    best_full = best["bare_full"] / best["capture"]
    best_trunc = best["bare_trunc"] / best["capture"]
    print(f"ratio capture/bare_full  (throughput) = {vs_full:.3f} median, {best_full:.3f} best-of-{args.repeats}"
          "   [whole model without hooks]")
    print(f"ratio capture/bare_trunc (throughput) = {vs_trunc:.3f} median, {best_trunc:.3f} best-of-{args.repeats}"
          "   [same depth without hooks: the cost of the hooks; goal >= 0.9]")
    summary = {
        "model": args.model, "random_init": args.random_init, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "num_layers": num_layers,
        "hidden": model.config.hidden_size, "n_texts": len(texts), "tokens": tokens, "batch_size": args.batch_size,
        "max_length": args.max_length, "search_layers": layers, "repeats": args.repeats,
        "seconds": {k: round(v, 4) for k, v in median.items()},
        "texts_per_s": {k: round(len(texts) / v, 2) for k, v in median.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in median.items()},
        "best_seconds": {k: round(v, 4) for k, v in best.items()},
        "ratio_capture_vs_bare_full": round(vs_full, 4), "ratio_capture_vs_bare_trunc": round(vs_trunc, 4),
        "best_ratio_capture_vs_bare_full": round(best_full, 4), "best_ratio_capture_vs_bare_trunc": round(best_trunc, 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
