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
A request: {"prompt": str or token ids, "steering": [...] or null, "max_tokens": int, "detokenize": bool}
(token ids and ``detokenize: false`` for an engine started with ``skip_tokenizer_init``).
"""

from __future__ import annotations

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
    from vllm import SamplingParams

    extra = {"steering": request["steering"]} if request.get("steering") else None
    return SamplingParams(temperature=0.0, max_tokens=request.get("max_tokens", 16), logprobs=5,
                          ignore_eos=True, extra_args=extra, detokenize=request.get("detokenize", True))


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
