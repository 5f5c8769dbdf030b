"""``emolab test-http``: a baseline and one steered request per emotion against a running server."""

from __future__ import annotations

import argparse
import asyncio
import sys

from emolab.api_client import DEFAULT_BASE_URL, DEFAULT_PROMPT, probe, v1_url
from emolab.cli.common import positive_int

__all__ = ["add_test_http"]


def add_test_http(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test-http", help="send a baseline and one steered request per emotion to a running server")
    p.add_argument("-u", "--base-url", default=DEFAULT_BASE_URL,
                   help=f"server URL, with or without /v1 (default {DEFAULT_BASE_URL})")
    p.add_argument("-k", "--api-key", default=None, help="bearer key (else $EMOLAB_API_KEY / $EMOTION_STEERING_API_KEY)")
    p.add_argument("--model", default=None, help="model name (default: the one the server serves)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=40)
    p.add_argument("--alpha", type=float, default=None, help="alpha for every emotion (default: recommended, else 1.0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=False,
                   help="chat_template_kwargs.enable_thinking (Qwen3); default off")
    p.set_defaults(func=run_test_http)


def run_test_http(args: argparse.Namespace) -> int:
    info, results = asyncio.run(probe(
        args.base_url, api_key=args.api_key, model=args.model, prompt=args.prompt, max_tokens=args.max_tokens,
        alpha=args.alpha, thinking=args.thinking, temperature=args.temperature,
    ))
    print(f"server: {v1_url(args.base_url)}  model: {info.get('model')}  backend: {info.get('backend', '?')}  "
          f"layers: {info.get('chosen_layers')}  alpha scale: {info.get('alpha_scale', 'raw')}")
    print(f"prompt: {args.prompt!r}\n")
    for result in results:
        head = "baseline" if result.label == "baseline" else f"{result.label} (alpha {result.alpha:+g})"
        body = f"FAILED: {result.error}" if result.error else repr(result.text)
        print(f"== {head}\n{body}\n")
    failures = [r.label for r in results if r.error]
    if failures:
        print(f"{len(failures)} of {len(results)} requests failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} requests succeeded")
    return 0
