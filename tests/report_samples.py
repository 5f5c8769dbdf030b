"""Reports with made-up numbers in the shapes emolab's report writers take (eval sweep, tune, controls comparison):
the frame, Markdown and plot tests and the Markdown image-link test write them with the real writers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from emolab.evaluate.report import summarize_conditions
from emolab.evaluate.selection import Limits
from emolab.evaluate.tune_bundle import goal_checks

__all__ = ["JUDGE_EMOTIONS", "controls_report", "eval_report", "tune_report"]

JUDGE_EMOTIONS = ["anger", "joy", "sadness", "neutral"]


def eval_report() -> dict:
    """A report of ``summarize_conditions`` on made-up judge probabilities, perplexities and texts."""
    from emolab.evaluate.sweep import EvalConfig

    rng = np.random.default_rng(3)
    n = 12
    config = EvalConfig(emotions=["anger", "joy"], alphas=[1.0, 2.0, 4.0], prompts=[f"p{i}" for i in range(n)])
    judge = SimpleNamespace(emotions=JUDGE_EMOTIONS, test_auc={"macro": 0.91}, info={"kind": "made up"})

    def result(emotion, alpha):
        proba = rng.dirichlet(np.ones(len(JUDGE_EMOTIONS)), size=n)
        if emotion is not None:
            proba[:, JUDGE_EMOTIONS.index(emotion)] += 0.1 * alpha
            proba /= proba.sum(axis=1, keepdims=True)
        return {"emotion": emotion, "alpha": alpha, "judge": proba.tolist(),
                "texts": [" ".join(rng.choice(["a", "b", "c", "!"], size=6)) for _ in range(n)],
                "perplexity": (5 + alpha * rng.random(n) * 3).tolist(),
                "degenerate": (rng.random(n) < 0.05 * alpha).tolist(), "distinct_1": rng.random(n).tolist(),
                "distinct_2": rng.random(n).tolist(), "n_tokens": rng.integers(10, 40, n).tolist()}

    results = [result(None, 0.0)] + [result(e, a) for e in config.emotions for a in config.alphas]
    report = summarize_conditions(results, judge, config.emotions, config.alphas, config)
    report["scale"] = "normalized"
    return report


def _judge_mean(rng, emotions) -> dict:
    values = rng.dirichlet(np.ones(len(emotions)))
    return {e: float(v) for e, v in zip(emotions, values, strict=True)}


def _row(rng, emotion, alpha, candidate, layers=(3, 4, 5)):
    delta = float(rng.uniform(-0.05, 0.5))
    return {"emotion": emotion, "source": "meandiff-mean", "layers": list(layers), "alpha": alpha,
            "candidate": candidate, "push": alpha * len(layers), "n": 8, "delta": delta,
            "delta_ci95": [delta - 0.07, delta + 0.06], "hit_rate": float(rng.uniform(0, 1)),
            "ppl_median": float(rng.uniform(2, 6)), "degenerate": float(rng.choice([0, 0.125, 0.25])),
            "question": float(rng.choice([0, 0.125]))}


def tune_report() -> dict:
    """A tune report's shape (search, confirm, held-out, demo), with made-up numbers."""
    rng = np.random.default_rng(5)
    emotions = ["anger", "joy", "surprise"]
    base = {"n": 8, "ppl_median": 2.5, "degenerate": 0.0, "question": 0.125, "argmax_counts": {"joy": 3, "anger": 5},
            "judge_mean": _judge_mean(rng, emotions)}
    timings = {"generate_s": 3.0, "tok_per_s": 100.0, "perplexity_s": 1.0, "judge_s": 2.0}

    def stage(n_prompts):
        rows = [_row(rng, e, a, k, layers) for e in emotions for k, layers in enumerate([(3, 4, 5), (6,)])
                for a in (0.2, 0.4, 0.8)]
        return {"baseline": dict(base), "rows": rows, "n_prompts": n_prompts, "timings": timings}

    rows = {}
    for emotion in emotions:
        row = _row(rng, emotion, 0.4, 0)
        row.update(recipe={"source": "meandiff-mean"}, checks=goal_checks(row, base, Limits()),
                   judge_mean=_judge_mean(rng, emotions), target=base["judge_mean"][emotion] + row["delta"],
                   examples=[{"prompt": "hi", "baseline": "b", "steered": "s", "p_target_baseline": 0.1,
                              "p_target_steered": 0.6}])
        rows[emotion] = row
    heldout = {"n_prompts": 8, "baseline": dict(base), "rows": rows,
               "demo": [{"steering": "none", "reply": "a | b", "judge_top": "neutral", "judge_top_p": 0.7},
                        {"steering": "joy 0.4", "reply": "yay", "judge_top": "joy", "judge_top_p": 0.9}],
               "mean_delta": float(np.mean([r["delta"] for r in rows.values()])), "timings": {"vllm_tok_per_s": 1e3}}
    config = {"variants": ["plain"], "windows": "3-5,6", "pushes": [0.6, 1.2], "search_prompts": 8, "confirm_top": 2,
              "max_new_tokens": 16, "backend": "hf", "limits": Limits().as_dict()}
    return {"config": config, "emotions": emotions, "n_candidates": 2, "search": stage(8), "confirm": stage(16),
            "heldout": heldout, "timings": {"total_s": 600.0, "search": timings, "confirm": timings,
                                            "heldout": heldout["timings"]}}


