"""``emolab bench``: what steering costs, measured side by side in one run.

``load`` (the agents and scenarios), ``servers`` (the servers the bench starts), ``tables``
(medians and ratios) and ``run`` (``run_bench(BenchConfig(...))``).
"""

from emolab.bench.load import SCENARIOS, RunResult
from emolab.bench.run import BenchConfig, BenchError, run_bench
from emolab.bench.tables import print_table, summarize_runs

__all__ = ["SCENARIOS", "BenchConfig", "BenchError", "RunResult", "print_table", "run_bench", "summarize_runs"]
