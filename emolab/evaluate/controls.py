"""``emolab eval --controls``: add vs clamp vs scope variants per emotion, beside a prompted baseline.

Per emotion, at the bundle's recommended alpha (``alpha_recommendations``, on its scale), every control
steers the same prompts (by default the held-out set); beside them run the unsteered model and the
**prompted** baseline (no steering: the emotion asked for in a system message, ``PROMPTED_INSTRUCTION``
with ``core.emotions.EMOTION_ADJECTIVES``). Every reply gets

* the judge (``evaluate.judge``): the paired shift of P(target) against the unsteered reply to the same
  prompt with a 95% bootstrap interval, and the hit rate (judge argmax = target);
* fluency under the unsteered model given the *plain* prompt (median perplexity, degenerate rate), for
  the prompted replies too, so every condition is read the same way;
* instruction relevance: the cosine of the reply's and the prompt's sentence embeddings (the judge's own
  MiniLM encoder), paired per prompt with the same cosine of the unsteered reply: the sum over prompts of the
  steered cosines over the sum of the unsteered ones (1 = as on-topic as the unsteered replies; a ratio of
  sums, since a ratio per prompt explodes where an unsteered reply's cosine is near 0), with a paired
  bootstrap interval over prompts.

A control is written ``MODE[:LEVEL][@SCOPE]`` (``Control.parse``): ``add`` (the recommended alpha added),
``clamp:LEVEL`` (the projection on the emotion's direction held at LEVEL x |b_e,L| at each of its layers) or
``ablate``; scope ``all`` (default), ``prompt`` or ``generated``. A clamp LEVEL is ``same`` (the recommended
alpha itself), ``matched`` (the default: the level plain ``add`` holds the projection at, ``calibrate_levels``),
``matched*K`` or a number on the alpha scale. The report and its rule for adopting a control are in
``evaluate.controls_report``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emolab.core.emotions import DEFAULT_EMOTIONS, EMOTION_ADJECTIVES
from emolab.core.steering import SCOPES, Steering
from emolab.evaluate.generation import score
from emolab.evaluate.metrics import bootstrap_ratio_ci
from emolab.evaluate.prompting import encode_prompts, resolve_style, stage_prompts
from emolab.evaluate.selection import Limits, summarize
from emolab.evaluate.sweep import EvalError, bundle_and_emotions, default_prompts
from emolab.evaluate.tune_bundle import goal_checks

__all__ = ["DEFAULT_CONTROLS", "PROMPTED_INSTRUCTION", "PROMPTED_OPENING", "Control", "ControlsConfig",
           "calibrate_levels", "run_controls"]

DEFAULT_CONTROLS = ("add", "add@prompt", "add@generated", "clamp:same", "clamp:matched", "clamp:matched@generated",
                    "clamp:matched*1.5", "clamp:matched*1.5@generated")
# The emotion asked for, as `emolab simulate`'s prompted condition asks (simulate.spec's default emotion_prompt):
# a system message for a chat model; for a model that continues texts, a first-person line before the text.
PROMPTED_INSTRUCTION = "Right now you feel very {adjective}, and it colours how you see everything."
PROMPTED_OPENING = "Right now I feel very {adjective}, and it colours how I see everything."

_CONTROL = re.compile(r"(add|clamp|ablate)(?::([^@]+))?(?:@(\w+))?")
_LEVEL = re.compile(r"(same|matched)(?:\*([0-9]*\.?[0-9]+))?")


@dataclass(frozen=True)
class Control:
    """One way to steer an emotion: ``mode`` (add, clamp, ablate), a clamp's ``level`` spec, a ``scope``."""

    mode: str
    level: str = ""  # clamp only: "same", "matched", "matched*K" or a number
    scope: str = "all"

    @classmethod
    def parse(cls, text: str) -> Control:
        found = _CONTROL.fullmatch(text.strip().lower())
        if found is None:
            raise EvalError(f"control {text!r} is not MODE[:LEVEL][@SCOPE] with MODE add, clamp or ablate",
                            setting="controls")
        mode, level, scope = found.group(1), (found.group(2) or "").strip(), found.group(3) or "all"
        if scope not in SCOPES:
            raise EvalError(f"control {text!r}: scope must be one of {list(SCOPES)}", setting="controls")
        if mode != "clamp" and level:
            raise EvalError(f"control {text!r}: only clamp takes a level (add uses the recommended alpha)",
                            setting="controls")
        if mode == "clamp":
            level = level or "matched"
            if _LEVEL.fullmatch(level) is None:
                try:
                    float(level)
                except ValueError:
                    raise EvalError(f"control {text!r}: a clamp level is same, matched, matched*K or a number",
                                    setting="controls") from None
        return cls(mode, level, scope)

    @property
    def name(self) -> str:
        return self.mode + (f":{self.level}" if self.level else "") + ("" if self.scope == "all" else f"@{self.scope}")

    @property
    def needs_matched(self) -> bool:
        return self.level.startswith("matched")

    def level_of(self, alpha: float, matched: float | None) -> float | None:
        """The number a clamp holds (alpha units), the alpha an add adds, None for an ablation."""
        if self.mode == "add":
            return float(alpha)
        if self.mode == "ablate":
            return None
        found = _LEVEL.fullmatch(self.level)
        if found is None:
            return float(self.level)
        base = float(alpha) if found.group(1) == "same" else matched
        if base is None:
            raise EvalError(f"{self.name} needs the matched level (calibrate_levels)", setting="controls")
        return round(base * float(found.group(2) or 1.0), 4)

    def steering(self, emotion_id: int, value: float | None) -> Steering:
        if self.mode == "add":
            return Steering(((emotion_id, float(value)),), scope=self.scope)
        if self.mode == "clamp":
            return Steering(((emotion_id, float(value)),), ((emotion_id, "clamp"),), self.scope)
        return Steering((), ((emotion_id, "ablate"),), self.scope)