def controls_report() -> dict:
    """A controls comparison's shape (``evaluate.controls.run_controls``): unsteered baseline, per emotion the
    prompted baseline and each control, the calibration, and the adoption by the real rule."""
    from emolab.evaluate.controls_report import adoption

    rng = np.random.default_rng(11)
    emotions, controls = ["anger", "joy"], ["add", "add@generated", "clamp:matched", "clamp:matched@generated"]
    base = {"n": 12, "ppl_median": 2.2, "degenerate": 0.0, "question": 0.0, "distinct_2": 0.95, "mean_tokens": 40.0,
            "judge_mean": _judge_mean(rng, JUDGE_EMOTIONS), "cosine": 0.45}
    rows = []
    for emotion in emotions:
        for control in ["prompted", *controls]:
            delta = float(rng.uniform(-0.05, 0.5))
            relevance = float(rng.uniform(0.6, 1.05))
            mode = None if control == "prompted" else control.split(":")[0].split("@")[0]
            row = {"n": 12, "emotion": emotion, "control": control, "mode": mode,
                   "scope": None if mode is None else (control.split("@")[1] if "@" in control else "all"),
                   "value": None if mode is None else (0.3 if mode == "add" else 1.7), "alpha": 0.3,
                   "target": 0.2 + delta, "delta": delta, "delta_ci95": [delta - 0.08, delta + 0.07],
                   "hit_rate": float(rng.uniform(0, 1)), "ppl_median": float(rng.uniform(2.0, 6.0)),
                   "degenerate": float(rng.choice([0.0, 0.083, 0.25])), "question": 0.0, "distinct_2": 0.9,
                   "mean_tokens": 39.0, "judge_mean": _judge_mean(rng, JUDGE_EMOTIONS), "relevance": relevance,
                   "relevance_ci95": [relevance - 0.1, relevance + 0.08], "cosine": 0.45 * relevance}
            row["checks"] = goal_checks(row, base, Limits())
            rows.append(row)
    report = {"kind": "controls", "model": "smollm2", "bundle": "b", "scale": "normalized", "emotions": emotions,
              "controls": controls, "prompted": True, "prompt_set": "heldout", "n_prompts": 12,
              "config": {"max_new_tokens": 40, "calibration_prompts": 8}, "recommended_alpha": {"anger": 0.3, "joy": 0.3},
              "calibration": {e: {"matched": 1.7, "natural": -0.4, "layers": [3, 4], "matched_per_layer": [1.5, 1.9],
                                  "natural_per_layer": [-0.5, -0.3]} for e in emotions},
              "baseline": base, "rows": rows, "limits": Limits().as_dict()}
    report["adoption"] = adoption(report)
    return report
