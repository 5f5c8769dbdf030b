"""``emolab test-http``: smoke-test a running steering server.

Reads ``/v1/emotions``, then sends one unsteered request and one steered request per emotion, all
at once, and reports each continuation. Works against either backend (and the reference tool's server).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from emolab.api_client.client import DEFAULT_BASE_URL, AsyncSteeringClient

__all__ = ["DEFAULT_PROMPT", "ProbeResult", "probe"]

DEFAULT_PROMPT = "Describe your morning in two sentences."


@dataclass
class ProbeResult:
    label: str  # "baseline" or the emotion name
    alpha: float
    text: str | None = None
    error: str | None = None
    completion_tokens: int | None = None


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

    ``alpha=None`` uses the bundle's recommended alpha per emotion when the server reports one on its
    own alpha scale, else 1.0.
    """
    client = AsyncSteeringClient(base_url, api_key=api_key, model=model, timeout=timeout)
    try:
        info = await client.info()
        recommended = await client.recommended_alphas()
        jobs = [ProbeResult("baseline", 0.0)] + [
            ProbeResult(e, float(alpha if alpha is not None else recommended.get(e, 1.0))) for e in info["emotions"]
        ]

        async def run(job: ProbeResult) -> ProbeResult:
            steering = None if job.label == "baseline" else {job.label: job.alpha}
            try:
                reply = await client.chat_completion(
                    prompt, steering, max_tokens=max_tokens, temperature=temperature,
                    extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
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