@dataclass
class ControlsConfig:
    model: str = "smollm2"
    bundle: str = "vectors/smollm2"
    emotions: list[str] | None = None  # None: all of the bundle's
    controls: list[str] = field(default_factory=lambda: list(DEFAULT_CONTROLS))
    prompted: bool = True  # the prompted-emotion baseline beside the controls
    prompt_set: str = "heldout"  # builtin, tune or heldout (of the prompt style); with `prompts`, only their label
    prompts: list[str] | None = None  # given prompts (a file's) instead of a set
    n_prompts: int | None = None  # the first N
    prompt_style: str = "auto"  # chat | continuation | auto (prompting.resolve_style)
    calibration_prompts: int = 8  # the first N *tuning* prompts calibrate the matched clamp level
    max_new_tokens: int = 40
    batch_size: int = 64
    seed: int = 0
    limits: Limits = field(default_factory=Limits)
    judge_train_per_class: int = 500
    judge_test_per_class: int = 200
    dtype: str = "float32"
    device: str = "cpu"


def _progress(progress: Any, line: str) -> None:
    if progress:
        progress(line)


def calibrate_levels(model: Any, tokenizer: Any, steerer: Any, alphas: dict[str, float], prompts: list[str],
                     max_new_tokens: int, style: str = "chat") -> dict[str, dict[str, Any]]:
    """Per emotion, where plain ``add`` at ``alphas[e]`` holds the projection on e's direction, in alpha units.

    Read at every generated token of ``prompts`` (tuning prompts: no held-out text decides a level), at each of
    the emotion's layers after its own addition there (the readout's projection before it, plus the alpha), as
    a multiple of |b_e,L|, the length one alpha unit adds at L; ``matched`` is the mean over layers and tokens,
    ``natural`` the same mean for the unsteered model. A clamp at ``matched`` holds, at every layer and token,
    the level the addition reaches on average, without its dependence on the context.
    """
    from emolab.steer import generate

    bundle = steerer.bundle
    lengths = np.linalg.norm(bundle.steering_basis(steerer.alpha_scale), axis=2)  # [chosen layers, n]
    ids = encode_prompts(tokenizer, prompts, style)
    groups = [None, *alphas]  # None: unsteered
    steerings = [None if e is None else Steering(((bundle.emotions.index(e), float(alphas[e])),))
                 for e in groups for _ in ids]
    seen: list[np.ndarray] = []  # per generated forward: [chosen layers, rows, n]
    current: dict[int, np.ndarray] = {}

    def readout(index: int, projections: Any) -> None:
        if projections.shape[1] > 1:  # the prompt's forward
            return
        current[index] = projections[:, -1].float().cpu().numpy()
        if len(current) == len(bundle.chosen_layers):
            seen.append(np.stack([current[i] for i in range(len(bundle.chosen_layers))]))
            current.clear()

    conts = generate(model, tokenizer, ids * len(groups), steerer=steerer, steerings=steerings,
                     max_new_tokens=max_new_tokens, batch_size=len(steerings), on_readout=readout)
    stack = np.stack(seen) if seen else np.zeros((0, len(bundle.chosen_layers), len(steerings), len(bundle.emotions)))
    out: dict[str, dict[str, Any]] = {}
    for emotion in alphas:
        k = bundle.emotions.index(emotion)
        where = [bundle.chosen_layers.index(layer) for layer in bundle.layers_of(emotion)]
        scale = lengths[where, k]
        mine = range(groups.index(emotion) * len(ids), (groups.index(emotion) + 1) * len(ids))
        matched = _held(stack, conts, mine, where, k, scale) + float(alphas[emotion])
        natural = _held(stack, conts, range(len(ids)), where, k, scale)
        out[emotion] = {"matched": round(float(matched.mean()), 4), "natural": round(float(natural.mean()), 4),
                        "layers": bundle.layers_of(emotion), "matched_per_layer": matched.mean(axis=0).round(3).tolist(),
                        "natural_per_layer": natural.mean(axis=0).round(3).tolist()}
    return out


