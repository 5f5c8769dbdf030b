"""The design of an experiment: its conditions, counterbalanced arms, and the trials they multiply into.

Conditions: an unsteered ``control``; per emotion and alpha ``steered``; per emotion ``prompted`` (the
same emotion asked for in the system prompt: the baseline steering must beat); and ``steered+prompted``.
Alphas are multiples of the server's recommended alpha (``alpha_unit: recommended``) or raw alphas.

Arms (choice experiments): every option is shown first equally often (cyclic orders), and under
``counterbalance: full`` each order is shown with the labels forwards and backwards, so the label a
model likes ("A") and the position it likes (first) can be told apart from what the options mean.

A trial is one request: condition x persona x arm x seed. Its ``trial_id`` is a hash of those, so a
resumed run knows exactly which trials it still owes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from emolab.core.emotions import EMOTION_ADJECTIVES
from emolab.simulate.spec import ExperimentSpec, SpecError

__all__ = ["Arm", "Condition", "Trial", "arms", "conditions", "emotion_instruction", "fill", "render_messages",
           "resolve_alpha", "sampling_kwargs", "trial_id", "trials"]


@dataclass(frozen=True)
class Condition:
    name: str  # "control", "steered:fear@2", "prompted:fear", "steered+prompted:fear@1"
    kind: str  # control | steered | prompted | steered+prompted
    emotion: str | None = None
    multiple: float = 0.0  # the spec's alpha (a multiple of the recommended alpha, or raw)
    alpha: float = 0.0  # the alpha sent to the server

    @property
    def steered(self) -> bool:
        return self.kind in ("steered", "steered+prompted")

    @property
    def prompted(self) -> bool:
        return self.kind in ("prompted", "steered+prompted")

    def steering(self, level: float = 1.0) -> dict[str, float] | None:
        """The request's steering at ``level`` times this condition's alpha (None: unsteered)."""
        if not self.steered or level == 0:
            return None
        return {self.emotion: self.alpha * level}


def resolve_alpha(spec: ExperimentSpec, emotion: str, multiple: float, recommended: dict[str, float]) -> float:
    if spec.conditions.alpha_unit == "raw":
        return multiple
    if emotion not in recommended:
        raise SpecError(f"the server recommends no alpha for {emotion!r} on its scale (it recommends: "
                        f"{', '.join(recommended) or 'none'}); use alpha_unit: raw", "conditions.alpha_unit")
    return round(multiple * float(recommended[emotion]), 6)


def conditions(spec: ExperimentSpec, server_emotions: list[str], recommended: dict[str, float]) -> list[Condition]:
    """Every condition of the spec, checked against the server's emotions (control first, unless left out)."""
    c = spec.conditions
    for i, emotion in enumerate(c.emotions):
        if emotion not in server_emotions and (c.steered or c.steered_prompted):
            raise SpecError(f"the server's bundle has no {emotion!r} (it has {', '.join(server_emotions)})",
                            f"conditions.emotions[{i}]")
    out = [Condition("control", "control")] if c.control else []
    for emotion in c.emotions:
        if c.prompted:
            out.append(Condition(f"prompted:{emotion}", "prompted", emotion))
        for multiple in c.alphas:
            label = f"{multiple:g}"
            if c.steered:
                out.append(Condition(f"steered:{emotion}@{label}", "steered", emotion, multiple,
                                     resolve_alpha(spec, emotion, multiple, recommended)))
            if c.steered_prompted:
                out.append(Condition(f"steered+prompted:{emotion}@{label}", "steered+prompted", emotion, multiple,
                                     resolve_alpha(spec, emotion, multiple, recommended)))
    if not out:
        raise SpecError("no condition left: enable control, steered, prompted or steered_prompted", "conditions")
    return out


def emotion_instruction(spec: ExperimentSpec, emotion: str) -> str:
    return fill(spec.conditions.emotion_prompt, emotion=emotion, adjective=EMOTION_ADJECTIVES.get(emotion, emotion))


