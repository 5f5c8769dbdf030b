"""Evaluation: does steering read as the emotion (an independent judge), and at what fluency cost.

``judge`` (MiniLM + logistic regression, never the steering probe), ``metrics`` (text statistics,
perplexity, intervals, the alpha rule), ``sweep`` (generate every condition and score it) and
``report`` (summaries, tables, the one writer of a bundle's recommendations), ``controls`` and
``controls_report`` (add vs clamp vs scope per emotion beside a prompted baseline), ``effect_figures`` (the
reports' plots).
"""

from emolab.evaluate.controls import ControlsConfig, run_controls
from emolab.evaluate.report import markdown_tables, save_report, write_recommendations
from emolab.evaluate.sweep import DEFAULT_PROMPTS, EvalConfig, EvalError, run_eval

__all__ = ["DEFAULT_PROMPTS", "ControlsConfig", "EvalConfig", "EvalError", "markdown_tables", "run_controls",
           "run_eval", "save_report", "write_recommendations"]
