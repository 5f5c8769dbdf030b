"""The steering demo of ``notebooks/03_steer.ipynb``: generators and an ipywidgets panel.

A *generator* turns ``(prompt, {emotion: alpha})`` into a reply. Two exist: ``HFGenerator`` steers a
transformers model in this process (``emolab.steer``), ``ServerGenerator`` asks a running
``emolab serve`` through ``SteeringClient``. Both decode greedily and format the prompt with
the model's chat template the same way the server does, so in the same dtype (float32 here) they
give the same tokens, from the HF backend and the vLLM one alike (``ServerGenerator.reply`` returns
vLLM's token ids to show it). ``SteeringPanel`` is the UI: a prompt box, one alpha slider per
emotion (and per derived direction, valence and arousal, when the bundle has them) with a mode beside it
(add, ablate, clamp), a scope selector (every position, the prompt only, the generated tokens only), a
generate button, baseline and steered replies side by side.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import MODES, SCOPES, Steering, parse_modes, parse_scope

__all__ = ["DEFAULT_ALPHA_LIMIT", "DEFAULT_PROMPT", "Generator", "HFGenerator", "ServerGenerator", "ServedReply",
           "SteeringPanel", "alpha_range", "recommended_alphas", "slider_step"]

DEFAULT_ALPHA_LIMIT = 3.0  # slider bound when the bundle carries no validated_alpha_range
DEFAULT_PROMPT = "Write one sentence about your morning."


class Generator(Protocol):
    emotions: list[str]
    alpha_range: tuple[float, float]
    recommended: dict[str, float]

    def __call__(self, prompt: str, alphas: Mapping[str, float], modes: Mapping[str, str] | None = None,
                 scope: str = "all") -> str: ...


def alpha_range(info: Mapping[str, Any], limit: float = DEFAULT_ALPHA_LIMIT) -> tuple[float, float]:
    """Slider bounds from a bundle's metadata or a ``/v1/emotions`` payload.

    ``validated_alpha_range`` when recorded (the reference tool's bundles carry one); else, when the bundle
    recommends alphas on its scale, three times the largest of them (at least 1) so the useful part of the
    slider is not a sliver; else ``[-limit, limit]``; clipped to the server's ``max_alpha`` when known.
    """
    validated = info.get("validated_alpha_range")
    if validated is not None:
        low, high = (float(x) for x in validated)
        if not low < high:
            raise ValueError(f"validated_alpha_range {validated} is not an increasing pair")
        return low, high
    recommended = recommended_alphas(info)
    bound = max(1.0, 3 * max(abs(a) for a in recommended.values())) if recommended else limit
    bound = min(bound, limit)
    max_alpha = (info.get("limits") or {}).get("max_alpha")
    bound = min(bound, float(max_alpha)) if max_alpha else bound
    return -bound, bound


def slider_step(low: float, high: float) -> float:
    """A step that gives about 100-200 positions over the range: 0.01 up to a span of 2, else 0.05."""
    return 0.01 if high - low <= 2.0 else 0.05


def recommended_alphas(info: Mapping[str, Any], scale: str | None = None) -> dict[str, float]:
    """The bundle's ``alpha_recommendations`` when they are on ``scale`` (default: the bundle's or server's own
    ``alpha_scale``), else ``{}``: alphas in other units would mislead."""
    scale = scale or info.get("alpha_scale", "raw")
    if info.get("alpha_recommendations_scale", "raw") != scale:
        return {}
    return {e: float(a) for e, a in (info.get("alpha_recommendations") or {}).items() if a is not None}


class HFGenerator:
    """In-process steering of a transformers model by a bundle (greedy decoding)."""

    def __init__(self, model: Any, tokenizer: Any, bundle: EmotionBundle, *, max_new_tokens: int = 40,
                 alpha_scale: str | None = None) -> None:
        from emolab.steer import HFSteerer

        self.model, self.tokenizer, self.bundle = model, tokenizer, bundle
        # The bundle's own alpha scale unless told otherwise: what `emolab serve` uses by default too.
        scale = bundle.resolve_alpha_scale(alpha_scale)
        self.steerer = HFSteerer(model, bundle, alpha_scale=scale, basis=bundle.steering_basis(scale, derived=True))
        self.alpha_scale = self.steerer.alpha_scale
        self.emotions = bundle.steering_names  # the emotions, then valence and arousal when the bundle has them
        self.alpha_range = alpha_range(bundle.metadata)
        self.recommended = recommended_alphas(bundle.metadata, self.alpha_scale)
        self.max_new_tokens = max_new_tokens
        self._last: tuple[tuple[Any, ...], list[int]] | None = None  # (arguments, ids) of the last generation

    @classmethod
    def load(cls, bundle: EmotionBundle, model: str | None = None, **kwargs: Any) -> HFGenerator:
        from emolab.core.models import load_model

        name = model or bundle.model
        if not name:
            raise ValueError("the bundle names no model; pass model=")
        hf_model, tokenizer = load_model(name, dtype="float32", device="cpu")
        return cls(hf_model, tokenizer, bundle, **kwargs)

    def prompt_ids(self, prompt: str) -> list[int]:
        # Same formatting as the server's chat endpoint (plain text for a model without a template).
        from emolab.core.models import chat_prompt_ids

        if getattr(self.tokenizer, "chat_template", None):
            return chat_prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}])
        return self.tokenizer(prompt).input_ids

    def token_ids(self, prompt: str, alphas: Mapping[str, float], modes: Mapping[str, str] | None = None,
                  scope: str = "all") -> list[int]:
        """The generated token ids (the prompt's not included). Greedy decoding makes them a function of the
        arguments, so the last answer is kept: asking again for the reply just shown costs nothing."""
        from emolab.steer import generate

        key = (prompt, tuple(sorted((e, float(a)) for e, a in alphas.items())),
               tuple(sorted((modes or {}).items())), scope, self.max_new_tokens)
        if self._last is not None and self._last[0] == key:
            return list(self._last[1])
        flat = [x for emotion, alpha in alphas.items() for x in (emotion, alpha)]  # a clamp's 0 is a level: kept
        steering = Steering.parse(flat, self.emotions, param="steering")  # the server path's unknown-emotion check
        steering = Steering(steering.pairs, parse_modes(dict(modes or {}), self.emotions), parse_scope(scope))
        steering.plan(len(self.emotions))  # a clamp without its level is refused, as by the server
        ids = generate(self.model, self.tokenizer, [self.prompt_ids(prompt)], steerer=self.steerer,
                       steerings=[steering or None], max_new_tokens=self.max_new_tokens)[0]
        self._last = (key, [int(i) for i in ids])
        return list(self._last[1])

    def __call__(self, prompt: str, alphas: Mapping[str, float], modes: Mapping[str, str] | None = None,
                 scope: str = "all") -> str:
        return self.tokenizer.decode(self.token_ids(prompt, alphas, modes, scope), skip_special_tokens=True)


class ServedReply(NamedTuple):
    text: str
    token_ids: list[int] | None  # generated tokens, when the server reports them (vLLM backend)
    prompt_ids: list[int] | None  # the prompt as the server tokenized it (chat template applied)


class ServerGenerator:
    """Steering through a running ``emolab serve`` (``SteeringClient``, greedy decoding)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, max_new_tokens: int = 40,
                 timeout: float = 120.0) -> None:
        from emolab.api_client import SteeringClient

        self.client = SteeringClient(base_url, api_key=api_key, timeout=timeout)
        self.info: dict[str, Any] = self.client.info
        self.emotions = self.client.steerable
        self.model = self.client.model
        self.alpha_range = alpha_range(self.info)
        self.alpha_scale = str(self.info.get("alpha_scale", "raw"))
        self.recommended = recommended_alphas(self.info)
        self.backend = str(self.info.get("backend", "unknown"))  # which emolab backend serves: "hf" or "vllm"
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompt: str, alphas: Mapping[str, float], modes: Mapping[str, str] | None = None,
                 scope: str = "all") -> str:
        return self.reply(prompt, alphas, modes, scope).text

    def reply(self, prompt: str, alphas: Mapping[str, float], modes: Mapping[str, str] | None = None,
              scope: str = "all") -> ServedReply:
        """The reply's text and, from the vLLM backend (``return_token_ids``), its prompt and generated token ids;
        the HF backend refuses fields it does not know, so there they are None."""
        extra = {"return_token_ids": True} if self.backend == "vllm" else None
        completion = self.client.chat_completion(prompt, dict(alphas), max_tokens=self.max_new_tokens,
                                                 temperature=0.0, extra_body=extra, modes=dict(modes or {}) or None,
                                                 scope=None if scope == "all" else scope)
        choice = completion.choices[0]
        ids, prompt_ids = getattr(choice, "token_ids", None), getattr(completion, "prompt_token_ids", None)
        return ServedReply(choice.message.content or "", None if ids is None else [int(i) for i in ids],
                           None if prompt_ids is None else [int(i) for i in prompt_ids])


