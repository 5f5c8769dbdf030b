"""``emolab readout``: which emotion a text or a chat carries inside the model, token by token (emolab.steer.readout)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emolab.cli.common import UsageError

__all__ = ["add_circumplex", "add_readout"]


def add_readout(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("readout", help="read a bundle's emotions out of a text or chat, token by token")
    p.add_argument("--vectors", required=True, help="bundle folder")
    p.add_argument("--model", required=True, help="the bundle's model (alias, folder or hub id)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="a plain text (the tokenizer's special tokens added)")
    source.add_argument("--chat", metavar="FILE", help="a JSON file holding a list of {role, content} messages")
    source.add_argument("--record-reference", metavar="OUT",
                        help="write a copy of the bundle with the readout reference over its own held-out texts")
    source.add_argument("--check", metavar="OUT", help="the validity checks (held-out AUC beside the probe; steered "
                        "replies read back unsteered), report.md with plots in OUT")
    p.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="--check: the first N held-out steering prompts (default all 48)")
    p.add_argument("--alpha", default=None, metavar="EMOTION=ALPHA[,...]",
                   help="--check: alphas to steer with (default the bundle's recommended alphas)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--data", default=None, help="--record-reference: read the held-out texts from here instead")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the per-token scores as JSON")
    p.set_defaults(func=run_readout)


def _messages(path: str) -> list[dict]:
    try:
        messages = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--chat {path}: cannot read a JSON list of messages ({exc})") from None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise UsageError(f"--chat {path}: expected a non-empty JSON list of {{\"role\": ..., \"content\": ...}}")
    return messages


def run_readout(args: argparse.Namespace) -> int:
    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import load_model
    from emolab.core.tracked import refuse_tracked
    from emolab.steer.readout import EmotionReadout, record_reference

    messages = _messages(args.chat) if args.chat else None
    bundle = EmotionBundle.load(args.vectors)
    if args.record_reference:
        refuse_tracked(args.record_reference)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.check:
        return _check(args, bundle, model, tokenizer)
    if args.record_reference:
        updated = record_reference(bundle, model, tokenizer, data=args.data)
        updated.save(Path(args.record_reference))
        ref = updated.metadata["readout_reference"]
        print(f"wrote {args.record_reference}: readout reference over {ref['tokens']} tokens of {ref['source']}")
        return 0
    readout = EmotionReadout(model, tokenizer, bundle)
    result = readout.chat(messages) if messages is not None else readout.text(args.text)
    frame = result.frame()
    with_role = "role" in frame.columns
    print(f"scores: {result.scale.meaning}")
    header = f"{'pos':>4}  {'token':<16}" + ("  role     " if with_role else "") + "".join(f"{e:>9}" for e in result.emotions)
    print(header)
    for row in frame.itertuples(index=False):
        token = repr(row.token)[1:-1][:16]
        cells = "".join(f"{getattr(row, e):9.2f}" for e in result.emotions)
        role = f"  {row.role:<9}" if with_role else ""
        print(f"{row.position:>4}  {token:<16}{role}{cells}{'  (sink)' if row.sink else ''}")
    means = result.mean()
    print("mean  " + "  ".join(f"{e} {v:+.2f}" for e, v in means.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": result.scale.to_json(), "emotions": result.emotions,
                                               "means": means, "tokens": json.loads(frame.to_json(orient="records"))},
                                              indent=2))
    return 0


def _alphas(text: str | None, bundle) -> dict[str, float]:
    alphas = dict(bundle.metadata.get("alpha_recommendations") or {})
    for item in (text or "").split(","):
        if not item.strip():
            continue
        emotion, sep, value = item.partition("=")
        try:
            alphas[emotion.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--alpha takes EMOTION=ALPHA[,...], got {item!r}") from None
        if not sep or emotion.strip() not in bundle.emotions:
            raise UsageError(f"--alpha: unknown emotion {emotion.strip()!r}; the bundle has {bundle.emotions}")
    missing = [e for e in bundle.emotions if e not in alphas]
    if missing:
        raise UsageError(f"--alpha: the bundle recommends no alpha for {missing}; give EMOTION=ALPHA for each")
    return alphas


def _check(args: argparse.Namespace, bundle, model, tokenizer) -> int:
    from emolab.evaluate.readout_check import readback_effect, readout_auc
    from emolab.evaluate.readout_report import write_readout_report
    from emolab.extraction.prompts import read_prompts
    from emolab.steer.readout import EmotionReadout

    alphas = _alphas(args.alpha, bundle)
    prompts = read_prompts("heldout")[: args.prompts]
    print(f"check 1: held-out texts of the bundle's split ({args.vectors})", flush=True)
    auc = readout_auc(model, tokenizer, bundle, data=args.data)
    print(f"check 2: {len(prompts)} held-out prompts x (unsteered + 2 x {len(bundle.emotions)} steered), "
          f"{args.max_new_tokens} tokens each", flush=True)
    summary, replies = readback_effect(model, tokenizer, bundle, prompts, alphas, max_new_tokens=args.max_new_tokens)
    scale = EmotionReadout(model, tokenizer, bundle).scale.meaning
    settings = (f"Greedy, {args.max_new_tokens} new tokens, alphas {alphas} ({bundle.alpha_scale} scale), "
                f"{len(prompts)} held-out prompts.")
    path = write_readout_report(args.check, auc, summary, replies, model=args.model, bundle=args.vectors,
                                scale=scale, settings=settings)
    print(path.read_text())
    return 0


def add_circumplex(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("circumplex", help="valence and arousal directions of a bundle (no model needed)")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--output", default=None, help="write a copy of the bundle with valence and arousal directions")
    p.set_defaults(func=run_circumplex)


def run_circumplex(args: argparse.Namespace) -> int:
    from emolab.core.bundle import EmotionBundle
    from emolab.core.circumplex import NRC_VAD_SOURCE, circumplex_frame, derive
    from emolab.core.tracked import refuse_tracked

    bundle = EmotionBundle.load(args.bundle)
    try:
        derived = derive(bundle)
    except ValueError as exc:
        raise UsageError(f"{args.bundle}: {exc}") from None
    print(f"coordinates: {NRC_VAD_SOURCE}")
    print(circumplex_frame(derived).round(3).to_string(index=False))
    for name, info in derived.metadata["derived"].items():
        fits = [r for r in info["fit_r"] if r is not None]
        print(f"{name}: correlation of the emotion vectors' projections with the ratings, per layer: "
              f"{min(fits):.3f}..{max(fits):.3f}" if fits else f"{name}: no layer with two rated emotions")
    if args.output:
        refuse_tracked(args.output)
        derived.save(Path(args.output))
        print(f"wrote {args.output}: steer by name {derived.steering_names[len(derived.emotions):]} "
              f"(ids {len(derived.emotions)}..{len(derived.steering_names) - 1})")
    return 0
