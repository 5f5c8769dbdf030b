"""An experiment as a data file: ``ExperimentSpec.load(path)`` checks every field and names the one at fault.

Three kinds, one file format (YAML or JSON)::

    kind: choice        a decision prompt with named options (risk, ultimatum, trust)
    kind: number        a prompt answered with a number (a dictator offer, an amount sent)
    kind: conversation  N agents share a feed for T turns; some carry an emotion, fixed or by a state rule

Shipped specs live in ``emolab/data/experiments/`` (``shipped_specs()``); ``docs/simulate.md`` documents
every field. A bad spec raises ``SpecError`` whose ``field`` is the dotted path (``conditions.alphas[1]``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emolab.core.emotions import DEFAULT_EMOTIONS, EMOTION_ADJECTIVES
from emolab.core.errors import EmolabError

__all__ = [
    "KINDS", "AgentsSpec", "ConditionsSpec", "ExperimentSpec", "SamplingSpec", "SpecError", "StateSpec",
    "shipped_specs", "spec_path",
]

KINDS = ("choice", "number", "conversation")
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "experiments"
DEFAULT_EMOTION_PROMPT = "Right now you feel very {adjective}, and it colours how you see everything."


class SpecError(EmolabError, ValueError):
    """A spec that cannot run; ``field`` is the dotted path of the field at fault."""

    def __init__(self, message: str, field: str | None = None, path: str | Path | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f"{field}: " if field else ""
        super().__init__(f"{where}{at}{message}")
        self.field = field
        self.message = message


class _Reader:
    """Typed access to one mapping of the spec, with the dotted path of every field for errors."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"must be a mapping, got {type(data).__name__}", where or None)
        self.data, self.where, self.used = data, where, set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types: type | tuple[type, ...], default: Any = ..., *, check=None, why: str = "") -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise SpecError("is required", self.path(key))
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise SpecError(f"must be {_names(types)}, got a boolean", self.path(key))
        if not isinstance(value, types):
            raise SpecError(f"must be {_names(types)}, got {type(value).__name__}", self.path(key))
        if check is not None and not check(value):
            raise SpecError(why or f"invalid value {value!r}", self.path(key))
        return value

    def strings(self, key: str, default: Any = ..., *, min_len: int = 1) -> list[str]:
        values = self.get(key, list, default)
        if values is default and default is not ...:
            return values
        if len(values) < min_len:
            raise SpecError(f"needs at least {min_len} item(s)", self.path(key))
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                raise SpecError("must be a non-empty string", f"{self.path(key)}[{i}]")
        return list(values)

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise SpecError(f"unknown field (known: {', '.join(sorted(self.used))})", self.path(str(extra[0])))


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    words = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(dict.fromkeys(words.get(t, t.__name__) for t in types))


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


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    kind: str
    prompt: str
    description: str = ""
    reference: str = ""
    system: str = ""
    personas: tuple[str, ...] = ("",)
    options: dict[str, str] = field(default_factory=dict)  # option id -> text
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)  # option id -> words naming it in free text
    labels: tuple[str, ...] = ()
    option_format: str = "{label}. {text}"
    counterbalance: str = "full"  # full (orders x label directions) | order | none
    readout: str = "answer"  # answer: the first token naming an option; first: the first generated token
    outcome: str = ""  # the option (choice) or quantity (number) the headline effect is about
    range: tuple[float, float] | None = None  # number: accepted answers
    turns: int = 5
    window: int = 6
    opening: str = ""
    agents: AgentsSpec = AgentsSpec()
    state: StateSpec = StateSpec()
    conditions: ConditionsSpec = ConditionsSpec()
    sampling: SamplingSpec = SamplingSpec()
    seeds: tuple[int, ...] = (0,)
    concurrency: int = 64
    order_seed: int = 0
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the data it was read from

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source: str | Path) -> ExperimentSpec:
        """A spec file (YAML or JSON) or the name of a shipped spec (``risk``, ``contagion``, ...)."""
        path = spec_path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read the spec: {exc.strerror or exc}", path=path) from None
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise SpecError(f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}", path=path) from None
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            raise SpecError(exc.message, exc.field, path=path) from None

    @classmethod
    def from_dict(cls, data: Any) -> ExperimentSpec:
        r = _Reader(data, "")
        kind = r.get("kind", str, check=lambda k: k in KINDS, why=f"must be one of {', '.join(KINDS)}")
        name = r.get("name", str, check=lambda s: bool(s.strip()), why="must not be empty")
        prompt = r.get("prompt", str, "" if kind == "conversation" else ...)
        if kind != "conversation" and not prompt.strip():
            raise SpecError("must not be empty", "prompt")
        spec: dict[str, Any] = dict(kind=kind, name=name, prompt=prompt,
                                    description=r.get("description", str, ""), reference=r.get("reference", str, ""),
                                    system=r.get("system", str, ""))
        personas = r.strings("personas", None)
        if personas is not None:
            spec["personas"] = tuple(personas)
        if "{persona}" in spec["system"] + prompt and personas is None:
            raise SpecError("the prompt or system uses {persona} but no personas are given", "personas")
        if kind == "choice":
            spec.update(_choice_fields(r, prompt))
        else:
            for key in ("options", "labels", "keywords", "counterbalance", "readout", "option_format"):
                if key in r.data:
                    raise SpecError(f"only choice experiments have {key}", key)
        if kind == "number":
            spec["outcome"] = r.get("outcome", str, "amount")
            low_high = r.get("range", list, check=lambda v: len(v) == 2 and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in v) and v[0] < v[1],
                why="must be [low, high] with low < high")
            spec["range"] = (float(low_high[0]), float(low_high[1]))
        if kind == "conversation":
            spec.update(_conversation_fields(r))
        spec["conditions"] = _conditions(r)
        spec["sampling"] = _sampling(r, kind)
        seeds = r.get("seeds", list, [0], check=lambda v: v and all(isinstance(x, int) and not isinstance(x, bool)
                                                                      for x in v), why="must be a list of integers")
        if len(set(seeds)) != len(seeds):
            raise SpecError("lists a seed twice", "seeds")
        spec["seeds"] = tuple(seeds)
        spec["concurrency"] = r.get("concurrency", int, 64, check=lambda n: 1 <= n <= 4096, why="must be 1..4096")
        spec["order_seed"] = r.get("order_seed", int, 0)
        r.finish()
        return cls(**spec, source=json.loads(json.dumps(data)))

    def with_overrides(self, *, emotions: list[str] | None = None, alphas: list[float] | None = None,
                       personas: int | None = None, seeds: list[int] | None = None,
                       turns: int | None = None) -> ExperimentSpec:
        """The spec with a smaller or other design, applied to its data (so they are recorded and hashed).

        ``personas``: keep the first N. Each override is checked like the field itself.
        """
        data = json.loads(json.dumps(self.source))
        conditions = dict(data.get("conditions") or {})
        if emotions is not None:
            conditions["emotions"] = list(emotions)
        if alphas is not None:
            conditions["alphas"] = list(alphas)
        data["conditions"] = conditions
        if personas is not None:
            if "personas" not in data:
                raise SpecError("this spec has no personas to keep", "personas")
            if not 1 <= personas <= len(data["personas"]):
                raise SpecError(f"the spec has {len(data['personas'])} personas, asked for {personas}", "personas")
            data["personas"] = data["personas"][:personas]
        if seeds is not None:
            data["seeds"] = list(seeds)
        if turns is not None:
            if self.kind != "conversation":
                raise SpecError("only conversation experiments have turns", "turns")
            data["turns"] = turns
        return ExperimentSpec.from_dict(data) if data != self.source else self

    # ----------------------------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults filled in (``source``, the data as written, left out)."""
        data = json.loads(json.dumps(asdict(self)))
        data.pop("source")
        return data

    def digest(self) -> str:
        """sha256 of the canonical spec: a run folder belongs to exactly one spec."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _choice_fields(r: _Reader, prompt: str) -> dict[str, Any]:
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


def _conversation_fields(r: _Reader) -> dict[str, Any]:
    a = _Reader(r.get("agents", dict, {}), "agents")
    count = a.get("count", int, 6, check=lambda n: 2 <= n <= 4096, why="must be 2..4096")
    seeded = a.get("seeded", int, 2, check=lambda n: 0 <= n <= count, why=f"must be 0..{count} (agents.count)")
    names = a.strings("names", [f"Agent {i + 1}" for i in range(count)])
    if len(names) != count or len(set(names)) != count:
        raise SpecError(f"needs {count} distinct names (agents.count)", "agents.names")
    personas = a.strings("personas", ["a thoughtful adult"])
    a.finish()
    s = _Reader(r.get("state", dict, {}), "state")
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
    return dict(agents=AgentsSpec(count=count, seeded=seeded, names=tuple(names), personas=tuple(personas)),
                state=state,
                turns=r.get("turns", int, 5, check=lambda n: 1 <= n <= 1000, why="must be 1..1000"),
                window=r.get("window", int, 6, check=lambda n: 1 <= n <= 1000, why="must be 1..1000"),
                opening=r.get("opening", str, check=lambda v: bool(v.strip()), why="must not be empty"))


def _conditions(r: _Reader) -> ConditionsSpec:
    c = _Reader(r.get("conditions", dict, {}), "conditions")
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


def _sampling(r: _Reader, kind: str) -> SamplingSpec:
    s = _Reader(r.get("sampling", dict, {}), "sampling")
    default_tokens = 48 if kind == "conversation" else 24
    spec = SamplingSpec(
        max_tokens=s.get("max_tokens", int, default_tokens, check=lambda n: 1 <= n <= 8192, why="must be 1..8192"),
        temperature=float(s.get("temperature", (int, float), 0.0, check=lambda t: 0 <= t <= 2, why="must be 0..2")),
        top_p=float(s.get("top_p", (int, float), 1.0, check=lambda t: 0 < t <= 1, why="must be in (0, 1]")),
        top_logprobs=s.get("top_logprobs", int, 20, check=lambda n: 0 <= n <= 20, why="must be 0..20"))
    s.finish()
    return spec


def shipped_specs() -> dict[str, Path]:
    """The experiments that come with emolab: name -> file."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.yaml"))}


def spec_path(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_specs()
    if str(source) in shipped:
        return shipped[str(source)]
    raise SpecError(f"no such spec file, and no shipped experiment of that name (shipped: {', '.join(shipped)})",
                    path=source)
