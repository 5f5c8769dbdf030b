"""The eval sweep: does steering move an independent judge, and what does it cost in fluency?

For each emotion and alpha of a sweep (plus the unsteered baseline) the model continues a fixed set
of neutral prompts, through transformers in-process or through a running emolab server: user turns
through the chat template (``/v1/chat/completions``), or, for a model without one (a base model),
story openings it continues (``/v1/completions``; ``emolab.evaluate.prompting``). Every
continuation gets:

* the judge's probabilities of the six Ekman emotions (``emolab.evaluate.judge``: MiniLM + logistic
  regression, never the steering probe);
* its perplexity under the *unsteered* model, given the prompt;
* distinct-1/2 (unique word n-grams / all word n-grams) and a degeneration flag.

Per emotion the largest alpha that stays fluent is recommended (``recommend_alpha``) and can be
written into the bundle's metadata as ``alpha_recommendations``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emolab.core.bundle import EmotionBundle
from emolab.core.errors import EmolabError
from emolab.evaluate.generation import score
from emolab.evaluate.prompting import encode_prompts, resolve_style, stage_prompts
from emolab.evaluate.report import summarize_conditions

__all__ = ["DEFAULT_PROMPTS", "EvalConfig", "EvalError", "bundle_and_emotions", "default_prompts", "generate_server", "run_eval",
           "user_prompt_ids"]


class EvalError(EmolabError, ValueError):
    """Eval settings that cannot run."""

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
N_DEFAULT_CONTINUATIONS = 24  # continuation style: the first 24 continuation tuning prompts

@dataclass
class EvalConfig:
    model: str = "smollm2"
    bundle: str = "vectors/smollm2"
    emotions: list[str] | None = None  # None: all of the bundle's
    alphas: list[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0])
    scale: str | None = None  # raw | normalized; None: the bundle's default (metadata alpha_scale)
    prompts: list[str] | None = None  # None: default_prompts(style), or the style's `prompt_set`
    prompt_set: str | None = None  # "tune" or "heldout": that set of the prompt style (prompting.stage_prompts)
    n_prompts: int | None = None  # use the first N prompts
    prompt_style: str = "auto"  # chat | continuation | auto (chat when the tokenizer has a chat template)
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


def user_prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a one-message chat, tokenized the way the servers do."""
    return encode_prompts(tokenizer, prompts, "chat")


def default_prompts(style: str) -> list[str]:
    """The built-in prompts: ``DEFAULT_PROMPTS`` (chat), or the first continuation tuning prompts."""
    return list(DEFAULT_PROMPTS) if style == "chat" else stage_prompts("continuation", "tune")[:N_DEFAULT_CONTINUATIONS]


def generate_server(config: EvalConfig, prompts: list[str], steering: dict[str, float] | None,
                    style: str = "chat") -> list[str]:
    """Continuations from a running server (steering in ``vllm_xargs``), 8 at a time: chat turns through
    ``/v1/chat/completions``, or texts to continue through ``/v1/completions`` (``style="continuation"``)."""
    from concurrent.futures import ThreadPoolExecutor

    from emolab.api_client import SteeringClient

    client = SteeringClient(config.server or "", model=config.served_model)
    jobs = [(sample, prompt) for prompt in prompts for sample in range(config.samples)]

    def one(job: tuple[int, str]) -> str:
        sample, prompt = job
        ask = client.chat if style == "chat" else client.complete
        return ask(prompt, steering, max_tokens=config.max_new_tokens, temperature=config.temperature,
                   seed=config.seed + sample)

    try:
        with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
            return list(pool.map(one, jobs))
    finally:
        client.close()


def bundle_and_emotions(path: str | Path, emotions: Sequence[str] | None) -> tuple[EmotionBundle, list[str]]:
    """The bundle (without its sweep) and the emotions to measure: those asked for, else all of the bundle's;
    one not in the bundle is an ``EvalError`` naming the setting."""
    bundle = EmotionBundle.load(path, load_full_sweep=False)
    chosen = list(emotions or bundle.emotions)
    unknown = [e for e in chosen if e not in bundle.emotions]
    if unknown:
        raise EvalError(f"{unknown} are not among the bundle's emotions {bundle.emotions}", setting="emotions")
    return bundle, chosen


