"""Simulations and behavioural experiments: agents, scenarios, conditions, statistics (``docs/simulate.md``).

A spec file describes the experiment (``spec``); ``design`` multiplies it into conditions, counterbalanced
arms and trials; ``runner`` sends them to a steering server (``agents`` for multi-turn conversations)
and logs each one as it lands (``log``); ``readout`` reads the answers; ``analysis`` and ``report`` turn
the log into DataFrames, effects with CIs, plots and a markdown report.
"""

from emolab.simulate.analysis import trials_frame
from emolab.simulate.errors import SimulationError
from emolab.simulate.log import RunLog, read_trials
from emolab.simulate.report import RunAnalysis, analyze, write_report
from emolab.simulate.runner import run_experiment, run_experiment_async
from emolab.simulate.spec import ExperimentSpec, SpecError, shipped_specs

__all__ = [
    "ExperimentSpec", "RunAnalysis", "RunLog", "SimulationError", "SpecError", "analyze", "read_trials",
    "run_experiment", "run_experiment_async", "shipped_specs", "trials_frame", "write_report",
]
