"""Run an experiment against a steering server: every trial of a wave in flight at once, logged as it lands.

``run_experiment(spec, folder, base_url=...)`` reads the server (``/health``, ``/v1/emotions``: model,
backend, bundle hash, alpha scale, recommended alphas), builds the conditions and trials, skips the
ones ``folder`` already holds, and sends the rest through ``AsyncSteeringClient`` with up to
``spec.concurrency`` requests open, so vLLM batches them. A 4xx from the server stops the run with its
message (the spec asks for something this server refuses); a trial lost to a connection error or a
5xx is left for the next run of the same folder to retry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from emolab.api_client import AsyncSteeringClient
from emolab.simulate.agents import run_conversations
from emolab.simulate.amounts import AmountDistribution, read_amounts
from emolab.simulate.design import Trial, conditions, sampling_kwargs, trials
from emolab.simulate.errors import SimulationError
from emolab.simulate.log import RunLog
from emolab.simulate.readout import parse_choice, parse_number, read_options
from emolab.simulate.spec import ExperimentSpec

__all__ = ["amount_distribution", "choice_record", "run_experiment", "run_experiment_async", "server_info",
           "trim_logprobs"]


async def server_info(client: AsyncSteeringClient) -> dict[str, Any]:
    """What a run records about its server: health, model, backend, bundle hash, alpha scale, recommendations."""
    import httpx

    info = await client.info()
    out: dict[str, Any] = {
        "base_url": client.base_url, "model": info.get("model"), "bundle_model": info.get("bundle_model"),
        "backend": info.get("backend"), "bundle_sha256": info.get("bundle_sha256"),
        "alpha_scale": info.get("alpha_scale"), "emotions": info.get("emotions"),
        "chosen_layers": info.get("chosen_layers"), "recommended_alphas": await client.recommended_alphas(),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    root = client.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=10) as http:
        for route in ("/health", "/version"):
            try:
                response = await http.get(root + route, headers=client._headers())
                if response.status_code == 200 and response.content.strip():
                    out[route.strip("/")] = response.json()
            except (httpx.HTTPError, ValueError):
                pass
    return out


def trim_logprobs(content: list[Any] | None) -> list[dict[str, Any]] | None:
    """A reply's ``logprobs.content`` as plain dicts: token, logprob, and the top alternatives."""
    if content is None:
        return None
    out = []
    for entry in content:
        entry = entry if isinstance(entry, dict) else entry.model_dump()
        out.append({"token": entry["token"], "logprob": entry["logprob"],
                    "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in entry.get("top_logprobs") or []]})
    return out


async def amount_distribution(spec: ExperimentSpec, client: AsyncSteeringClient, trial: Trial) -> AmountDistribution:
    """The model's probability of every amount in the spec's range for this trial (``emolab.simulate.amounts``):
    each node of the digit tree one ``max_tokens: 1`` request continuing the begun reply, under the trial's
    steering."""
    *before, begun = trial.messages

    async def ask(text: str) -> list[dict[str, Any]]:
        kwargs = sampling_kwargs(spec, trial.seed, logprobs=True)
        kwargs.update(max_tokens=1, temperature=0.0, top_p=1.0)
        reply = await client.chat_completion([*before, {**begun, "content": begun["content"] + text}],
                                             trial.condition.steering(), **kwargs)
        content = trim_logprobs(reply.choices[0].logprobs.content if reply.choices[0].logprobs is not None else None)
        return content[0]["top_logprobs"] if content else []

    low, high = spec.range
    return await read_amounts(ask, low, high, floor=spec.distribution_floor)


def choice_record(spec: ExperimentSpec, trial: Trial, reply: Any, began: float, ended: float) -> dict[str, Any]:
    """One logged trial of a choice or number experiment, with its readouts."""
    choice = reply.choices[0]
    text = choice.message.content or ""
    content = trim_logprobs(choice.logprobs.content if choice.logprobs is not None else None)
    record: dict[str, Any] = {
        "trial_id": trial.trial_id, "experiment": spec.name, "kind": spec.kind,
        "condition": trial.condition.name, "condition_kind": trial.condition.kind, "emotion": trial.condition.emotion,
        "multiple": trial.condition.multiple, "alpha": trial.condition.alpha,
        "persona_index": trial.persona_index, "persona": spec.personas[trial.persona_index],
        "arm": trial.arm_index, "order": list(trial.arm.order), "labels": list(trial.arm.labels), "seed": trial.seed,
        "messages": list(trial.messages), "steering": trial.condition.steering(), "reply": text,
        "finish_reason": choice.finish_reason,
        "usage": reply.usage.model_dump() if reply.usage is not None else None,
        "latency_s": round(ended - began, 4), "t_start": round(began, 4), "t_end": round(ended, 4),
        "logprobs": content,
    }
    if spec.kind == "choice":
        readout = read_options(content, trial.arm.labels, spec.readout)
        mapping = trial.arm.label_to_option
        record.update(
            label_probs=readout.probs, label_mass=round(readout.mass, 6), readout_position=readout.position,
            option_probs=None if readout.probs is None else {mapping[label]: p for label, p in readout.probs.items()},
            parsed_choice=parse_choice(text, trial.arm.labels, spec.keywords, mapping))
    else:
        low, high = spec.range
        record["parsed_number"] = parse_number(text, low, high, cut=choice.finish_reason == "length")
    return record


async def _run_trials(spec: ExperimentSpec, client: AsyncSteeringClient, log: RunLog, todo: list[Trial],
                      progress: bool, on_record: Callable[[dict[str, Any]], None] | None) -> int:
    from openai import APIConnectionError, APIStatusError
    from tqdm.auto import tqdm

    gate = asyncio.Semaphore(spec.concurrency)
    lost: list[str] = []
    walks: dict[str, asyncio.Future] = {}  # seeds of one condition x persona x arm share their prompt: read it once

    def distribution(trial: Trial) -> asyncio.Future:
        key = json.dumps([trial.messages, trial.condition.steering()])
        if key not in walks or (walks[key].done() and (walks[key].cancelled() or walks[key].exception())):
            walks[key] = asyncio.ensure_future(amount_distribution(spec, client, trial))  # again, if it failed
        return walks[key]

    bar = tqdm(total=len(todo), desc=spec.name, unit="trial", disable=not progress)

    async def one(trial: Trial) -> None:
        async with gate:
            began = time.time()
            try:
                reply = await client.chat_completion(list(trial.messages), trial.condition.steering(),
                                                     **sampling_kwargs(spec, trial.seed, spec.kind == "choice"))
                amounts = (await asyncio.shield(distribution(trial)) if spec.number_readout == "distribution"
                           else None)  # a spec reads a distribution only for a number experiment
            except APIStatusError as exc:
                if 400 <= exc.status_code < 500 and exc.status_code != 429:
                    raise SimulationError(f"the server refused a trial ({exc.status_code}): {exc.message}") from None
                lost.append(f"{exc.status_code}: {exc.message}")
                return
            except APIConnectionError as exc:
                lost.append(str(exc))
                return
            record = choice_record(spec, trial, reply, began, time.time())
            if amounts is not None:
                record.update(number_distribution=amounts.to_record(), expected_number=amounts.expected)
            log.append(record)
            bar.update(1)
            if on_record is not None:
                on_record(record)

    tasks = [asyncio.ensure_future(one(t)) for t in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in [*tasks, *walks.values()]:
            task.cancel()
        bar.close()
    if lost:
        raise SimulationError(f"{len(lost)} of {len(todo)} trials were lost (first: {lost[0]}); run the same "
                              "output folder again to retry them")
    return len(todo)


async def run_experiment_async(spec: ExperimentSpec, folder: str | Path, *, base_url: str, api_key: str | None = None,
                               progress: bool = True, limit: int | None = None, judge: Any = "auto",
                               on_record: Callable[[dict[str, Any]], None] | None = None) -> RunLog:
    # The openai client retries a dropped connection, a 429 and a 5xx (3 times, backing off); what still fails
    # is reported, and the next run of the folder retries it.
    client = AsyncSteeringClient(base_url, api_key=api_key, timeout=600.0, max_retries=3)
    try:
        info = await server_info(client)
        log = RunLog(folder, spec, info)
        finished = False
        try:
            conds = conditions(spec, list(info["emotions"]), info["recommended_alphas"])
            log.update_meta(conditions=[asdict(c) for c in conds])
            if spec.kind == "conversation":

                await run_conversations(spec, client, log, conds, progress=progress, limit=limit, judge=judge)
            else:
                todo = [t for t in trials(spec, conds) if t.trial_id not in log.done]
                total = len(todo) + len(log.done)
                log.update_meta(n_trials=total)
                await _run_trials(spec, client, log, todo[:limit] if limit is not None else todo, progress, on_record)
            finished = limit is None
        finally:
            log.close(finished=finished)
        return log
    finally:
        await client.close()


def run_experiment(spec: ExperimentSpec, folder: str | Path, *, base_url: str, api_key: str | None = None,
                   progress: bool = True, limit: int | None = None, judge: Any = "auto") -> RunLog:
    """Run (or resume) ``spec`` into ``folder`` against the server at ``base_url``; returns the log.

    ``limit``: run at most this many of the trials still owed (then stop, resumable). ``judge``
    (conversations): ``"auto"``, an ``EmotionJudge``, or ``None`` to judge at report time.
    """
    job = run_experiment_async(spec, folder, base_url=base_url, api_key=api_key, progress=progress, limit=limit,
                               judge=judge)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job)
    # Called from a running loop (a Jupyter cell): run on a thread of its own.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, job).result()