def run_eval(config: EvalConfig, model: Any = None, tokenizer: Any = None, judge: Any = None,
             progress: bool = True) -> dict[str, Any]:
    """Generate, judge and score the whole sweep; return the report (JSON-able)."""
    from emolab.core.models import load_model
    from emolab.evaluate.judge import JudgeConfig, load_or_train_judge
    from emolab.steer import HFSteerer, generate

    t_start = time.perf_counter()
    bundle, emotions = bundle_and_emotions(config.bundle, config.emotions)
    alphas = sorted({float(a) for a in config.alphas if a != 0})
    if not alphas:
        raise EvalError("give at least one non-zero alpha (the unsteered baseline is always run)", setting="alphas")
    if config.prompts is not None and len(config.prompts) < 1:
        raise EvalError("need at least one prompt", setting="prompts")
    scale = bundle.resolve_alpha_scale(config.scale)
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    style = resolve_style(config.prompt_style, tokenizer)
    if config.prompts is not None:
        prompts = list(config.prompts)
    else:
        prompts = stage_prompts(style, config.prompt_set) if config.prompt_set else default_prompts(style)
    if config.n_prompts is not None:
        if not 1 <= config.n_prompts <= len(prompts):
            raise EvalError(f"only {len(prompts)} prompts available, asked for {config.n_prompts}", setting="n_prompts")
        prompts = prompts[:config.n_prompts]
    config = replace(config, prompts=prompts, prompt_style=style)
    steerer = None
    if config.server is None:
        steerer = HFSteerer(model, bundle, alpha_scale=scale)
    if judge is None:
        judge = load_or_train_judge(
            JudgeConfig(max_train_per_class=config.judge_train_per_class, max_test_per_class=config.judge_test_per_class),
            list(bundle.emotions) if len(bundle.emotions) >= 2 else None,
        )
    prompt_ids = encode_prompts(tokenizer, prompts, style)
    rows_prompt_ids = [ids for ids in prompt_ids for _ in range(config.samples)]

    conditions: list[tuple[str | None, float]] = [(None, 0.0)] + [(e, a) for e in emotions for a in alphas]
    n_rows = len(rows_prompt_ids)  # rows per condition: prompts x samples
    t0 = time.perf_counter()
    if config.server is None:
        coeffs = np.zeros((len(conditions) * n_rows, len(bundle.emotions)), dtype=np.float32)
        for k, (emotion, alpha) in enumerate(conditions):
            if emotion is not None:
                coeffs[k * n_rows:(k + 1) * n_rows, bundle.emotions.index(emotion)] = alpha
        sampling = config.samples > 1 or config.temperature > 0
        all_ids = generate(
            model, tokenizer, rows_prompt_ids * len(conditions), steerer=steerer, coeffs=coeffs,
            max_new_tokens=config.max_new_tokens, temperature=(config.temperature or 0.7) if sampling else 0.0,
            top_p=1.0, top_k=0, seed=config.seed, batch_size=config.batch_size,
            progress=(lambda line: print(line, flush=True)) if progress else None,
        )
        all_texts = [tokenizer.decode(c, skip_special_tokens=True) for c in all_ids]
    else:
        all_texts = []
        for emotion, alpha in conditions:
            all_texts += generate_server(config, prompts, None if emotion is None else {emotion: alpha}, style)
        all_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in all_texts]
    timings = {"generate_s": round(time.perf_counter() - t0, 1)}
    scored, score_timings = score(all_texts, rows_prompt_ids * len(conditions), all_ids, model=model, judge=judge,
                                  batch_size=config.batch_size)
    timings.update({key: round(value, 1) for key, value in score_timings.items()})
    results: list[dict[str, Any]] = []
    for k, (emotion, alpha) in enumerate(conditions):
        part = slice(k * n_rows, (k + 1) * n_rows)
        results.append({
            "emotion": emotion, "alpha": alpha, "texts": all_texts[part],
            "judge": scored["proba"][part].round(5).tolist(),
            "perplexity": [round(float(p), 4) for p in scored["ppl"][part]],
            "n_tokens": scored["n_tokens"][part].tolist(),
            "distinct_1": [round(float(d), 4) for d in scored["distinct_1"][part]],
            "distinct_2": [round(float(d), 4) for d in scored["distinct_2"][part]],
            "degenerate": scored["degenerate"][part].tolist(),
        })
    report = summarize_conditions(results, judge, emotions, alphas, config)
    report["scale"] = scale if config.server is None else "server"
    report["prompt_style"] = style
    report["bundle"] = str(config.bundle)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["timings"] = timings
    report["conditions"] = results
    return report