def fill(template: str, **values: str) -> str:
    """``{name}`` placeholders filled in; any other brace (JSON in a prompt, say) is left as written."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


@dataclass(frozen=True)
class Arm:
    order: tuple[str, ...]  # option ids in the order shown
    labels: tuple[str, ...]  # the label shown beside each position

    @property
    def label_to_option(self) -> dict[str, str]:
        return dict(zip(self.labels, self.order, strict=True))


def arms(spec: ExperimentSpec) -> list[Arm]:
    """The counterbalanced presentations of a choice experiment (one plain arm for the other kinds)."""
    if spec.kind != "choice":
        return [Arm((), ())]
    options, labels = list(spec.options), tuple(spec.labels)
    if spec.counterbalance == "none":
        return [Arm(tuple(options), labels)]
    orders = [tuple(options[i:] + options[:i]) for i in range(len(options))]
    directions = [labels, tuple(reversed(labels))] if spec.counterbalance == "full" else [labels]
    return [Arm(order, direction) for direction in directions for order in orders]


@dataclass(frozen=True)
class Trial:
    trial_id: str
    condition: Condition
    persona_index: int
    arm_index: int
    arm: Arm
    seed: int
    messages: tuple[dict[str, str], ...]


def trial_id(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def render_messages(spec: ExperimentSpec, condition: Condition, persona: str, arm: Arm) -> tuple[dict[str, str], ...]:
    """The chat messages of one trial: system (persona, and the emotion asked for when prompted), user (the decision),
    and with an ``answer_prefix`` the assistant's reply begun."""
    system = fill(spec.system, persona=persona) if spec.system else (f"You are {persona}." if persona else "")
    if condition.prompted:
        system = f"{system} {emotion_instruction(spec, condition.emotion)}".strip()
    prompt = fill(spec.prompt, persona=persona)
    if spec.kind == "choice":
        shown = "\n".join(fill(spec.option_format, label=label, text=spec.options[option])
                          for label, option in zip(arm.labels, arm.order, strict=True))
        prompt = prompt.replace("{options}", shown)
        for label, option in zip(arm.labels, arm.order, strict=True):  # "{label:safe}" names an option's label
            prompt = prompt.replace(f"{{label:{option}}}", label)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if spec.answer_prefix:  # the reply's first words: the model continues this message (sampling_kwargs says so)
        messages.append({"role": "assistant", "content": fill(spec.answer_prefix, persona=persona)})
    return tuple(messages)


def trials(spec: ExperimentSpec, conds: list[Condition]) -> list[Trial]:
    """Every trial of a choice or number experiment, in a random order (seeded by ``order_seed``)."""
    if spec.kind == "conversation":
        raise SpecError("conversation experiments run turn by turn (simulate.agents)", "kind")
    out = []
    for condition in conds:
        for p, persona in enumerate(spec.personas):
            for a, arm in enumerate(arms(spec)):
                for seed in spec.seeds:
                    parts = {"experiment": spec.name, "condition": condition.name, "persona": p, "arm": a, "seed": seed}
                    out.append(Trial(trial_id(parts), condition, p, a, arm, seed,
                                     render_messages(spec, condition, persona, arm)))
    random.Random(spec.order_seed).shuffle(out)
    return out


def sampling_kwargs(spec: ExperimentSpec, seed: int, logprobs: bool) -> dict[str, Any]:
    """What every request of a trial asks for: the spec's sampling, the trial's seed, logprobs when wanted."""
    kwargs: dict[str, Any] = dict(max_tokens=spec.sampling.max_tokens, temperature=spec.sampling.temperature,
                                  top_p=spec.sampling.top_p, seed=seed)
    if logprobs and spec.sampling.top_logprobs > 0:
        kwargs.update(logprobs=True, top_logprobs=spec.sampling.top_logprobs)
    if spec.answer_prefix:  # vLLM's chat fields (the HF backend reads them too): continue the prefilled reply
        kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
    return kwargs
