"""The parts of an experiment spec: its error, the typed reader that names the field at fault, the sections'
dataclasses (sampling, conditions, state, agents) and the functions that read and check each section.

``emolab.simulate.spec`` puts them together into ``ExperimentSpec``; everything here is re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emolab.core.emotions import DEFAULT_EMOTIONS, EMOTION_ADJECTIVES
from emolab.simulate.amounts import DEFAULT_FLOOR
from emolab.simulate.personas import read_personas
from emolab.simulate.spec_reader import Reader, SpecError

__all__ = [
    "DEFAULT_EMOTION_PROMPT", "KINDS", "AgentsSpec", "ConditionsSpec", "Reader", "SamplingSpec", "SpecError",
    "StateSpec", "answer_prefix_field", "check_replicates", "choice_fields", "conditions_field", "conversation_fields",
    "number_readout_fields", "sampling_field",
]

KINDS = ("choice", "number", "conversation")
DEFAULT_EMOTION_PROMPT = "Right now you feel very {adjective}, and it colours how you see everything."


@dataclass(frozen=True)
class SamplingSpec:
    max_tokens: int = 24
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 20  # the readout of option probabilities needs the alternatives


@dataclass(frozen=True)
class ConditionsSpec:
    """Which conditions run: control always; steered / prompted / steered+prompted per emotion and alpha."""

    emotions: tuple[str, ...] = DEFAULT_EMOTIONS
    alphas: tuple[float, ...] = (1.0,)
    alpha_unit: str = "recommended"  # alphas are multiples of the server's recommended alpha, or "raw"
    control: bool = True  # the unsteered, unprompted control (effects are measured against it)
    steered: bool = True
    prompted: bool = True
    steered_prompted: bool = True
    emotion_prompt: str = DEFAULT_EMOTION_PROMPT


@dataclass(frozen=True)
class StateSpec:
    """An agent's emotion level: ``fixed``, or ``decay`` toward ``baseline`` and nudged by what it reads.

    level(t+1) = baseline + decay * (level(t) - baseline) + gain * (read(t) - reference), clipped to
    [low, high]; read(t) is, with ``read: judge``, the judge's probability of the emotion in the messages the
    conversation's agents read (one value per conversation), or with ``read: readout``, the agent's own
    emotion readout of the feed it read that turn (the server's ``emotion_readout`` of its prompt: its
    internal state, per agent, in standard deviations from the bundle's reference; ``reference`` then
    defaults to 0). Steering alpha = level x the condition's alpha.
    """

    rule: str = "fixed"
    read: str = "judge"  # judge | readout
    initial: float = 1.0  # level of the seeded agents at turn 0 (others start at baseline)
    baseline: float = 0.0
    decay: float = 0.7
    gain: float = 1.0
    reference: float = 1.0 / 6.0
    low: float = -2.0
    high: float = 2.0


@dataclass(frozen=True)
class AgentsSpec:
    count: int = 6
    seeded: int = 2  # the first `seeded` agents carry the condition's emotion
    names: tuple[str, ...] = ()
    personas: tuple[str, ...] = ("a thoughtful adult",)
    persona_attributes: tuple[dict[str, str], ...] = ()  # per persona, where drawn from a population


def choice_fields(r: Reader, prompt: str) -> dict[str, Any]:
    options = r.get("options", dict, check=lambda d: len(d) >= 2, why="needs at least two options")
    for key, text in options.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(text, str) or not text.strip():
            raise SpecError("each option is an id: non-empty text", f"options.{key}")
    labels = r.strings("labels", [chr(ord("A") + i) for i in range(len(options))])
    if len(labels) != len(options) or len(set(labels)) != len(labels):
        raise SpecError(f"needs {len(options)} distinct labels, one per option", "labels")
    keywords_raw = r.get("keywords", dict, {})
    keywords = {}
    for key, words in keywords_raw.items():
        if key not in options:
            raise SpecError(f"names no option (options: {', '.join(options)})", f"keywords.{key}")
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise SpecError("must be a list of non-empty strings", f"keywords.{key}")
        keywords[key] = tuple(w.lower() for w in words)
    if "{options}" not in prompt:
        raise SpecError("a choice prompt must contain {options} (where the labelled options are shown)", "prompt")
    outcome = r.get("outcome", str, next(iter(options)))
    if outcome not in options:
        raise SpecError(f"names no option (options: {', '.join(options)})", "outcome")
    fmt = r.get("option_format", str, "{label}. {text}", check=lambda f: "{label}" in f and "{text}" in f,
                why="must contain {label} and {text}")
    return dict(options=dict(options), labels=tuple(labels), keywords=keywords, outcome=outcome, option_format=fmt,
                counterbalance=r.get("counterbalance", str, "full", check=lambda v: v in ("full", "order", "none"),
                                     why="must be full, order or none"),
                readout=r.get("readout", str, "answer", check=lambda v: v in ("answer", "first"),
                              why="must be answer or first"))


def answer_prefix_field(r: Reader) -> str:
    """``answer_prefix``: the words the reply begins with ("I give $"), sent as the start of the assistant's message
    for the model to continue (``continue_final_message``), so the answer comes where it is read."""
    prefix = r.get("answer_prefix", str, "")
    if prefix and not prefix.strip():
        raise SpecError("must not be blank (leave it out for a reply the model begins itself)", "answer_prefix")
    if prefix != prefix.rstrip():
        raise SpecError("must not end in whitespace: the model's next token brings its own leading space (end at "
                        "\"$\" or a word)", "answer_prefix")
    return prefix


def number_readout_fields(r: Reader) -> dict[str, Any]:
    """``number_readout`` (text: the amount the reply wrote; distribution: also the model's probability of every
    amount, ``emolab.simulate.amounts``) and ``distribution_floor`` (the digit tree's nodes below it are not read)."""
    return dict(
        number_readout=r.get("number_readout", str, "text", check=lambda v: v in ("text", "distribution"),
                             why="must be text or distribution"),
        distribution_floor=float(r.get("distribution_floor", (int, float), DEFAULT_FLOOR, check=lambda v: 0 < v < 0.5,
                                       why="must be in (0, 0.5)")))


def conversation_fields(r: Reader) -> dict[str, Any]:
    a = Reader(r.get("agents", dict, {}), "agents")
    count = a.get("count", int, 6, check=lambda n: 2 <= n <= 4096, why="must be 2..4096")
    seeded = a.get("seeded", int, 2, check=lambda n: 0 <= n <= count, why=f"must be 0..{count} (agents.count)")
    names = a.strings("names", [f"Agent {i + 1}" for i in range(count)])
    if len(names) != count or len(set(names)) != count:
        raise SpecError(f"needs {count} distinct names (agents.count)", "agents.names")
    personas, attributes = read_personas(a, "personas", ["a thoughtful adult"])
    a.finish()
    s = Reader(r.get("state", dict, {}), "state")
    number = (int, float)
    read = s.get("read", str, "judge", check=lambda v: v in ("judge", "readout"), why="must be judge or readout")
    state = StateSpec(
        rule=s.get("rule", str, "fixed", check=lambda v: v in ("fixed", "decay"), why="must be fixed or decay"),
        read=read,
        initial=float(s.get("initial", number, 1.0)), baseline=float(s.get("baseline", number, 0.0)),
        decay=float(s.get("decay", number, 0.7, check=lambda v: 0 <= v <= 1, why="must be in [0, 1]")),
        gain=float(s.get("gain", number, 1.0)),
        reference=float(s.get("reference", number, 0.0 if read == "readout" else 1.0 / 6.0)),
        low=float(s.get("low", number, -2.0)), high=float(s.get("high", number, 2.0)))
    if state.low > state.high:
        raise SpecError("low must not exceed high", "state.low")
    s.finish()
    return dict(agents=AgentsSpec(count=count, seeded=seeded, names=tuple(names), personas=personas,
                                  persona_attributes=attributes),
                state=state,
                turns=r.get("turns", int, 5, check=lambda n: 1 <= n <= 1000, why="must be 1..1000"),
                window=r.get("window", int, 6, check=lambda n: 1 <= n <= 1000, why="must be 1..1000"),
                opening=r.get("opening", str, check=lambda v: bool(v.strip()), why="must not be empty"))


def conditions_field(r: Reader) -> ConditionsSpec:
    c = Reader(r.get("conditions", dict, {}), "conditions")
    emotions = c.get("emotions", (str, list), list(DEFAULT_EMOTIONS))
    emotions = list(DEFAULT_EMOTIONS) if emotions == "all" else emotions
    if not isinstance(emotions, list) or not emotions:
        raise SpecError("must be 'all' or a non-empty list of emotion names", "conditions.emotions")
    for i, e in enumerate(emotions):
        if not isinstance(e, str) or not e.strip():
            raise SpecError("must be an emotion name", f"conditions.emotions[{i}]")
    alphas = c.get("alphas", list, [1.0])
    for i, a in enumerate(alphas):
        if isinstance(a, bool) or not isinstance(a, int | float) or a != a or abs(a) == float("inf") or a == 0:
            raise SpecError("must be a finite non-zero number (alpha 0 is the control)", f"conditions.alphas[{i}]")
    if len(set(alphas)) != len(alphas):
        raise SpecError("lists an alpha twice", "conditions.alphas")
    prompt = c.get("emotion_prompt", str, DEFAULT_EMOTION_PROMPT)
    if "{adjective}" not in prompt and "{emotion}" not in prompt:
        raise SpecError("must contain {adjective} or {emotion}", "conditions.emotion_prompt")
    spec = ConditionsSpec(
        emotions=tuple(e.strip().lower() for e in emotions), alphas=tuple(float(a) for a in alphas),
        alpha_unit=c.get("alpha_unit", str, "recommended", check=lambda v: v in ("recommended", "raw"),
                         why="must be recommended or raw"),
        control=c.get("control", bool, True), steered=c.get("steered", bool, True),
        prompted=c.get("prompted", bool, True),
        steered_prompted=c.get("steered_prompted", bool, True), emotion_prompt=prompt)
    unknown = [e for e in spec.emotions if e not in EMOTION_ADJECTIVES and "{adjective}" in prompt
               and (spec.prompted or spec.steered_prompted)]
    if unknown:
        raise SpecError(f"no adjective known for {unknown[0]!r}: write emotion_prompt with {{emotion}}",
                        "conditions.emotion_prompt")
    c.finish()
    return spec


def check_replicates(spec: dict[str, Any]) -> None:
    """Refuse seeds that would repeat requests already in the design and be counted as independent replicates.

    A seed only changes what is sampled. At temperature 0 every seed of a choice or number experiment sends the
    same requests; a conversation's replicate ``r`` differs from the others by its personas' rotation only, so
    replicate ``r + P`` (P personas) repeats replicate ``r``. Copies would narrow the CIs and the p-values.
    """
    seeds = spec["seeds"]
    if spec["sampling"].temperature > 0 or len(seeds) == 1:
        return
    if spec["kind"] != "conversation":
        raise SpecError(f"at temperature 0 every seed sends the same requests, so {len(seeds)} seeds would be copies "
                        "counted as independent replicates; give one seed, or sampling.temperature > 0", "seeds")
    rotations = len(spec["agents"].personas)
    if len(seeds) > rotations:
        raise SpecError(f"at temperature 0 a replicate differs from the others only by the rotation of the "
                        f"{rotations} agent personas, so {len(seeds)} seeds would repeat conversations as independent "
                        "replicates; give at most that many seeds, more agents.personas, or sampling.temperature > 0",
                        "seeds")


def sampling_field(r: Reader, kind: str) -> SamplingSpec:
    s = Reader(r.get("sampling", dict, {}), "sampling")
    default_tokens = 48 if kind == "conversation" else 24
    spec = SamplingSpec(
        max_tokens=s.get("max_tokens", int, default_tokens, check=lambda n: 1 <= n <= 8192, why="must be 1..8192"),
        temperature=float(s.get("temperature", (int, float), 0.0, check=lambda t: 0 <= t <= 2, why="must be 0..2")),
        top_p=float(s.get("top_p", (int, float), 1.0, check=lambda t: 0 < t <= 1, why="must be in (0, 1]")),
        top_logprobs=s.get("top_logprobs", int, 20, check=lambda n: 0 <= n <= 20, why="must be 0..20"))
    s.finish()
    return spec