def _held(stack: np.ndarray, conts: list[list[int]], rows: range, where: list[int], k: int,
          scale: np.ndarray) -> np.ndarray:
    """``[tokens, layers]``: emotion k's projection before steering at each of ``where``, in alpha units, at every
    generated token of ``rows`` (forward j feeds generated token j-1, so a row's first len(continuation))."""
    parts = [stack[:min(len(conts[r]), stack.shape[0]), where, r, k] / scale for r in rows]
    return np.concatenate(parts) if parts else np.zeros((0, len(where)))


def run_controls(config: ControlsConfig, model: Any = None, tokenizer: Any = None, judge: Any = None,
                 progress: Any = print) -> dict[str, Any]:
    """Generate, judge and score every control per emotion and the baselines; return the report (JSON-able)."""
    from emolab.core.models import chat_prompt_ids, load_model
    from emolab.evaluate.controls_report import adoption
    from emolab.evaluate.judge import JudgeConfig, load_or_train_judge
    from emolab.steer import HFSteerer, generate

    began = time.perf_counter()
    bundle, emotions = bundle_and_emotions(config.bundle, config.emotions)
    recs = bundle.metadata.get("alpha_recommendations") or {}
    missing = [e for e in emotions if recs.get(e) is None]
    if missing:
        raise EvalError(f"the bundle recommends no alpha for {missing}: the controls are compared at the "
                        "recommended alpha (emolab tune or emolab eval --write-recommendations write them)",
                        setting="bundle")
    controls = _unique([Control.parse(c) for c in config.controls])
    if not controls:
        raise EvalError("name at least one control", setting="controls")
    if config.prompted and any(e not in EMOTION_ADJECTIVES for e in emotions):
        raise EvalError(f"no adjective to ask for {[e for e in emotions if e not in EMOTION_ADJECTIVES]} "
                        "in the prompted baseline", setting="emotions")
    if config.prompts is None and config.prompt_set not in ("builtin", "tune", "heldout"):
        raise EvalError(f"unknown prompt set {config.prompt_set!r}; choose builtin, tune or heldout",
                        setting="prompt_set")
    scale = bundle.resolve_alpha_scale(bundle.metadata.get("alpha_recommendations_scale"))
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    style = resolve_style(config.prompt_style, tokenizer)
    if config.prompts is not None:
        prompts = list(config.prompts)
    else:
        prompts = default_prompts(style) if config.prompt_set == "builtin" else stage_prompts(style, config.prompt_set)
    if config.n_prompts is not None:
        if not 1 <= config.n_prompts <= len(prompts):
            raise EvalError(f"only {len(prompts)} prompts available, asked for {config.n_prompts}", setting="n_prompts")
        prompts = prompts[:config.n_prompts]
    if not prompts:
        raise EvalError("need at least one prompt", setting="prompts")
    if judge is None:
        judge = load_or_train_judge(
            JudgeConfig(max_train_per_class=config.judge_train_per_class,
                        max_test_per_class=config.judge_test_per_class),
            list(DEFAULT_EMOTIONS) + [e for e in bundle.emotions if e not in DEFAULT_EMOTIONS])
    steerer = HFSteerer(model, bundle, alpha_scale=scale)
    alphas = {e: float(recs[e]) for e in emotions}
    timings: dict[str, float] = {}

    calibration: dict[str, dict[str, Any]] = {}
    if any(c.needs_matched for c in controls):
        t0 = time.perf_counter()
        tune = stage_prompts(style, "tune")[:config.calibration_prompts]
        _progress(progress, f"calibrating the matched clamp level on {len(tune)} tuning prompts")
        calibration = calibrate_levels(model, tokenizer, steerer, alphas, tune, config.max_new_tokens, style)
        timings["calibrate_s"] = round(time.perf_counter() - t0, 1)

    plain = encode_prompts(tokenizer, prompts, style)
    conditions: list[dict[str, Any]] = [{"emotion": None, "control": "unsteered", "mode": None, "scope": None,
                                         "value": None}]
    row_ids: list[list[int]] = list(plain)
    row_steerings: list[Steering | None] = [None] * len(prompts)
    for emotion in emotions:
        k = bundle.emotions.index(emotion)
        if config.prompted:
            adjective = EMOTION_ADJECTIVES[emotion]
            if style == "chat":
                instruction = PROMPTED_INSTRUCTION.format(adjective=adjective)
                row_ids += [chat_prompt_ids(tokenizer, [{"role": "system", "content": instruction},
                                                        {"role": "user", "content": p}]) for p in prompts]
            else:
                instruction = PROMPTED_OPENING.format(adjective=adjective)
                row_ids += encode_prompts(tokenizer, [f"{instruction} {p}" for p in prompts], style)
            conditions.append({"emotion": emotion, "control": "prompted", "mode": None, "scope": None, "value": None,
                               "instruction": instruction})
            row_steerings += [None] * len(prompts)
        for control in controls:
            value = control.level_of(alphas[emotion], calibration.get(emotion, {}).get("matched"))
            conditions.append({"emotion": emotion, "control": control.name, "mode": control.mode,
                               "scope": control.scope, "value": value})
            row_ids += plain
            row_steerings += [control.steering(k, value)] * len(prompts)
    n = len(prompts)
    _progress(progress, f"controls: {len(conditions)} conditions x {n} prompts, {config.max_new_tokens} tokens")
    t0 = time.perf_counter()
    conts = generate(model, tokenizer, row_ids, steerer=steerer, steerings=row_steerings,
                     max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                     progress=(lambda line: _progress(progress, line)) if progress else None)
    timings["generate_s"] = round(time.perf_counter() - t0, 1)
    timings["generated_tokens"] = int(sum(len(c) for c in conts))
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in conts]
    arrays, score_timings = score(texts, plain * len(conditions), conts, model=model, judge=judge, batch_size=16,
                                  embeddings=True)
    timings.update({k: round(v, 1) for k, v in score_timings.items()})
    prompt_vectors = judge.encoder.encode(prompts)
    cosine = np.einsum("nh,nh->n", arrays.pop("embedding"), np.tile(prompt_vectors, (len(conditions), 1)))

    judge_emotions = list(judge.emotions)
    parts = [{key: value[i * n:(i + 1) * n] for key, value in arrays.items()} for i in range(len(conditions))]
    base = summarize(parts[0], None, None, judge_emotions)
    base_cosine = cosine[:n]
    base["cosine"] = float(base_cosine.mean())
    rows = []
    for i, condition in enumerate(conditions[1:], start=1):
        row = summarize(parts[i], parts[0], judge_emotions.index(condition["emotion"]), judge_emotions, config.seed)
        own = cosine[i * n:(i + 1) * n]
        low, high = bootstrap_ratio_ci(own, base_cosine, seed=config.seed)
        row.update(condition, alpha=alphas[condition["emotion"]], relevance=float(own.sum() / base_cosine.sum()),
                   relevance_ci95=[low, high], cosine=float(own.mean()))
        row["checks"] = goal_checks(row, base, config.limits)
        rows.append(row)
    report: dict[str, Any] = {
        "kind": "controls", "model": config.model, "bundle": str(config.bundle), "scale": scale,
        "emotions": emotions, "controls": [c.name for c in controls], "prompted": config.prompted,
        "prompt_set": config.prompt_set, "prompt_style": style, "n_prompts": n,
        "config": {**asdict(config), "prompts": None if config.prompts is None else len(config.prompts)},
        "judge": {"test_auc": judge.test_auc, **judge.info}, "recommended_alpha": alphas,
        "calibration": calibration, "baseline": base, "rows": rows, "limits": config.limits.as_dict(),
        "conditions": [{"emotion": c["emotion"], "control": c["control"], "texts": texts[i * n:(i + 1) * n]}
                       for i, c in enumerate(conditions)],
        "prompts": prompts,
    }
    report["adoption"] = adoption(report)
    timings["total_s"] = round(time.perf_counter() - began, 1)
    report["timings"] = timings
    return report


def _unique(controls: Sequence[Control]) -> list[Control]:
    return list(dict.fromkeys(controls))
