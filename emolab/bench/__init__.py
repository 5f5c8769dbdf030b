"""``emolab bench``: what steering costs, measured side by side in one run.

``load`` (the agents and scenarios), ``config`` (``BenchConfig``), ``servers`` (the servers the bench
starts), ``tables`` (medians and ratios: ``bench_frame``) and ``run`` (``run_bench(BenchConfig(...))``).
"""

from emolab.bench.config import BenchConfig, BenchError
from emolab.bench.load import SCENARIOS, RunResult
from emolab.bench.run import run_bench
from emolab.bench.tables import bench_frame, print_table, summarize_runs

__all__ = ["SCENARIOS", "BenchConfig", "BenchError", "RunResult", "bench_frame", "print_table", "run_bench",
           "summarize_runs"]
