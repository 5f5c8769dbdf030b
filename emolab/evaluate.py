"""``emolab eval``: does steering move an independent judge, and what does it cost in fluency?

For each emotion and alpha of a sweep (plus the unsteered baseline) the model continues a fixed set
of neutral prompts, through transformers in-process or through a running emolab server. Every
continuation gets:

* the judge's probabilities of the six Ekman emotions (``emolab.judge``: MiniLM + logistic
  regression, never the steering probe);
* its perplexity under the *unsteered* model, given the prompt;
* distinct-1/2 (unique word n-grams / all word n-grams) and a degeneration flag.

Per emotion the largest alpha that stays fluent is recommended (``recommend_alpha``) and can be
written into the bundle's metadata as ``alpha_recommendations``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emolab.bundle import EmotionBundle

# Neutral, varied requests: chores, facts, instructions, small talk, descriptions. Nothing in them
# asks for or implies an emotion, so any emotion in the answer comes from steering.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Describe what you did this morning.",
    "Tell me about the weather today.",
    "Write a short note to a colleague saying the meeting moved to Thursday.",
    "What do you think about the new bus schedule?",
    "Describe the room you are sitting in.",
    "Tell me about your neighbour's dog.",
    "How was the train ride to work?",
    "Write two sentences about a walk in the park.",
    "What happened at the grocery store yesterday?",
    "Describe a typical Monday at the office.",
    "Tell me about the letter that arrived today.",
    "What did you think of the movie last night?",
    "Describe the view from your window.",
    "Write a short message to your landlord about the heating.",
    "How did the job interview go?",
    "Tell me about your sister's visit.",
    "Describe the last meal you cooked.",
    "What was the phone call about?",
    "Tell me how the football match ended.",
    "Write a few lines about the old house on the corner.",
    "What did the doctor say at your appointment?",
    "Describe your trip to the city last weekend.",
    "Tell me about the package you opened this afternoon.",
    "How are things going with the new project?",
)

WORD = re.compile(r"\w+|[^\w\s]")


# ------------------------------------------------------------------------------------ metrics
def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks (so ``!!!!`` counts as four repeats)."""
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: list[str], n: int) -> float:
    """Unique n-grams / all n-grams; 0.0 when the text has no n-gram at all."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_fraction(tokens: list[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier one (``1 - distinct_n``; 0.0 for texts under n words)."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(tokens: list[str], n: int = 4, max_repeated: float = 0.3, min_words: int = 3) -> bool:
    """Degenerate: under ``min_words`` words, or more than ``max_repeated`` of its word 4-grams repeats.

    Fluent 40-token answers almost never repeat a 4-gram; a steered model that loops
    (``so sad so sad so sad ...``) repeats most of them.
    """
    return len(tokens) < min_words or repeated_fraction(tokens, n) > max_repeated


def continuation_perplexity(
    model, prompt_ids: list[list[int]], continuation_ids: list[list[int]], batch_size: int = 16,
) -> list[float]:
    """``exp(mean NLL)`` of each continuation given its prompt, under ``model`` as it is (unsteered).

    Rows are right-padded: real tokens keep positions 0..n-1 and never attend to the padding.
    An empty continuation gets ``nan``.
    """
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start:start + batch_size]
        conts = continuation_ids[start:start + batch_size]
        seqs = [list(p) + list(c) for p, c in zip(prompts, conts, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for row, (p, c) in enumerate(zip(prompts, conts, strict=True)):
            if not c:
                out.append(float("nan"))
                continue
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)  # logits at t predict token t+1
            nll = -logprobs[row, positions, torch.tensor(c)].double().mean()
            out.append(float(torch.exp(nll)))
    return out


def recommend_alpha(
    alphas: list[float], ppl: list[float], degenerate: list[float], baseline_ppl: float, baseline_degenerate: float,
    ppl_factor: float = 2.0, degenerate_tolerance: float = 0.1,
) -> float | None:
    """The largest positive alpha such that it and every smaller positive alpha stay fluent.

    Fluent: median perplexity at most ``ppl_factor`` x the baseline's, and a degenerate-continuation
    rate at most ``degenerate_tolerance`` above the baseline's. ``None`` if even the smallest fails.
    """
    best = None
    for alpha, p, d in sorted(zip(alphas, ppl, degenerate, strict=True)):
        if alpha <= 0:
            continue
        if not (p <= ppl_factor * baseline_ppl and d <= baseline_degenerate + degenerate_tolerance):
            break
        best = float(alpha)
    return best


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# --------------------------------------------------------------------------------- generation
@dataclass
class EvalConfig:
    model: str = "smollm2"
    bundle: str = "vectors/smollm2"
    emotions: list[str] | None = None  # None: all of the bundle's
    alphas: list[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0])
    scale: str | None = None  # raw | normalized; None: the bundle's default (metadata alpha_scale)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 40
    samples: int = 1  # >1 samples at `temperature`; 1 with temperature 0 is greedy
    temperature: float = 0.0
    batch_size: int = 64
    seed: int = 0
    server: str | None = None  # base URL of an emolab server (its own --alpha-scale applies)
    served_model: str | None = None  # model name to send to the server (default: its first model)
    ppl_factor: float = 2.0
    degenerate_tolerance: float = 0.1
    judge_train_per_class: int = 500
    judge_test_per_class: int = 200
    dtype: str = "float32"
    device: str = "cpu"


def user_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a one-message chat, tokenized the way the servers do."""
    from emolab.models import chat_prompt_ids

    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}]) for prompt in prompts]


