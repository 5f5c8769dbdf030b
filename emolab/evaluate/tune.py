"""``run_tune``: choose each emotion's vector source, layers and alpha by measured steering effect.

1. **search**: every candidate (source x variant x layer window, ``candidates``) at every push
   (alpha x number of layers) on the first ``search_prompts`` tuning prompts, in one batch;
2. **confirm**: per emotion the ``confirm_top`` best conditions (and the best one's next smaller
   alpha, a safer fallback) again on all tuning prompts; the winner is picked by
   ``selection.choose`` under the tighter selection limits;
3. the winners become a new bundle (per-emotion layers, normalized scale, recommendations, recipe);
4. **held-out**: that bundle, as served, at each emotion's recommended alpha on the disjoint
   held-out prompts (and the demo prompt): the numbers the bundle records in ``steering_eval``.

The judge is ``emolab.evaluate.judge`` (MiniLM + logistic regression), never the extraction probe.
Nothing is chosen on held-out prompts. The output folder must be new or untracked: a tune never
writes into a committed bundle. A model with a chat template is tuned on user turns, one without
(a base model) on texts it continues (``emolab.evaluate.prompting``; ``prompt_style``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emolab.core.bundle import EmotionBundle
from emolab.core.tracked import refuse_tracked
from emolab.evaluate.candidates import Candidate, TuneError, build_candidates, grid_bundle, parse_windows, source_name
from emolab.evaluate.generation import generate_requests, pick_backend, score
from emolab.evaluate.prompting import encode_prompts, prompt_file, resolve_style, stage_prompts
from emolab.evaluate.selection import SELECTION_RULE, Limits, choose, score_of, summarize
from emolab.evaluate.tune_bundle import heldout_eval, tuned_bundle

__all__ = ["TuneConfig", "evaluate_tuned", "run_tune"]


@dataclass
class TuneConfig:
    sources: list[str]  # bundle folders with a full sweep (one per vector method)
    output: str
    model: str = "smollm2"
    emotions: list[str] | None = None
    windows: str = "12-14,13,10-18,16-18"
    pushes: list[float] = field(default_factory=lambda: [1.5, 2.25, 3.0, 3.75])  # alpha x layers in the window
    variants: list[str] = field(default_factory=lambda: ["plain"])
    search_prompts: int = 24  # the first N tuning prompts
    confirm_top: int = 3
    confirm_prompts: int | None = None  # None: every tuning prompt
    heldout_prompts: int | None = None  # None: every held-out prompt
    max_new_tokens: int = 40
    backend: str = "auto"
    prompt_style: str = "auto"  # chat | continuation | auto (chat when the tokenizer has a chat template)
    limits: Limits = field(default_factory=Limits)
    selection_limits: Limits | None = None  # None: limits.tighter()
    heldout: bool = True
    compare_hf: bool = False  # held-out stage: also generate with the HF loop (tok/s, identical texts)
    seed: int = 0
    threads: int = 1
    batch_size: int = 64
    judge_train_per_class: int = 500
    judge_test_per_class: int = 200
    dtype: str = "float32"
    device: str = "cpu"


def _log(progress: Any, text: str) -> None:
    if progress:
        progress(text)


def run_tune(config: TuneConfig, progress: Any = print, model: Any = None, tokenizer: Any = None,
             judge: Any = None) -> dict[str, Any]:
    """Search, confirm, write the tuned bundle to ``config.output``, evaluate it held-out; return the report."""
    began = time.perf_counter()
    timings: dict[str, float] = {}
    output = Path(config.output)
    sources: dict[str, EmotionBundle] = {}
    folders: dict[str, str] = {}
    for folder in config.sources:
        if output.resolve() == Path(folder).resolve():
            raise TuneError("the output folder is an input bundle; write the tuned bundle to a new folder",
                            setting="output")
        bundle = EmotionBundle.load(folder)
        name = source_name(bundle.metadata)
        name = name if name not in sources else f"{name}-{len(sources)}"
        sources[name], folders[name] = bundle, str(folder)
    refuse_tracked(output)
    first = next(iter(sources.values()))
    emotions = list(config.emotions or first.emotions)
    windows = parse_windows(config.windows)
    candidates = build_candidates(sources, emotions, windows, list(config.variants))
    if len(candidates) > 250:
        raise TuneError(f"{len(candidates)} candidates is more than one grid holds (250); fewer windows or variants",
                        setting="windows")
    if not config.pushes or min(config.pushes) <= 0:
        raise TuneError("pushes must be positive numbers", setting="pushes")
    from emolab.core.models import resolve_model

    backend = pick_backend(config.backend, resolve_model(config.model))
    select_limits = config.selection_limits or config.limits.tighter()

    t0 = time.perf_counter()
    runner = _runner(config, backend, first, progress, model, tokenizer, judge)
    timings["load_s"] = time.perf_counter() - t0
    tune_prompts = stage_prompts(runner.style, "tune")
    if not 1 <= config.search_prompts <= len(tune_prompts):
        raise TuneError(f"search prompts must be 1..{len(tune_prompts)}", setting="search_prompts")

    # 1. search
    conditions = [(None, 0.0)] + sorted({(k, round(p / len(c.layers), 4)) for k, c in enumerate(candidates)
                                          for p in config.pushes}, key=lambda kc: (kc[0], kc[1]))
    _log(progress, f"search: {len(candidates)} candidates, {len(conditions)} conditions x {config.search_prompts} "
                   f"tuning prompts ({backend}, {runner.style} prompts)")
    search = runner.run_grid(candidates, conditions, tune_prompts[:config.search_prompts], "search")
    # 2. confirm: the search's few prompts pre-select within the ordinary limits (one degenerate text of 8 is
    # 0.125, past the tighter selection limit); the tighter ones decide on the confirm prompts.
    picks: list[tuple[int, float]] = [(None, 0.0)]  # type: ignore[list-item]
    for emotion in emotions:
        rows = [r for r in search["rows"] if r["emotion"] == emotion]
        inside = sorted([r for r in rows if config.limits.within(r, search["baseline"])], key=score_of, reverse=True)
        rest = sorted([r for r in rows if r not in inside], key=lambda r: config.limits.excess(r, search["baseline"]))
        chosen = (inside + rest)[:config.confirm_top]
        picks += [(r["candidate"], r["alpha"]) for r in chosen]
        if chosen:  # a safer fallback: the best one's next smaller alpha
            lower = [r for r in rows if r["candidate"] == chosen[0]["candidate"] and r["alpha"] < chosen[0]["alpha"]]
            if lower:
                fallback = max(lower, key=lambda r: r["alpha"])
                if (fallback["candidate"], fallback["alpha"]) not in picks:
                    picks.append((fallback["candidate"], fallback["alpha"]))
    confirm_set = tune_prompts[:config.confirm_prompts] if config.confirm_prompts else tune_prompts
    _log(progress, f"confirm: {len(picks) - 1} conditions x {len(confirm_set)} tuning prompts")
    confirm = runner.run_grid(candidates, picks, confirm_set, "confirm")
    winners = {}
    for emotion in emotions:
        best = choose([r for r in confirm["rows"] if r["emotion"] == emotion], confirm["baseline"], select_limits)
        if best is None:
            raise TuneError(f"no condition was measured for {emotion}")
        winners[emotion] = (candidates[best["candidate"]], best)
        _log(progress, f"  {emotion}: {best['key']} at {best['alpha']:g}: delta {best['delta']:+.3f}, hit "
                       f"{best['hit_rate']:.2f}, ppl {best['ppl_median']:.2f}, degenerate {best['degenerate']:.2f}")
    # 3. the tuned bundle, 4. held-out
    settings = {k: v for k, v in asdict(config).items() if k not in ("limits", "selection_limits")}
    settings.update(limits=config.limits.as_dict(), selection_limits=select_limits.as_dict(), backend=backend,
                    prompt_style=runner.style)
    record = {"settings": settings, "sources": folders, "selection_rule": SELECTION_RULE,
              "tuning_prompts": prompt_file(runner.style, "tune"), "tuning_baseline": _brief(confirm["baseline"])}
    bundle = tuned_bundle(first, winners, record, {n: b.metadata for n, b in sources.items()})
    bundle.save(output, save_full_sweep=False)
    report: dict[str, Any] = {"config": settings, "emotions": emotions, "n_candidates": len(candidates),
                              "search": _strip(search), "confirm": _strip(confirm),
                              "winners": {e: w[1] for e, w in winners.items()}}
    if config.heldout:
        heldout = stage_prompts(runner.style, "heldout")[:config.heldout_prompts or None]
        report["heldout"] = heldout_eval(runner, output, emotions, bundle, heldout, config.limits)
        bundle.metadata["steering_eval"] = report["heldout"]["steering_eval"]
        bundle.save(output, save_full_sweep=False)
    timings.update(search=search["timings"], confirm=confirm["timings"],
                   heldout=report.get("heldout", {}).get("timings"))
    timings["total_s"] = time.perf_counter() - began
    bundle.metadata["tuning"]["wall_s"] = round(timings["total_s"], 1)
    bundle.metadata["tuning"]["generation_tok_per_s"] = {
        "search": round(search["timings"]["tok_per_s"], 1), "confirm": round(confirm["timings"]["tok_per_s"], 1),
        **{k: round(v, 1) for k, v in (timings["heldout"] or {}).items() if k.endswith("tok_per_s")}}
    bundle.save(output, save_full_sweep=False)
    report["timings"] = timings
    report["bundle"] = str(output)
    return report


def evaluate_tuned(folder: str, config: TuneConfig, progress: Any = print) -> dict[str, Any]:
    """Only step 4: a tuned bundle (read, never written) at its recommended alphas on the held-out prompts.

    This is what docs/steering-effect.md reports for the committed bundle (``make effect``).
    """
    began = time.perf_counter()
    bundle = EmotionBundle.load(folder, load_full_sweep=False)
    missing = [e for e in bundle.emotions if e not in (bundle.metadata.get("alpha_recommendations") or {})
               or e not in (bundle.metadata.get("recipe") or {})]
    if missing:
        raise TuneError(f"{folder} has no tuned recipe and recommended alpha for {missing} (made by a tune)",
                        setting="bundle")
    from emolab.core.models import resolve_model

    runner = _runner(config, pick_backend(config.backend, resolve_model(config.model)), bundle, progress)
    heldout = stage_prompts(runner.style, "heldout")[:config.heldout_prompts or None]
    result = heldout_eval(runner, Path(folder), list(bundle.emotions), bundle, heldout, config.limits)
    return {"config": {**asdict(config), "limits": config.limits.as_dict()}, "bundle": str(folder),
            "recipe": bundle.metadata["recipe"], "heldout": result,
            "timings": {"heldout": result["timings"], "total_s": time.perf_counter() - began}}


def _runner(config: TuneConfig, backend: str, reference: EmotionBundle, progress: Any, model: Any = None,
            tokenizer: Any = None, judge: Any = None) -> _Runner:
    from emolab.core.models import load_model, resolve_model
    from emolab.evaluate.judge import JudgeConfig, load_or_train_judge

    model_path = resolve_model(config.model)
    if model is None:
        model, tokenizer = load_model(model_path, dtype=config.dtype, device=config.device)
    if judge is None:
        judge = load_or_train_judge(JudgeConfig(max_train_per_class=config.judge_train_per_class,
                                                max_test_per_class=config.judge_test_per_class),
                                    _judge_emotions(reference.emotions))
    return _Runner(config, backend, model_path, model, tokenizer, judge, reference, progress)


def _judge_emotions(emotions: list[str]) -> list[str]:
    """The judge's classes: the six default emotions plus any other the bundle steers, so that a tune and a
    later ``--evaluate`` of its (possibly smaller) bundle score with the same judge."""
    from emolab.core.emotions import DEFAULT_EMOTIONS

    return list(DEFAULT_EMOTIONS) + [e for e in emotions if e not in DEFAULT_EMOTIONS]


def _brief(base: dict[str, Any]) -> dict[str, Any]:
    return {k: base[k] for k in ("n", "ppl_median", "degenerate", "question", "judge_mean")}


def _strip(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k != "texts"}


class _Runner:
    """Generates and scores grids of conditions with one backend, model and judge."""

    def __init__(self, config: TuneConfig, backend: str, model_path: str, model: Any, tokenizer: Any, judge: Any,
                 reference: EmotionBundle, progress: Any) -> None:
        self.config, self.backend, self.model_path = config, backend, model_path
        self.model, self.tokenizer, self.judge, self.reference, self.progress = \
            model, tokenizer, judge, reference, progress
        self.style = resolve_style(config.prompt_style, tokenizer)  # chat | continuation

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, self.style)

    def generate(self, folder: Path, scale: str | None, prompt_ids: list[list[int]],
                 requests: list[tuple[int, str | None, float]], backend: str | None = None) -> tuple[list, dict]:
        from emolab.steer.generate import stop_token_ids

        return generate_requests(
            backend or self.backend, folder, scale, self.model_path, prompt_ids, requests,
            max_new_tokens=self.config.max_new_tokens, stop_ids=sorted(stop_token_ids(self.model, self.tokenizer)),
            model=self.model, tokenizer=self.tokenizer, batch_size=self.config.batch_size, threads=self.config.threads)

    def score(self, prompt_ids: list[list[int]], requests: list, conts: list[list[int]]) -> tuple[list, dict, dict]:
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in conts]
        arrays, timings = score(texts, [prompt_ids[p] for p, _, _ in requests], conts, model=self.model,
                                judge=self.judge, batch_size=16)
        return texts, arrays, timings

    def run_grid(self, candidates: list[Candidate], conditions: list[tuple[int | None, float]], prompts: list[str],
                 label: str) -> dict[str, Any]:
        """Every condition x prompt in one batch; rows of numbers per condition and the baseline's."""
        prompt_ids = self.prompt_ids(prompts)
        used = sorted({k for k, _ in conditions if k is not None})
        local = {k: i for i, k in enumerate(used)}
        requests = [(p, None if k is None else f"c{local[k]}", alpha) for k, alpha in conditions
                    for p in range(len(prompts))]
        with tempfile.TemporaryDirectory(prefix="emolab-tune-") as tmp:
            grid = grid_bundle([candidates[k] for k in used], self.reference.model, self.reference.num_layers)
            grid.save(Path(tmp) / "grid", save_full_sweep=False)
            conts, timings = self.generate(Path(tmp) / "grid", "raw", prompt_ids, requests)
        texts, arrays, score_timings = self.score(prompt_ids, requests, conts)
        timings.update(score_timings)
        n = len(prompts)
        judge_emotions = list(self.judge.emotions)
        sliced = [{key: value[i * n:(i + 1) * n] for key, value in arrays.items()} for i in range(len(conditions))]
        base = summarize(sliced[0], None, None, judge_emotions)
        rows = []
        for (k, alpha), part in zip(conditions[1:], sliced[1:], strict=True):
            cand = candidates[k]
            row = summarize(part, sliced[0], judge_emotions.index(cand.emotion), judge_emotions, self.config.seed)
            row.update(candidate=k, key=cand.key, emotion=cand.emotion, source=cand.source, layers=list(cand.layers),
                       alpha=alpha, push=round(alpha * len(cand.layers), 4))
            rows.append(row)
        tok_s = timings.get("generated_tokens", 0) / max(timings.get("generate_s", 1e-9), 1e-9)
        timings["tok_per_s"] = tok_s
        _log(self.progress, f"{label}: {len(conditions)} conditions x {n} prompts: generate "
                            f"{timings.get('generate_s', 0):.0f}s ({tok_s:.0f} tok/s), perplexity "
                            f"{timings['perplexity_s']:.0f}s, judge {timings['judge_s']:.0f}s")
        return {"baseline": base, "rows": rows, "timings": timings, "n_prompts": n,
                "texts": [texts[i * n:(i + 1) * n] for i in range(len(conditions))]}