class SteeringPanel:
    """Prompt box, one alpha slider per emotion, a generate button, baseline | steered replies.

    ``generate()`` is what the button runs; notebooks call it directly when run headless. The
    baseline (all alphas zero) is cached per prompt: greedy decoding makes it the same every time.
    """

    def __init__(self, generator: Generator, prompt: str = DEFAULT_PROMPT, step: float | None = None) -> None:
        import ipywidgets as w

        self.generator = generator
        low, high = generator.alpha_range
        step = step or slider_step(low, high)
        self.prompt = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="95%", height="4em"))
        self.sliders = {
            e: w.FloatSlider(value=0.0, min=low, max=high, step=step, description=e, continuous_update=False,
                             readout_format=".2f", tooltip=self._hint(e))
            for e in generator.emotions
        }
        self.modes = {e: w.Dropdown(options=list(MODES), value="add", layout=w.Layout(width="6.5em"),
                                    tooltip="add: push by alpha; ablate: remove the direction; clamp: hold it at alpha")
                      for e in generator.emotions}
        self.scope = w.Dropdown(options=list(SCOPES), value="all", description="scope",
                                tooltip="steer every position, the prompt only, or the generated tokens only")
        self.scope.add_class("emolab-scope")
        for emotion, slider in self.sliders.items():
            slider.add_class(f"emolab-alpha-{emotion}")
            self.modes[emotion].add_class(f"emolab-mode-{emotion}")
        self.button = w.Button(description="generate", button_style="primary", icon="play")
        self.button.add_class("emolab-generate")
        self.status = w.HTML("")
        self.status.add_class("emolab-status")
        self.baseline = w.HTML(self._box("baseline (all alphas 0)", ""))
        self.baseline.add_class("emolab-baseline")
        self.steered = w.HTML(self._box("steered", ""))
        self.steered.add_class("emolab-steered")
        for pane in (self.baseline, self.steered):
            pane.layout = w.Layout(width="48%")
        self.button.on_click(lambda _button: self.generate())
        self.widget = w.VBox([
            self.prompt,
            w.HBox([w.VBox([w.HBox([self.sliders[e], self.modes[e]]) for e in list(self.sliders)[i::2]])
                    for i in range(2)]),
            w.HBox([self.scope, self.button, self.status]),
            w.HBox([self.baseline, self.steered]),
        ])
        self._baselines: dict[str, str] = {}
        self.last: tuple[str, str] | None = None

    def _hint(self, emotion: str) -> str:
        rec = getattr(self.generator, "recommended", {}).get(emotion)
        return f"recommended alpha {rec:g}" if rec is not None else "no recommended alpha"

    @staticmethod
    def _box(title: str, text: str) -> str:
        body = html.escape(text) if text else "&nbsp;"
        return f"<b>{html.escape(title)}</b><pre style='white-space: pre-wrap'>{body}</pre>"

    def alphas(self) -> dict[str, float]:
        """The non-zero sliders (an ablated emotion's slider is not read: ablation takes no alpha)."""
        return {e: float(s.value) for e, s in self.sliders.items() if s.value and self.modes[e].value != "ablate"}

    def mode_choices(self) -> dict[str, str]:
        """Every emotion whose mode is not ``add``; a clamp needs its slider's level (0 is a level too)."""
        return {e: m.value for e, m in self.modes.items() if m.value != "add"}

    def set_controls(self, modes: Mapping[str, str] | None = None, scope: str = "all") -> None:
        unknown = sorted(set(modes or {}) - set(self.modes))
        if unknown:
            raise ValueError(f"unknown emotions {unknown}; modes exist for {list(self.modes)}")
        for emotion, dropdown in self.modes.items():
            dropdown.value = (modes or {}).get(emotion, "add")
        self.scope.value = scope

    def set_recommended(self, *emotions: str) -> dict[str, float]:
        """Sliders of ``emotions`` (default: all that have one) at the bundle's recommended alphas, the rest at 0."""
        chosen = emotions or tuple(self.generator.recommended)
        missing = [e for e in chosen if e not in self.generator.recommended]
        if missing:
            raise ValueError(f"no recommended alpha for {missing}; the bundle recommends {self.generator.recommended}")
        alphas = {e: self.generator.recommended[e] for e in chosen}
        self.set_alphas(alphas)
        return alphas

    def set_alphas(self, alphas: Mapping[str, float]) -> None:
        unknown = sorted(set(alphas) - set(self.sliders))
        if unknown:
            raise ValueError(f"unknown emotions {unknown}; sliders exist for {list(self.sliders)}")
        for emotion, slider in self.sliders.items():
            slider.value = float(alphas.get(emotion, 0.0))

    def generate(self) -> tuple[str, str]:
        """Baseline and steered replies for the current prompt and sliders; also shown in the panel."""
        prompt, alphas, modes, scope = self.prompt.value, self.alphas(), self.mode_choices(), self.scope.value
        for emotion, mode in modes.items():  # a clamp's level is its slider, also at 0
            if mode == "clamp":
                alphas.setdefault(emotion, 0.0)
        self.status.value = "generating&hellip;"
        self.button.disabled = True
        try:
            if prompt not in self._baselines:
                self._baselines[prompt] = self.generator(prompt, {})
            baseline = self._baselines[prompt]
            steered = self.generator(prompt, alphas, modes, scope) if alphas or modes else baseline
        except Exception as exc:  # shown in the panel: a button callback's traceback would vanish
            self.status.value = f"<span style='color:red'>error: {html.escape(str(exc))}</span>"
            raise
        finally:
            self.button.disabled = False
        described = ", ".join([*(f"{e}{'' if modes.get(e) is None else ' ' + modes[e]}={a:+.2f}"
                                 for e, a in alphas.items()),
                               *(f"{e} ablate" for e, m in modes.items() if m == "ablate")]) or "none"
        described += "" if scope == "all" else f"; {scope} only"
        self.baseline.value = self._box("baseline (all alphas 0)", baseline)
        self.steered.value = self._box(f"steered ({described})", steered)
        self.status.value = "done"
        self.last = (baseline, steered)
        return baseline, steered
