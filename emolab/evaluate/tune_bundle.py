"""The tuned bundle (winners -> per-emotion layers, normalized scale, recipe) and its held-out evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from emolab.core.bundle import NORMALIZED_FRACTION, EmotionBundle
from emolab.evaluate.prompting import DEMO_PROMPTS, prompt_file
from emolab.evaluate.selection import Limits, summarize

__all__ = ["DEMO_PROMPT", "GOAL", "goal_checks", "heldout_eval", "tuned_bundle"]

DEMO_PROMPT = DEMO_PROMPTS["chat"]  # emolab test-http's prompt
# The goal per emotion on held-out prompts, besides the fluency limits.
GOAL = {"delta": 0.15, "hit_rate": 0.4, "mean_delta": 0.30}
# Keys of the extraction metadata that described the probe's window choice, not the tuned bundle.
_STALE = ("chosen_layers", "best_start_idx_in_search", "window", "chosen_mean_auc", "alpha_recommendations",
          "alpha_recommendations_scale", "steering_eval", "emotion_layers", "alpha_scale", "validated_alpha_range")


def tuned_bundle(reference: EmotionBundle, winners: dict[str, tuple[Any, dict[str, Any]]],
                 record: dict[str, Any], source_meta: dict[str, dict[str, Any]]) -> EmotionBundle:
    """A bundle steering each emotion with its winning candidate at its own layers (zeros elsewhere).

    Vectors are stored at length 0.1 x residual norm (the normalized scale's unit), so raw and
    normalized alphas coincide; ``alpha_recommendations`` are the winners' alphas on that scale.
    """
    emotions = list(winners)
    union = sorted({layer for cand, _ in winners.values() for layer in cand.layers})
    hidden = next(iter(winners.values()))[0].vectors.shape[1]
    vectors, recipe = {}, {}
    for emotion, (cand, row) in winners.items():
        block = np.zeros((len(union), hidden), dtype=np.float32)
        for k, layer in enumerate(cand.layers):
            block[union.index(layer)] = cand.vectors[k]
        vectors[emotion] = block
        base_source, _, variant = cand.source.partition("/")
        meta = source_meta[base_source]
        recipe[emotion] = {
            "source": cand.source, "method": meta.get("method", "meandiff"), "positions": meta.get("positions", "last"),
            **({"pca": meta.get("pca"), "against": meta.get("against")} if meta.get("method") == "contrastive" else {}),
            **({"mean_skips": meta["mean_skips"]} if "mean_skips" in meta else {}),
            "variant": variant or "plain", "layers": list(cand.layers), "alpha": row["alpha"], "push": row["push"],
            "scale": "normalized",
            "tuning": {k: _round(row[k]) for k in ("delta", "delta_ci95", "hit_rate", "ppl_median", "degenerate",
                                                     "question", "n")},
        }
    metadata = {k: v for k, v in reference.metadata.items() if k not in _STALE}
    if metadata.get("auc_matrix") is not None:  # keep the columns of the tuned emotions
        columns = [reference.emotions.index(e) for e in emotions]
        metadata["auc_matrix"] = [[row[c] for c in columns] for row in metadata["auc_matrix"]]
    methods = {r["method"] for r in recipe.values()}
    metadata.update(
        emotion_layers={e: r["layers"] for e, r in recipe.items()},
        alpha_scale="normalized",
        alpha_recommendations={e: r["alpha"] for e, r in recipe.items()},
        alpha_recommendations_scale="normalized",
        method=methods.pop() if len(methods) == 1 else "per-emotion (see recipe)",
        normalization=f"each vector scaled to {NORMALIZED_FRACTION} x residual_norm at its layer (raw alpha = "
                      "normalized alpha)",
        recipe=recipe,
        tuning=record,
    )
    return EmotionBundle(emotions=emotions, chosen_layers=union, vectors=vectors, metadata=metadata)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def heldout_eval(runner: Any, folder: Path, emotions: list[str], bundle: EmotionBundle, prompts: list[str],
                 limits: Limits) -> dict[str, Any]:
    """The tuned bundle as served (its default scale, recommended alphas) on held-out prompts + the demo prompt
    (both in the runner's prompt style)."""
    demo_prompt = DEMO_PROMPTS[runner.style]
    all_prompts = [*prompts, demo_prompt]
    prompt_ids = runner.prompt_ids(all_prompts)
    alphas = bundle.metadata["alpha_recommendations"]
    conditions = [(None, 0.0)] + [(e, float(alphas[e])) for e in emotions]
    requests = [(p, name, alpha) for name, alpha in conditions for p in range(len(all_prompts))]
    conts, timings = runner.generate(folder, None, prompt_ids, requests)
    timings = {f"{runner.backend}_{k}": v for k, v in timings.items()}
    heldout_file = prompt_file(runner.style, "heldout")
    out: dict[str, Any] = {"n_prompts": len(prompts), "prompt_set": heldout_file.rsplit("/", 1)[-1],
                           "prompt_style": runner.style, "demo_prompt": demo_prompt}
    if runner.config.compare_hf and runner.backend != "hf":
        began = time.perf_counter()
        hf_conts, hf_timings = runner.generate(folder, None, prompt_ids, requests, backend="hf")
        timings.update({f"hf_{k}": v for k, v in hf_timings.items()})
        timings["hf_wall_s"] = time.perf_counter() - began
        out["hf_identical_share"] = float(np.mean([a == b for a, b in zip(conts, hf_conts, strict=True)]))
    for name in ("vllm", "hf"):
        if f"{name}_generate_s" in timings:
            timings[f"{name}_tok_per_s"] = timings[f"{name}_generated_tokens"] / max(timings[f"{name}_generate_s"], 1e-9)
    texts, arrays, score_timings = runner.score(prompt_ids, requests, conts)
    timings.update(score_timings)
    n, width = len(prompts), len(all_prompts)
    judge_emotions = list(runner.judge.emotions)
    parts = [{k: v[i * width:i * width + n] for k, v in arrays.items()} for i in range(len(conditions))]
    base = summarize(parts[0], None, None, judge_emotions)
    rows, picks = {}, [0, n // 3, 2 * n // 3]
    for i, (emotion, alpha) in enumerate(conditions[1:], start=1):
        row = summarize(parts[i], parts[0], judge_emotions.index(emotion), judge_emotions, runner.config.seed)
        row.update(emotion=emotion, alpha=alpha, layers=bundle.layers_of(emotion),
                   recipe=bundle.metadata["recipe"][emotion])
        row["checks"] = goal_checks(row, base, limits)
        row["examples"] = [{"prompt": prompts[p], "baseline": texts[p], "steered": texts[i * width + p],
                            "p_target_baseline": float(parts[0]["proba"][p, judge_emotions.index(emotion)]),
                            "p_target_steered": float(parts[i]["proba"][p, judge_emotions.index(emotion)])}
                           for p in picks]
        rows[emotion] = row
    demo = []
    for i, (emotion, alpha) in enumerate(conditions):
        proba = arrays["proba"][i * width + n]
        demo.append({"steering": "none" if emotion is None else f"{emotion} {alpha:g}", "reply": texts[i * width + n],
                     "judge_top": judge_emotions[int(np.argmax(proba))], "judge_top_p": float(np.max(proba))})
    mean_delta = float(np.mean([r["delta"] for r in rows.values()]))
    out.update(baseline=base, rows=rows, demo=demo, mean_delta=mean_delta, timings=timings,
               goal_met={e: all(r["checks"].values()) for e, r in rows.items()},
               mean_delta_met=mean_delta >= GOAL["mean_delta"])
    out["steering_eval"] = {
        "prompts": heldout_file, "prompt_style": runner.style, "n_prompts": n, "greedy": True,
        "max_new_tokens": runner.config.max_new_tokens, "scale": "normalized",
        "judge_test_auc_macro": runner.judge.test_auc.get("macro") if isinstance(runner.judge.test_auc, dict) else None,
        "limits": limits.as_dict(), "baseline": {k: _round(base[k]) for k in ("ppl_median", "degenerate", "question")},
        "per_emotion": {e: {k: _round(r[k]) for k in ("alpha", "layers", "delta", "delta_ci95", "hit_rate",
                                                        "ppl_median", "degenerate", "question")} for e, r in rows.items()},
        "mean_delta": round(mean_delta, 4),
    }
    return out


def goal_checks(row: dict[str, Any], base: dict[str, Any], limits: Limits) -> dict[str, bool]:
    """The goal's criteria for one emotion (the "?" share is checked for every emotion, required for surprise)."""
    return {
        "delta": row["delta"] >= GOAL["delta"] and row["delta_ci95"][0] > 0,
        "hit_rate": row["hit_rate"] >= GOAL["hit_rate"],
        "perplexity": row["ppl_median"] <= limits.ppl_factor * base["ppl_median"],
        "degenerate": row["degenerate"] <= base["degenerate"] + limits.degenerate_tolerance + 1e-9,
        "question": row["question"] <= base["question"] + limits.question_tolerance + 1e-9,
    }
