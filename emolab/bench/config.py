"""``emolab bench``'s settings: ``BenchConfig`` (what to run, against which servers) and ``BenchError``.

Its own module so that ``run`` (the bench) and ``servers`` (the servers it starts) both read it and
neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emolab.bench.load import MIN_RUN_SECONDS, SCENARIOS
from emolab.core.errors import EmolabError

__all__ = ["MAX_TEMPERATURE", "BenchConfig", "BenchError", "check_temperature"]


MAX_TEMPERATURE = 2.0  # the sampling temperature the bench accepts: 0 (greedy) .. this


class BenchError(EmolabError, ValueError):
    """Bench settings that cannot run."""


def check_temperature(temperature: float) -> float:
    """``temperature`` if the bench can sample at it (0 = greedy .. ``MAX_TEMPERATURE``), else a ``BenchError``."""
    if not (0.0 <= temperature <= MAX_TEMPERATURE):  # also refuses NaN
        raise BenchError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {temperature}",
                         setting="temperature")
    return temperature


@dataclass
class BenchConfig:
    base_url: str | None = None  # a running server, e.g. http://127.0.0.1:8000/v1
    api_key: str = ""
    model: str = "emolab"  # the served model name requested
    agents: list[int] = field(default_factory=lambda: [1, 20, 64])
    scenarios: list[str] = field(default_factory=lambda: ["none", "mixed", "churn"])
    prompt_tokens: int = 200
    max_tokens: int = 256
    requests_per_agent: int = 2
    repeats: int = 2
    alpha: float = 1.0  # alpha of 'same'; bound of the random alphas
    seed: int = 0
    temperature: float = 0.0  # 0 = greedy; > 0 samples, each request with a seed shared by every scenario
    output: str | None = None  # JSON results file
    serve_model: str | None = None  # start servers for this model (with serve_vectors)
    serve_vectors: str | None = None
    serve_backend: str = "vllm"
    dtype: str = "auto"
    max_model_len: int | None = None
    server_args: list[str] = field(default_factory=list)  # extra arguments for emolab serve
    server_args_plain: list[str] = field(default_factory=list)  # extra arguments for the plain vLLM server
    api_server_count: int = 1  # API-server processes of every server the bench starts (emolab and plain alike)
    compare_plain: bool = False
    compare_eager: bool = False
    compare_agents: list[int] | None = None
    startup_timeout: float = 900.0
    log_dir: str = "runs/bench-logs"
    client_processes: int = 1  # spread the agents over this many client processes (N = 64-256 on a GPU)
    min_run_seconds: float = MIN_RUN_SECONDS  # a shorter run is marked "not a measurement", not read as a ratio

    def checked_scenarios(self) -> list[str]:
        """The scenarios to run, with ``churn-none`` (churn's own baseline) added when churn is asked for."""
        scenarios = list(self.scenarios)
        if "churn" in scenarios and "churn-none" not in scenarios:
            scenarios.insert(scenarios.index("churn"), "churn-none")
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad:
            raise BenchError(f"unknown scenarios {bad}; choose from {SCENARIOS}", setting="scenarios")
        return scenarios

    def checked_temperature(self) -> float:
        return check_temperature(self.temperature)
