"""emolab: emotion vectors from a model's residual stream, their inspection, and per-request steering.

The pipeline, one subpackage per stage (``docs/architecture.md`` has the map)::

    core  ->  extraction  ->  steer  ->  serve / fastpath  ->  api_client  ->  evaluate / bench / simulate
          ->  export  ->  notebook  ->  cli

The names below are the public API. Heavy ones (torch, transformers, openai) load on first use,
so ``import emolab`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "ALPHA_SCALES": "emolab.core.bundle",
    "BundleError": "emolab.core.bundle",
    "EmotionBundle": "emolab.core.bundle",
    "DEFAULT_EMOTIONS": "emolab.core.emotions",
    "EKMAN_GROUPS": "emolab.core.emotions",
    "EmolabError": "emolab.core.errors",
    "Steering": "emolab.core.steering",
    "SteeringError": "emolab.core.steering",
    "SteeringLimits": "emolab.core.steering",
    "load_model": "emolab.core.models",
    "resolve_model": "emolab.core.models",
    "ExtractConfig": "emolab.extraction",
    "extract": "emolab.extraction",
    "HFSteerer": "emolab.steer",
    "generate": "emolab.steer",
    "launch_server": "emolab.serve.launch",
    "wait_for_health": "emolab.serve.launch",
    "stop_server": "emolab.serve.launch",
    "SteeringClient": "emolab.api_client",
    "AsyncSteeringClient": "emolab.api_client",
    "EvalConfig": "emolab.evaluate",
    "run_eval": "emolab.evaluate",
    "ExperimentSpec": "emolab.simulate",
    "run_experiment": "emolab.simulate",
    "analyze": "emolab.simulate",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'emolab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
