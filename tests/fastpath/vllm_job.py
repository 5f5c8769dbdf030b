"""Run steering scenarios on a real vLLM engine (in-process) and dump tokens and logprobs as JSON.

Used by tests/fastpath/test_engine.py and test_families.py as a subprocess, so each engine (plugin on /
plugin off) lives in a process with its own environment. Usage: ``python tests/fastpath/vllm_job.py JOB.json OUT.json``.

A job: {"engine": {LLM kwargs}, "scenarios": {name: {"kind": ..., ...}}}, or {"engines": [{"name": ...,
"engine": ..., "scenarios": ...}, ...]}: several engines one after another in this one process (each deleted
before the next starts), each one's failure recorded under its name as {"error": ...} instead of ending the
job, and each one's ``emolab.vllm`` log lines kept under "log". A scenario's kind is
``batch`` (all requests submitted together), ``sequence`` (one after another: prefix-cache order),
or ``staggered`` (request i joins at engine step ``start``; long prompts exercise chunked prefill).
The output also holds ``stats.preempted``: how many times the scheduler preempted a request.
A request: {"prompt": str or token ids, "steering": [...] or null, "max_tokens": int, "detokenize": bool,
"extra": {more ``extra_args``: steering_modes, steering_scope}, "readout": bool} (token ids and
``detokenize: false`` for an engine started with ``skip_tokenizer_init``; a request with ``readout`` gets the
raw readout its workers wrote under ``$EMOLAB_METRICS_DIR``).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import time
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def params(request: dict):
    """``steering`` as vLLM gets it from ``vllm_xargs``, ``extra`` merged in (controls), and with ``readout``
    a fresh readout key (kept in ``request["_readout_key"]``, read back by ``readout_of``)."""
    from vllm import SamplingParams

    extra = {"steering": request["steering"]} if request.get("steering") else {}
    extra.update(request.get("extra") or {})
    if request.get("readout"):
        from emolab.fastpath.readout_store import READOUT_XARG, new_key

        request["_readout_key"] = new_key()
        extra[READOUT_XARG] = f"{request['_readout_key']}:per_token"
    return SamplingParams(temperature=0.0, max_tokens=request.get("max_tokens", 16), logprobs=5,
                          ignore_eos=True, extra_args=extra or None, detokenize=request.get("detokenize", True))


@functools.cache
def chosen_layer_count(bundle: str) -> int:
    from emolab.core.bundle import EmotionBundle

    return len(EmotionBundle.load(bundle, load_full_sweep=False).chosen_layers)


def readout_of(request: dict) -> dict | None:
    """The raw readout the workers wrote for a request that asked (per-layer sums, counts, per token), else None.
    Needs ``$EMOLAB_METRICS_DIR``; the parts are written as the request finishes, so wait a moment for them."""
    key = request.get("_readout_key")
    if key is None:
        return None
    from emolab.fastpath.metrics import metrics_directory
    from emolab.fastpath.readout_store import collect, readout_folder

    n_layers = chosen_layer_count(os.environ["EMOLAB_VECTORS"])
    deadline = time.monotonic() + 30
    while (raw := collect(readout_folder(metrics_directory()), key, n_layers)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no readout parts for {key} in {readout_folder(metrics_directory())}")
        time.sleep(0.05)
    return {name: value.tolist() if hasattr(value, "tolist") else value for name, value in raw.items()}


def prompt(request: dict):
    p = request["prompt"]
    return {"prompt_token_ids": p} if isinstance(p, list) else p


def result(output) -> dict:
    completion = output.outputs[0]
    logprobs = [{str(tok): lp.logprob for tok, lp in step.items()} for step in completion.logprobs or []]
    return {"token_ids": list(completion.token_ids), "text": completion.text, "logprobs": logprobs}


def run_staggered(llm, requests: list[dict]) -> list[dict]:
    engine = llm.llm_engine
    pending = sorted(range(len(requests)), key=lambda i: requests[i].get("start", 0))
    done: dict[str, dict] = {}
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and requests[pending[0]].get("start", 0) <= step:
            i = pending.pop(0)
            engine.add_request(f"req-{i}", prompt(requests[i]), params(requests[i]))
        for output in engine.step():
            if output.finished:
                done[output.request_id] = result(output)
        step += 1
    return [done[f"req-{i}"] for i in range(len(requests))]


def count_preemptions() -> dict[str, int]:
    """Count the scheduler's preemptions, so a test can show its scenario really preempted."""
    from vllm.v1.core.sched import scheduler

    counter = {"preempted": 0}
    original = scheduler.Scheduler.schedule

    def schedule(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        counter["preempted"] += len(getattr(output, "preempted_req_ids", None) or ())
        return output

    scheduler.Scheduler.schedule = schedule
    return counter


def run_engine(spec: dict) -> dict:
    from vllm import LLM

    llm = LLM(**spec["engine"])
    out: dict = {}
    for name, scenario in spec["scenarios"].items():
        requests = scenario["requests"]
        if scenario["kind"] == "batch":
            outputs = llm.generate([prompt(r) for r in requests], [params(r) for r in requests], use_tqdm=False)
            out[name] = [result(o) for o in outputs]
        elif scenario["kind"] == "sequence":
            out[name] = [result(llm.generate([prompt(r)], [params(r)], use_tqdm=False)[0]) for r in requests]
        elif scenario["kind"] == "staggered":
            out[name] = run_staggered(llm, requests)
        else:
            raise ValueError(f"unknown scenario kind {scenario['kind']!r}")
        if any(r.get("readout") for r in requests):
            # A worker learns that a request finished from the next step's scheduler output; generate() stops
            # when nothing is left to run, so one empty step hands the last finished ids to the workers.
            llm.llm_engine.step()
        for request, answer in zip(requests, out[name], strict=True):
            if request.get("readout"):
                answer["readout"] = readout_of(request)
    del llm
    return out


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(job_path: str, out_path: str) -> None:
    job = json.loads(open(job_path).read())
    counter = count_preemptions()
    if "engines" not in job:
        out = run_engine(job)
    else:
        out = {}
        lines = Lines()
        logging.getLogger("emolab.vllm").addHandler(lines)
        for spec in job["engines"]:
            began = time.perf_counter()
            lines.lines = []
            try:
                out[spec["name"]] = run_engine(spec)
            except Exception as exc:  # noqa: BLE001  (recorded: the test says which engine failed and why)
                out[spec["name"]] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            out[spec["name"]].update(log=lines.lines, seconds=time.perf_counter() - began)
            gc.collect()
    out["stats"] = counter
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
