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

from emolab.simulate.amounts import DEFAULT_FLOOR
from emolab.simulate.personas import read_personas, resize_personas
from emolab.simulate.spec_fields import (
    KINDS,
    AgentsSpec,
    ConditionsSpec,
    Reader,
    SamplingSpec,
    SpecError,
    StateSpec,
    answer_prefix_field,
    check_replicates,
    choice_fields,
    conditions_field,
    conversation_fields,
    number_readout_fields,
    sampling_field,
)

__all__ = [
    "KINDS", "AgentsSpec", "ConditionsSpec", "ExperimentSpec", "SamplingSpec", "SpecError", "StateSpec",
    "shipped_specs", "spec_path",
]

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "experiments"
# Fields added after runs were logged: left out of ``to_dict`` (so of the digest) at their defaults, so that a
# folder run before they existed is still resumed by the same spec.
LATER_FIELDS: dict[str, Any] = {"answer_prefix": "", "number_readout": "text", "distribution_floor": DEFAULT_FLOOR}


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    kind: str
    prompt: str
    description: str = ""
    reference: str = ""
    system: str = ""
    personas: tuple[str, ...] = ("",)
    persona_attributes: tuple[dict[str, str], ...] = ()  # per persona, where drawn from a population
    options: dict[str, str] = field(default_factory=dict)  # option id -> text
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)  # option id -> words naming it in free text
    labels: tuple[str, ...] = ()
    option_format: str = "{label}. {text}"
    counterbalance: str = "full"  # full (orders x label directions) | order | none
    readout: str = "answer"  # answer: the first token naming an option; first: the first generated token
    outcome: str = ""  # the option (choice) or quantity (number) the headline effect is about
    range: tuple[float, float] | None = None  # number: accepted answers
    answer_prefix: str = ""  # choice/number: the reply's first words, written for the model, which continues them
    number_readout: str = "text"  # number: text (the amount the reply wrote) | distribution (also P of every amount)
    distribution_floor: float = DEFAULT_FLOOR  # number_readout distribution: digit-tree nodes below it are not read
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
        r = Reader(data, "")
        kind = r.get("kind", str, check=lambda k: k in KINDS, why=f"must be one of {', '.join(KINDS)}")
        name = r.get("name", str, check=lambda s: bool(s.strip()), why="must not be empty")
        prompt = r.get("prompt", str, "" if kind == "conversation" else ...)
        if kind != "conversation" and not prompt.strip():
            raise SpecError("must not be empty", "prompt")
        spec: dict[str, Any] = dict(kind=kind, name=name, prompt=prompt,
                                    description=r.get("description", str, ""), reference=r.get("reference", str, ""),
                                    system=r.get("system", str, ""))
        personas = read_personas(r, "personas", None)
        if personas is not None:
            spec["personas"], spec["persona_attributes"] = personas
        if "{persona}" in spec["system"] + prompt and personas is None:
            raise SpecError("the prompt or system uses {persona} but no personas are given", "personas")
        if kind == "choice":
            spec.update(choice_fields(r, prompt))
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
            spec.update(number_readout_fields(r))
        else:
            for key in ("number_readout", "distribution_floor"):
                if key in r.data:
                    raise SpecError(f"only number experiments have {key}", key)
        if kind == "conversation":
            spec.update(conversation_fields(r))
            if "answer_prefix" in r.data:
                raise SpecError("only choice and number experiments have answer_prefix", "answer_prefix")
        else:
            spec["answer_prefix"] = answer_prefix_field(r)
        if spec.get("number_readout") == "distribution" and not spec["answer_prefix"]:
            raise SpecError("distribution reads the amount where the reply begins writing it: give an answer_prefix "
                            "that ends there (\"I give $\")", "number_readout")
        spec["conditions"] = conditions_field(r)
        spec["sampling"] = sampling_field(r, kind)
        if spec.get("number_readout") == "distribution" and spec["sampling"].top_logprobs < 1:
            raise SpecError("must be at least 1 for number_readout: distribution (the digits' alternatives)",
                            "sampling.top_logprobs")
        seeds = r.get("seeds", list, [0], check=lambda v: v and all(isinstance(x, int) and not isinstance(x, bool)
                                                                      for x in v), why="must be a list of integers")
        if len(set(seeds)) != len(seeds):
            raise SpecError("lists a seed twice", "seeds")
        spec["seeds"] = tuple(seeds)
        check_replicates(spec)
        spec["concurrency"] = r.get("concurrency", int, 64, check=lambda n: 1 <= n <= 4096, why="must be 1..4096")
        spec["order_seed"] = r.get("order_seed", int, 0)
        r.finish()
        return cls(**spec, source=json.loads(json.dumps(data)))

    def with_overrides(self, *, emotions: list[str] | None = None, alphas: list[float] | None = None,
                       personas: int | None = None, seeds: list[int] | None = None,
                       turns: int | None = None, temperature: float | None = None,
                       answer_prefix: str | None = None, number_readout: str | None = None) -> ExperimentSpec:
        """The spec with a smaller or other design, applied to its data (so they are recorded and hashed).

        ``personas``: keep the first N (of a written list; of a population, draw N: the first N of any larger
        draw with the same seed); ``answer_prefix``: ``""`` removes it; ``number_readout``: text or distribution.
        Each override is checked like the field itself.
        """
        data = json.loads(json.dumps(self.source))
        conditions = dict(data.get("conditions") or {})
        if emotions is not None:
            conditions["emotions"] = list(emotions)
        if alphas is not None:
            conditions["alphas"] = list(alphas)
        data["conditions"] = conditions
        if personas is not None:
            data["personas"] = resize_personas(data.get("personas"), personas)
        if seeds is not None:
            data["seeds"] = list(seeds)
        if turns is not None:
            if self.kind != "conversation":
                raise SpecError("only conversation experiments have turns", "turns")
            data["turns"] = turns
        if temperature is not None:
            data["sampling"] = {**(data.get("sampling") or {}), "temperature": temperature}
        if answer_prefix == "":  # none: the model begins the reply itself
            data.pop("answer_prefix", None)
        elif answer_prefix is not None:
            data["answer_prefix"] = answer_prefix
        if number_readout is not None:
            if self.kind != "number":
                raise SpecError("only number experiments have number_readout", "number_readout")
            data["number_readout"] = number_readout
        if answer_prefix == "" and data.get("number_readout") == "distribution" and number_readout is None:
            raise SpecError("this spec reads number_readout: distribution, which needs the begun reply; "
                            "add --number-readout text to remove both", "answer_prefix")
        return ExperimentSpec.from_dict(data) if data != self.source else self

    # ----------------------------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults filled in (``source``, the data as written, left out)."""
        data = json.loads(json.dumps(asdict(self)))
        data.pop("source")
        for name, default in LATER_FIELDS.items():  # at their defaults, fields added later leave the digest as it was
            if data.get(name) == default:
                data.pop(name)
        return data

    def digest(self) -> str:
        """sha256 of the canonical spec: a run folder belongs to exactly one spec. Order-sensitive where order means
        something: options in another order are another presentation (arm 0 shows them in the spec's order)."""
        return hashlib.sha256(json.dumps(self.to_dict()).encode()).hexdigest()


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
