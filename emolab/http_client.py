"""``emolab test-http``: smoke-test a running steering server with the ``openai`` client.

Reads ``/v1/emotions``, then sends one unsteered request and one steered request per emotion, all
at once, and prints each continuation. Works against either backend (and the reference tool's server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_PROMPT = "Describe your morning in two sentences."


@dataclass
class ProbeResult:
    label: str  # "baseline" or the emotion name
    alpha: float
    text: str | None = None
    error: str | None = None
    completion_tokens: int | None = None


def v1_url(base_url: str) -> str:
    """Accept ``http://host:port`` or ``http://host:port/v1``; return the ``/v1`` form."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


async def fetch_emotions(base_url: str, api_key: str | None, timeout: float = 30.0) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout) as http:
        response = await http.get(v1_url(base_url) + "/emotions", headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"GET /v1/emotions answered {response.status_code}: {response.text[:500]}")
    return response.json()


async def probe(
    base_url: str = DEFAULT_BASE_URL,
    *,
    api_key: str | None = None,
    model: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 40,
    alpha: float | None = None,
    thinking: bool = False,
    temperature: float = 0.0,
    timeout: float = 600.0,
) -> tuple[dict[str, Any], list[ProbeResult]]:
    """The server's emotion info and one result per request (baseline first, then each emotion).

    ``alpha=None`` uses the bundle's recommended alpha per emotion when the server reports one, else 1.0.
    """
    from openai import AsyncOpenAI

    info = await fetch_emotions(base_url, api_key)
    client = AsyncOpenAI(base_url=v1_url(base_url), api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)
    try:
        model = model or info.get("model") or (await client.models.list()).data[0].id
        recommended = info.get("alpha_recommendations") or {}
        if info.get("alpha_recommendations_scale", "raw") != info.get("alpha_scale", "raw"):
            recommended = {}  # recommendations in other units than the server's alphas would mislead
        jobs = [ProbeResult("baseline", 0.0)] + [
            ProbeResult(e, float(alpha if alpha is not None else recommended.get(e, 1.0))) for e in info["emotions"]
        ]

        async def run(job: ProbeResult) -> ProbeResult:
            extra: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": thinking}}
            if job.label != "baseline":
                extra["vllm_xargs"] = {"steering": [info["id_map"][job.label], job.alpha]}
            try:
                reply = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=temperature, extra_body=extra,
                )
                job.text = reply.choices[0].message.content or ""
                job.completion_tokens = reply.usage.completion_tokens if reply.usage else None
            except Exception as exc:  # report every failure, keep the others going
                job.error = f"{type(exc).__name__}: {exc}"
            return job

        results = await asyncio.gather(*(run(job) for job in jobs))
    finally:
        await client.close()
    return info, list(results)


def add_test_http(sub: argparse._SubParsersAction) -> None:
    from emolab.cli import positive_int

    p = sub.add_parser("test-http", help="send a baseline and one steered request per emotion to a running server")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"server URL (default {DEFAULT_BASE_URL})")
    p.add_argument("--api-key", default=None, help="bearer key (else $EMOLAB_API_KEY / $EMOTION_STEERING_API_KEY)")
    p.add_argument("--model", default=None, help="model name (default: the one the server serves)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=40)
    p.add_argument("--alpha", type=float, default=None, help="alpha for every emotion (default: recommended, else 1.0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=False,
                   help="chat_template_kwargs.enable_thinking (Qwen3); default off")
    p.set_defaults(func=run_test_http)


def run_test_http(args: argparse.Namespace) -> int:
    from emolab.api import resolve_api_key

    info, results = asyncio.run(probe(
        args.base_url, api_key=resolve_api_key(args.api_key), model=args.model, prompt=args.prompt,
        max_tokens=args.max_tokens, alpha=args.alpha, thinking=args.thinking, temperature=args.temperature,
    ))
    print(f"server: {v1_url(args.base_url)}  model: {info.get('model')}  backend: {info.get('backend', '?')}  "
          f"layers: {info.get('chosen_layers')}")
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
