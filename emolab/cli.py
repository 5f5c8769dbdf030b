"""The ``emolab`` command. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from emolab.emotions import DEFAULT_EMOTIONS

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, got {value}")
        return value

    return parse


def fraction(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"{flag} must be between 0 and 1, got {value}")
        return value

    return parse


def number_list(flag: str, kind: type = float, minimum: float | None = None) -> Callable[[str], list]:
    """``1,20,64``-style flag values: at least one finite number of ``kind``, each >= ``minimum``."""
    noun = "whole numbers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated {noun}, got {text!r}") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs finite {noun}, got {text!r}")
        if minimum is not None and min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{flag} needs numbers >= {minimum:g}, got {text!r}")
        return values

    return parse


def add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract contrastive emotion vectors into a bundle folder")
    p.add_argument("--model", default="Qwen/Qwen3-8B", help="hub id, local folder, or smollm2 / tiny-qwen3")
    p.add_argument("--emotions", default=",".join(DEFAULT_EMOTIONS), help="comma-separated Ekman emotions")
    p.add_argument("--layers", default="mid", help="early|mid|late|all, layer ids, or mixes such as mid,30")
    p.add_argument("--layer", type=int, default=None, help="search one layer only (implies --window 1)")
    p.add_argument("--window", type=positive_int("--window"), default=3)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16)
    p.add_argument("--max-length", type=positive_int("--max-length"), default=128)
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--test-size", type=fraction("--test-size"), default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", default="auto", help="auto (hub, else bundled), bundled, a TSV folder, or a hub id")
    p.add_argument("--max-per-class", type=positive_int("--max-per-class"), default=None)
    p.add_argument("--output", default=None, help="bundle folder (default: vectors/<model name>)")
    p.add_argument("--save-full-sweep", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from emolab.emotions import parse_emotions
    from emolab.extract import ExtractConfig, extract
    from emolab.layers import layer_items
    from emolab.report import print_report

    try:
        emotions = tuple(parse_emotions(args.emotions))
    except ValueError as exc:
        raise UsageError(f"--emotions: {exc}") from None
    layers, window = args.layers, args.window
    if args.layer is not None:
        layers, window = str(args.layer), 1
    try:  # fail on a typo before loading data and model; the layer range needs the model's depth
        layer_items(layers)
    except ValueError as exc:
        raise UsageError(str(exc).replace("--layers", "--layer" if args.layer is not None else "--layers")) from None
    output = args.output or f"vectors/{args.model.rstrip('/').split('/')[-1].lower()}"
    config = ExtractConfig(
        model=args.model, emotions=emotions, layers=layers, window=window, batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, device=args.device, test_size=args.test_size,
        seed=args.seed, data=args.data, max_per_class=args.max_per_class, output=output,
        save_full_sweep=args.save_full_sweep, progress=not args.no_progress,
    )
    bundle = extract(config)
    print_report(bundle)
    print(f"saved bundle to {output}")
    return 0


def add_test(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="inspect a bundle (no model needed)")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_test)


def run_test(args: argparse.Namespace) -> int:
    from emolab.bundle import EmotionBundle
    from emolab.report import print_report, summary

    bundle = EmotionBundle.load(args.bundle)
    if args.json:
        print(json.dumps(summary(bundle), indent=2))
    else:
        print_report(bundle)
    return 0


def add_build_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-model", help="build an offline model (smollm2, tiny-qwen3, tiny-llama) and print its folder")
    p.add_argument("name", choices=["smollm2", "tiny-qwen3", "tiny-llama"])
    p.set_defaults(func=lambda args: print(__import__("emolab.models").models.resolve_model(args.name)) or 0)


class UsageError(Exception):
    """A bad flag value found after parsing; reported like argparse's own errors."""


# Sub-commands living in other modules, imported when the parser is built ("module:function").
EXTERNAL_BUILDERS = (
    "emolab.server:add_serve",
    "emolab.http_client:add_test_http",
    "emolab.bench:add_bench",
    "emolab.evaluate:add_eval",
    "emolab.export.cli:add_export_gguf",
)


def builders() -> list[Callable[[argparse._SubParsersAction], None]]:
    import importlib

    found = [add_extract, add_test, add_build_model]
    for spec in EXTERNAL_BUILDERS:
        module, name = spec.split(":")
        found.append(getattr(importlib.import_module(module), name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emolab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for builder in builders():
        builder(sub)
    args = parser.parse_args(argv)
    from emolab.bundle import BundleError

    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.error(str(exc))
    except (BundleError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"emolab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