def _stop_ids(model, tokenizer) -> set[int]:
    stops = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    stops.update(eos if isinstance(eos, list) else [eos])
    return {int(t) for t in stops if t is not None}


def generate_hf(
    model, tokenizer, steerer, prompt_ids: list[list[int]], coeffs: np.ndarray | None, config: EvalConfig,
    progress: bool = False,
) -> list[list[int]]:
    """Continuation token ids (stop token excluded), one per row of ``prompt_ids``.

    ``coeffs`` is ``None``, ``[n_emotions]`` for every row, or ``[rows, n_emotions]``: one steering per
    row, so many conditions share one batch (far faster on CPU than a batch per condition).
    """
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _stop_ids(model, tokenizer)
    sampling = config.samples > 1 or config.temperature > 0
    kwargs: dict[str, Any] = dict(max_new_tokens=config.max_new_tokens, pad_token_id=pad, do_sample=sampling)
    if sampling:
        kwargs.update(temperature=config.temperature or 0.7, top_p=1.0, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    per_row = coeffs is not None and np.asarray(coeffs).ndim == 2
    torch.manual_seed(config.seed)
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), config.batch_size):
        t0 = time.perf_counter()
        batch = prompt_ids[start:start + config.batch_size]
        width = max(len(r) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding: every row's last prompt token is at the end
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        chunk = np.asarray(coeffs)[start:start + len(batch)] if per_row else coeffs
        with torch.inference_mode(), steerer.steer(chunk):
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row in generated[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
        if progress:
            print(f"generated {start + len(batch)}/{len(prompt_ids)} rows ({time.perf_counter() - t0:.1f}s)", flush=True)
    return out


def generate_server(
    config: EvalConfig, prompts: list[str], emotion_id: int | None, alpha: float,
) -> list[str]:
    """Continuations from a running server (OpenAI chat API, steering in ``vllm_xargs``)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=config.server.rstrip("/") + "/v1", api_key="emolab")
    name = config.served_model or client.models.list().data[0].id
    extra = {"vllm_xargs": {"steering": [emotion_id, alpha]}} if emotion_id is not None and alpha else {}

    def one(job: tuple[int, str]) -> str:
        sample, prompt = job
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}], max_tokens=config.max_new_tokens,
            temperature=config.temperature, seed=config.seed + sample, extra_body=extra,
        )
        return reply.choices[0].message.content or ""

    jobs = [(s, p) for p in prompts for s in range(config.samples)]
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(one, jobs))


# ------------------------------------------------------------------------------------ the run
def run_eval(config: EvalConfig, model=None, tokenizer=None, judge=None, progress: bool = True) -> dict[str, Any]:
    """Generate, judge and score the whole sweep; return the report (JSON-able)."""
    from emolab.hf_steer import HFSteerer
    from emolab.judge import JudgeConfig, load_or_train_judge
    from emolab.models import load_model

    t_start = time.perf_counter()
    bundle = EmotionBundle.load(config.bundle, load_full_sweep=False)
    emotions = list(config.emotions or bundle.emotions)
    unknown = [e for e in emotions if e not in bundle.emotions]
    if unknown:
        raise ValueError(f"--emotions: {unknown} not in the bundle's emotions {bundle.emotions}")
    alphas = sorted({float(a) for a in config.alphas if a != 0})
    if not alphas:
        raise ValueError("--alphas: give at least one non-zero alpha (the unsteered baseline is always run)")
    if len(config.prompts) < 1:
        raise ValueError("--prompts: need at least one prompt")
    scale = config.scale or bundle.alpha_scale
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    steerer = None
    if config.server is None:
        steerer = HFSteerer(model, bundle, basis=bundle.steering_basis(scale))
    if judge is None:
        judge = load_or_train_judge(
            JudgeConfig(max_train_per_class=config.judge_train_per_class, max_test_per_class=config.judge_test_per_class),
            list(bundle.emotions) if len(bundle.emotions) >= 2 else None,
        )
    prompt_ids = user_prompt_ids(tokenizer, config.prompts)
    rows_prompt_ids = [ids for ids in prompt_ids for _ in range(config.samples)]

    conditions: list[tuple[str | None, float]] = [(None, 0.0)] + [(e, a) for e in emotions for a in alphas]
    n_rows = len(rows_prompt_ids)  # rows per condition: prompts x samples
    t0 = time.perf_counter()
    if config.server is None:
        coeffs = np.zeros((len(conditions) * n_rows, len(bundle.emotions)), dtype=np.float32)
        for k, (emotion, alpha) in enumerate(conditions):
            if emotion is not None:
                coeffs[k * n_rows:(k + 1) * n_rows, bundle.emotions.index(emotion)] = alpha
        all_ids = generate_hf(model, tokenizer, steerer, rows_prompt_ids * len(conditions), coeffs, config, progress)
        all_texts = [tokenizer.decode(c, skip_special_tokens=True) for c in all_ids]
    else:
        all_texts = []
        for emotion, alpha in conditions:
            emotion_id = None if emotion is None else bundle.emotions.index(emotion)
            all_texts += generate_server(config, config.prompts, emotion_id, alpha)
        all_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in all_texts]
    timings = {"generate_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    all_ppl = continuation_perplexity(model, rows_prompt_ids * len(conditions), all_ids, batch_size=config.batch_size)
    timings["perplexity_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    all_proba = judge.predict_proba(all_texts)
    timings["judge_s"] = round(time.perf_counter() - t0, 1)
    results: list[dict[str, Any]] = []
    for k, (emotion, alpha) in enumerate(conditions):
        part = slice(k * n_rows, (k + 1) * n_rows)
        texts, cont_ids = all_texts[part], all_ids[part]
        toks = [words(t) for t in texts]
        results.append({
            "emotion": emotion, "alpha": alpha, "texts": texts, "judge": all_proba[part].round(5).tolist(),
            "perplexity": [round(p, 4) for p in all_ppl[part]], "n_tokens": [len(c) for c in cont_ids],
            "distinct_1": [round(distinct_n(t, 1), 4) for t in toks],
            "distinct_2": [round(distinct_n(t, 2), 4) for t in toks],
            "degenerate": [bool(is_degenerate(t)) for t in toks],
        })
    report = summarize(results, judge, emotions, alphas, config)
    report["scale"] = scale if config.server is None else "server"
    report["bundle"] = str(config.bundle)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["timings"] = timings
    report["conditions"] = results
    return report


def summarize(results: list[dict], judge, emotions: list[str], alphas: list[float], config: EvalConfig) -> dict[str, Any]:
    """Per (emotion, alpha): judge means and shifts, fluency, recommendation and the confusion matrix."""
    base = results[0]
    base_proba = np.asarray(base["judge"])
    base_ppl = float(np.nanmedian(base["perplexity"]))
    base_deg = float(np.mean(base["degenerate"]))
    jidx = {e: i for i, e in enumerate(judge.emotions)}

    def stats(res: dict) -> dict[str, Any]:
        proba = np.asarray(res["judge"])
        toks = [words(t) for t in res["texts"]]
        pooled = [g for t in toks for g in ngrams(t, 2)]
        return {
            "judge_mean": dict(zip(judge.emotions, np.round(proba.mean(axis=0), 4).tolist(), strict=True)),
            "perplexity_median": round(float(np.nanmedian(res["perplexity"])), 3),
            "distinct_1": round(float(np.mean(res["distinct_1"])), 4),
            "distinct_2": round(float(np.mean(res["distinct_2"])), 4),
            "distinct_2_pooled": round(len(set(pooled)) / len(pooled), 4) if pooled else 0.0,
            "degenerate_rate": round(float(np.mean(res["degenerate"])), 4),
            "mean_tokens": round(float(np.mean(res["n_tokens"])), 2),
        }

    per_emotion: dict[str, Any] = {}
    recommendations: dict[str, float | None] = {}
    for emotion in emotions:
        t = jidx[emotion]
        rows = [r for r in results[1:] if r["emotion"] == emotion]
        curve = []
        for r in rows:
            s = stats(r)
            diff = np.asarray(r["judge"])[:, t] - base_proba[:, t]
            lo, hi = bootstrap_ci(diff, seed=config.seed)
            s.update(
                alpha=r["alpha"],
                target=round(float(np.mean(np.asarray(r["judge"])[:, t])), 4),
                target_delta=round(float(diff.mean()), 4),
                target_delta_ci95=[round(lo, 4), round(hi, 4)],
                hit_rate=round(float(np.mean(np.asarray(r["judge"]).argmax(axis=1) == t)), 4),
                off_target_delta={
                    e: round(float(np.mean(np.asarray(r["judge"])[:, i] - base_proba[:, i])), 4)
                    for e, i in jidx.items() if e != emotion
                },
            )
            curve.append(s)
        rec = recommend_alpha(
            [c["alpha"] for c in curve], [c["perplexity_median"] for c in curve], [c["degenerate_rate"] for c in curve],
            base_ppl, base_deg, config.ppl_factor, config.degenerate_tolerance,
        )
        recommendations[emotion] = rec
        at_rec = next((c for c in curve if c["alpha"] == rec), None)
        moved_at = [c["alpha"] for c in curve if c["target_delta_ci95"][0] > 0]
        per_emotion[emotion] = {
            "curve": curve,
            "recommended_alpha": rec,
            "moved_at_recommended": bool(at_rec and at_rec["target_delta_ci95"][0] > 0),
            "alphas_where_judge_moved": moved_at,
        }
    baseline = stats(base)
    baseline["target_hit_rate"] = {e: round(float(np.mean(base_proba.argmax(axis=1) == i)), 4) for e, i in jidx.items()}
    return {
        "emotions": emotions,
        "alphas": alphas,
        "n_prompts": len(config.prompts),
        "config": asdict(config),
        "judge": {"test_auc": judge.test_auc, **judge.info},
        "baseline": baseline,
        "per_emotion": per_emotion,
        "alpha_recommendations": recommendations,
        "confusion": confusion(per_emotion, judge.emotions, emotions),
        "rule": (
            f"largest alpha > 0 such that it and every smaller alpha keep median continuation perplexity "
            f"<= {config.ppl_factor} x baseline and degenerate rate <= baseline + {config.degenerate_tolerance}"
        ),
    }


def confusion(per_emotion: dict[str, Any], judge_emotions: list[str], emotions: list[str]) -> dict[str, Any]:
    """Mean judge probabilities (columns) when steering each emotion (rows) at its chosen alpha.

    The chosen alpha is the recommended one, else the smallest of the sweep.
    """
    matrix, chosen = [], []
    for emotion in emotions:
        curve = per_emotion[emotion]["curve"]
        alpha = per_emotion[emotion]["recommended_alpha"]
        alpha = alpha if alpha is not None else min(c["alpha"] for c in curve)
        row = next(c for c in curve if c["alpha"] == alpha)
        matrix.append([row["judge_mean"][j] for j in judge_emotions])
        chosen.append(alpha)
    return {"rows": emotions, "columns": judge_emotions, "alpha": chosen, "matrix": matrix}


# ----------------------------------------------------------------------------- write & print
def write_recommendations(bundle_path: str | Path, report: dict[str, Any]) -> Path:
    """Put ``alpha_recommendations`` (+ its scale and an eval summary) into the bundle's metadata.json.

    Only these keys change; vectors and every other key stay as they are. Emotions without a fluent
    alpha are left out of ``alpha_recommendations``.
    """
    path = Path(bundle_path) / "metadata.json"
    metadata = json.loads(path.read_text())
    recs = {e: a for e, a in report["alpha_recommendations"].items() if a is not None}
    metadata["alpha_recommendations"] = recs
    metadata["alpha_recommendations_scale"] = report["scale"]
    metadata["steering_eval"] = {
        "judge_test_auc_macro": report["judge"]["test_auc"]["macro"],
        "rule": report["rule"],
        "alphas": report["alphas"],
        "n_prompts": report["n_prompts"],
        "max_new_tokens": report["config"]["max_new_tokens"],
        "baseline_perplexity_median": report["baseline"]["perplexity_median"],
        "target_delta_at_recommended": {
            e: next((c["target_delta"] for c in v["curve"] if c["alpha"] == v["recommended_alpha"]), None)
            for e, v in report["per_emotion"].items()
        },
        "moved_at_recommended": {e: v["moved_at_recommended"] for e, v in report["per_emotion"].items()},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    tmp.replace(path)
    return path


def markdown_tables(report: dict[str, Any]) -> str:
    """The report's numbers as Markdown tables (what docs/steering-effect.md shows)."""
    lines = []
    base = report["baseline"]
    lines.append(f"Baseline (unsteered): median perplexity {base['perplexity_median']}, "
                 f"degenerate rate {base['degenerate_rate']}, distinct-2 {base['distinct_2']}, "
                 f"judge means {base['judge_mean']}.\n")
    lines.append("| emotion | alpha | P(target) | Δ vs baseline [95% CI] | hit rate | largest off-target Δ | "
                 "median ppl | distinct-2 | pooled distinct-2 | degenerate |")
    lines.append("|---|---:|---:|---|---:|---|---:|---:|---:|---:|")
    for emotion, info in report["per_emotion"].items():
        for c in info["curve"]:
            off = max(c["off_target_delta"].items(), key=lambda kv: abs(kv[1]))
            mark = " **(rec.)**" if c["alpha"] == info["recommended_alpha"] else ""
            lines.append(
                f"| {emotion} | {c['alpha']:g}{mark} | {c['target']:.3f} | {c['target_delta']:+.3f} "
                f"[{c['target_delta_ci95'][0]:+.3f}, {c['target_delta_ci95'][1]:+.3f}] | {c['hit_rate']:.2f} | "
                f"{off[0]} {off[1]:+.3f} | {c['perplexity_median']:.1f} | {c['distinct_2']:.2f} | "
                f"{c['distinct_2_pooled']:.2f} | {c['degenerate_rate']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def save_report(report: dict[str, Any], output: str | Path, plots: bool = True) -> Path:
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / "tables.md").write_text(markdown_tables(report))
    if plots:
        from emolab.effect_plots import save_all

        save_all(report, folder)
    return folder


# ---------------------------------------------------------------------------------------- CLI
def add_eval(sub: argparse._SubParsersAction) -> None:
    from emolab.cli import number_list, positive_int

    p = sub.add_parser("eval", help="measure what steering does: independent judge, fluency, recommended alphas")
    p.add_argument("--model", default="smollm2", help="model to steer (and to score perplexity with)")
    p.add_argument("--bundle", default="vectors/smollm2", help="bundle folder")
    p.add_argument("--emotions", default=None, help="comma-separated subset (default: all of the bundle's)")
    p.add_argument("--alphas", type=number_list("--alphas"), default=[0.5, 1.0, 1.5, 2.0],
                   help="comma-separated sweep; 0 (unsteered) is always added as the baseline")
    p.add_argument("--alpha-scale", choices=["raw", "normalized"], default=None,
                   help="alpha scale for in-process steering (default: the bundle's alpha_scale, else raw)")
    p.add_argument("--prompts", type=positive_int("--prompts"), default=None,
                   help=f"use the first N built-in neutral prompts (default all {len(DEFAULT_PROMPTS)})")
    p.add_argument("--prompts-file", default=None, help="one prompt per line instead of the built-in ones")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=40)
    p.add_argument("--samples", type=positive_int("--samples"), default=1, help="samples per prompt (>1 samples)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", default=None, help="base URL of a running emolab server (else in-process transformers)")
    p.add_argument("--served-model", default=None, help="model name sent to the server")
    p.add_argument("--ppl-factor", type=float, default=2.0, help="recommendation: max perplexity / baseline")
    p.add_argument("--judge-train-per-class", type=positive_int("--judge-train-per-class"), default=500)
    p.add_argument("--judge-test-per-class", type=positive_int("--judge-test-per-class"), default=200)
    p.add_argument("--output", default=None, help="folder for report.json, tables.md and plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--write-recommendations", action="store_true",
                   help="write alpha_recommendations into the bundle's metadata.json")
    p.set_defaults(func=run_eval_cli)


def run_eval_cli(args: argparse.Namespace) -> int:
    from emolab.cli import UsageError

    if args.prompts_file:
        try:
            prompts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"--prompts-file: {exc}") from None
        if not prompts:
            raise UsageError(f"--prompts-file: {args.prompts_file} holds no prompt")
    else:
        prompts = list(DEFAULT_PROMPTS)
    if args.prompts:
        if args.prompts > len(prompts):
            raise UsageError(f"--prompts: only {len(prompts)} prompts available, asked for {args.prompts}")
        prompts = prompts[:args.prompts]
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if args.ppl_factor <= 1:
        raise UsageError("--ppl-factor must be > 1")
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()] if args.emotions else None
    config = EvalConfig(
        model=args.model, bundle=args.bundle, emotions=emotions, alphas=args.alphas, scale=args.alpha_scale,
        prompts=prompts, max_new_tokens=args.max_new_tokens, samples=args.samples, temperature=args.temperature,
        batch_size=args.batch_size, seed=args.seed, server=args.server, served_model=args.served_model,
        ppl_factor=args.ppl_factor, judge_train_per_class=args.judge_train_per_class,
        judge_test_per_class=args.judge_test_per_class,
    )
    report = run_eval(config)
    output = args.output or f"runs/eval-{Path(args.bundle).name}"
    save_report(report, output, plots=not args.no_plots)
    print(markdown_tables(report))
    print(f"judge test ROC-AUC (macro): {report['judge']['test_auc']['macro']}")
    print(f"alpha_recommendations ({report['scale']} scale): {report['alpha_recommendations']}")
    if args.write_recommendations:
        print(f"wrote recommendations into {write_recommendations(args.bundle, report)}")
    print(f"report in {output}")
    return 0
