"""``emolab extract``, ``emolab test`` (inspect a bundle) and ``emolab build-model``."""

from __future__ import annotations

import argparse
import json

from emolab.cli.common import REFERENCE_PROG, UsageError, fraction, positive_int
from emolab.core.emotions import DEFAULT_EMOTIONS

__all__ = ["REFERENCE_OUTPUT", "add_build_model", "add_extract", "add_test"]

REFERENCE_OUTPUT = "./vectors"  # the reference tool's --output default (kept under its program name)


def add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract contrastive emotion vectors into a bundle folder")
    p.add_argument("-m", "--model", default="Qwen/Qwen3-8B", help="hub id, local folder, or smollm2 / gemma3-270m / tiny-qwen3 / tiny-llama")
    p.add_argument("-e", "--emotions", default=",".join(DEFAULT_EMOTIONS), help="comma-separated Ekman emotions")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-l", "--layers", default=None,
                       help="early|mid|late|all, layer ids, inclusive ranges such as 10-18, or mixes such as mid,30 (default mid)")
    where.add_argument("--search-layers", default=None, metavar="LAYERS",
                       help="explicit comma-separated layer ids to search (the reference tool's older flag)")
    where.add_argument("--layer", type=int, default=None, help="search one layer only (implies --window 1)")
    p.add_argument("--window", type=positive_int("--window"), default=3)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16)
    p.add_argument("--max-length", type=positive_int("--max-length"), default=128)
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--test-size", type=fraction("--test-size"), default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", default="auto", help="auto (hub, else bundled), bundled, a TSV folder, or a hub id; "
                   "with --label-map: any labelled dataset (hub id, CSV/TSV/JSON/JSONL/parquet file or folder)")
    p.add_argument("--label-map", default=None, metavar="FILE",
                   help="YAML/JSON file: the text column, the label column(s), dataset label -> emotion, splits "
                        "(docs/datasets.md)")
    p.add_argument("--max-per-class", type=positive_int("--max-per-class"), default=None)
    p.add_argument("--labels", choices=["group", "core"], default="group",
                   help="GoEmotions texts per emotion: every fine label of its Ekman group (reference), or only "
                        "those carrying the emotion's own label (core: anger, not annoyance/disapproval)")
    p.add_argument("-o", "--output", default=None,
                   help=f"bundle folder (default: vectors/<model name>; {REFERENCE_OUTPUT} as {REFERENCE_PROG})")
    p.add_argument("--save-full-sweep", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--method", choices=["meandiff", "contrastive", "learned"], default="meandiff",
                   help="meandiff: GoEmotions class means; contrastive: persona vs neutral prompts (CAA-style); "
                        "learned: meandiff moved by gradient descent so the push makes replies read as the emotion")
    p.add_argument("--positions", choices=["last", "mean"], default=None,
                   help="pool the last token or the mean (default: last for meandiff, the answer mean for contrastive)")
    p.add_argument("--pca", action="store_true", help="contrastive: first principal axis of the paired differences")
    p.add_argument("--against", choices=["neutral", "others"], default="neutral",
                   help="contrastive: each persona against the neutral one or against the other emotions")
    p.add_argument("--project-out-shared", action="store_true",
                   help="remove the direction all emotions' vectors share, layer by layer")
    p.add_argument("--contrastive-turns", type=positive_int("--contrastive-turns"), default=None,
                   help="contrastive: use the first N user turns of the extraction prompts (default all)")
    learn = p.add_argument_group("learned directions (--method learned; defaults: emolab.extraction.LearnSettings)")
    learn.add_argument("--learn-steps", type=int, default=None, help="optimizer steps per emotion")
    learn.add_argument("--learn-alpha", type=float, default=None, help="push while learning, normalized alpha scale")
    learn.add_argument("--learn-layers", default=None, metavar="LAYERS",
                       help="layers pushed while learning (default: the middle half of the searched layers)")
    learn.add_argument("--learn-split", choices=["train", "dev", "test"], default=None,
                       help="GoEmotions split of the answer texts (default dev: neither the judge's train nor test)")
    learn.add_argument("--learn-pairs", type=int, default=None, help="preference pairs per emotion")
    learn.add_argument("--learn-batch", type=int, default=None, help="pairs per optimizer step")
    learn.add_argument("--learn-lr", type=float, default=None, help="Adam learning rate")
    p.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from emolab.core.emotions import EmotionError, parse_emotions
    from emolab.core.layers import LayerError, layer_items
    from emolab.core.summary import print_report
    from emolab.extraction import ExtractConfig, LearnSettings, extract

    try:
        emotions = tuple(parse_emotions(args.emotions))
    except EmotionError as exc:
        raise UsageError(f"--emotions: {exc}") from None
    layers, window = args.layers or "mid", args.window
    layer_flag = "--layers"
    if args.search_layers is not None:
        layers, layer_flag = args.search_layers, "--search-layers"
    if args.layer is not None:
        layers, window, layer_flag = str(args.layer), 1, "--layer"
    learn = {name: getattr(args, f"learn_{name}") for name in ("steps", "alpha", "layers", "split", "pairs", "batch", "lr")
             if getattr(args, f"learn_{name}") is not None}
    if learn and args.method != "learned":
        raise UsageError(f"--learn-{next(iter(learn))}: only --method learned learns directions")
    args.flags = {"layers": layer_flag, "window": "--window" if args.layer is None else "--layer"}
    for flag, value in ((layer_flag, layers), ("--learn-layers", args.learn_layers)):
        try:  # fail on a typo before loading data and model; the layer range needs the model's depth
            if value is not None:
                layer_items(value)
        except LayerError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    if args.output:
        output = args.output
    elif getattr(args, "prog", None) == REFERENCE_PROG:
        output = REFERENCE_OUTPUT
    else:
        output = f"vectors/{args.model.rstrip('/').split('/')[-1].lower()}"
    config = ExtractConfig(
        model=args.model, emotions=emotions, layers=layers, window=window, batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, device=args.device, test_size=args.test_size,
        seed=args.seed, data=args.data, label_map=args.label_map, max_per_class=args.max_per_class, output=output,
        save_full_sweep=args.save_full_sweep, progress=not args.no_progress, method=args.method,
        positions=args.positions, pca=args.pca, against=args.against, project_out_shared=args.project_out_shared,
        labels=args.labels, contrastive_turns=args.contrastive_turns,
        learn=LearnSettings(**learn),
    )
    bundle = extract(config)
    print_report(bundle)
    print(f"saved bundle to {output}")
    return 0


def add_test(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="inspect a bundle (no model needed)")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--norms", action=argparse.BooleanOptionalAction, default=True,
                   help="print the table of vector norms (default on)")
    p.set_defaults(func=run_test)


def run_test(args: argparse.Namespace) -> int:
    from emolab.core.bundle import EmotionBundle
    from emolab.core.summary import print_report, summary

    bundle = EmotionBundle.load(args.bundle)
    if args.json:
        print(json.dumps(summary(bundle), indent=2))
    else:
        print_report(bundle, norms=args.norms)
    return 0


def add_build_model(sub: argparse._SubParsersAction) -> None:
    from emolab.core.offline import ALIASES

    p = sub.add_parser("build-model", help=f"build an offline model ({', '.join(ALIASES)}) and print its folder")
    p.add_argument("name", choices=list(ALIASES))
    p.set_defaults(func=run_build_model)


def run_build_model(args: argparse.Namespace) -> int:
    from emolab.core.models import resolve_model

    print(resolve_model(args.name))
    return 0
