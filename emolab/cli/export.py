"""``emolab export-gguf``: llama.cpp control-vector files from a bundle (a thin layer over emolab.export.gguf)."""

from __future__ import annotations

import argparse

from emolab.cli.common import UsageError
from emolab.core.bundle import ALPHA_SCALES

__all__ = ["add_export_gguf"]


def add_export_gguf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-gguf", help="write llama.cpp control-vector files (GGUF) from a bundle")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--steering", default=None, metavar="EMOTION=ALPHA[,...]",
                   help="one file holding the weighted sum, e.g. fear=1.0,joy=0.5 (needs --output)")
    p.add_argument("--alpha-scale", choices=list(ALPHA_SCALES), default=None,
                   help="what alpha 1 means (default: the bundle's alpha_scale, else raw)")
    p.add_argument("--output", default=None, help="the .gguf file written for --steering")
    p.add_argument("--per-emotion", default=None, metavar="DIR",
                   help="also (or instead) write DIR/<emotion>.gguf at alpha 1 for every emotion")
    p.add_argument("--model-hint", default=None,
                   help="controlvector.model_hint (default: the model's llama.cpp architecture when known)")
    p.set_defaults(func=run_export_gguf)


def run_export_gguf(args: argparse.Namespace) -> int:
    from emolab.core.bundle import EmotionBundle
    from emolab.export.gguf import (
        ExportError,
        export_gguf,
        export_per_emotion,
        parse_steering,
        read_control_vector,
    )

    if args.steering is None and args.per_emotion is None:
        raise UsageError("export-gguf needs --steering EMOTION=ALPHA (with --output) or --per-emotion DIR")
    if args.steering is not None and args.output is None:
        raise UsageError("--output: give the .gguf file to write for --steering")
    if args.output is not None and args.steering is None:
        raise UsageError("--output goes with --steering EMOTION=ALPHA")

    def flag_error(exc: ExportError, output_flag: str) -> UsageError:
        flags = {"steering": "--steering", "scale": "--alpha-scale", "output": output_flag}
        where = flags.get(exc.subject, args.bundle)  # layers / file problems lie in the bundle
        return UsageError(f"{where}: {exc}")

    try:
        steering = parse_steering(args.steering) if args.steering is not None else None
    except ExportError as exc:
        raise flag_error(exc, "--output") from None
    bundle = EmotionBundle.load(args.bundle)  # BundleError: one line naming the file, exit 2 (emolab.cli.main)
    written = []
    try:
        if steering is not None:
            written.append(export_gguf(bundle, steering, args.output, args.alpha_scale, args.model_hint))
    except ExportError as exc:
        raise flag_error(exc, "--output") from None
    try:
        if args.per_emotion is not None:
            written += export_per_emotion(bundle, args.per_emotion, args.alpha_scale, args.model_hint).values()
    except ExportError as exc:
        raise flag_error(exc, "--per-emotion") from None
    scale = args.alpha_scale or bundle.alpha_scale
    for path in written:
        read_back = read_control_vector(path)
        names = ", ".join(f"direction.{n}" for n in read_back.directions)
        print(f"wrote {path}: {names} (emolab layers {sorted(read_back.by_emolab_layer())}, {scale} alpha scale)")
    if steering is not None:
        print(f"run: llama-cli -m MODEL.gguf --control-vector {args.output}  (docs/llamacpp.md)")
    return 0
