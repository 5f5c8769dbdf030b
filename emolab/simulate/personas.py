"""Persona populations: a spec's ``personas`` written out as a list, or drawn from a population of attributes.

A written list is what it is. A population is the product of attribute lists rendered through a template, and
a spec draws ``sample`` distinct people from it::

    personas:
      sample: 32              # distinct people (a choice experiment's independent units)
      seed: 0                 # which ones; the draw is stable: the first N of a larger draw are the N drawn
      population: everyday    # a built-in population (emolab/data/personas/), the default
      template: "{occupation} {age}"      # optional: a template of the population's attributes
      attributes: {age: [...], ...}       # optional: a population of the spec's own (needs a template)

The draw is stable under growth (``seed`` fixed, the first N people of a draw of M > N are the draw of N), so
``--personas N`` means the same people whether the spec lists or samples them. Each drawn person keeps their
attributes, which ``run.json`` records with the resolved spec and ``analyze`` joins to every trial as
``persona_<attribute>`` columns, so effects can be read per subgroup (``report --by``).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from emolab.simulate.spec_reader import Reader, SpecError

__all__ = ["MAX_SAMPLE", "Population", "builtin_populations", "population", "read_personas", "resize_personas"]

POPULATIONS = Path(__file__).resolve().parent.parent / "data" / "personas"
MAX_SAMPLE = 100_000


@dataclass(frozen=True)
class Population:
    """People as every combination of attribute values, one sentence each through ``template``."""

    template: str
    attributes: tuple[tuple[str, tuple[str, ...]], ...]  # (name, values) in the template's order

    @property
    def size(self) -> int:
        n = 1
        for _, values in self.attributes:
            n *= len(values)
        return n

    def person(self, index: int) -> dict[str, str]:
        """The attributes of person ``index`` (mixed radix over the attribute lists)."""
        person = {}
        for name, values in reversed(self.attributes):
            index, digit = divmod(index, len(values))
            person[name] = values[digit]
        return {name: person[name] for name, _ in self.attributes}

    def render(self, person: dict[str, str]) -> str:
        return self.template.format_map(person)

    def sample(self, n: int, seed: int) -> list[dict[str, str]]:
        """``n`` distinct people; the first ``k`` of a draw are the draw of ``k`` (same seed)."""
        if not 1 <= n <= self.size:
            raise ValueError(f"the population has {self.size} people, asked for {n}")
        rng, seen, drawn = random.Random(seed), set(), []
        while len(drawn) < n:
            index = rng.randrange(self.size)
            if index not in seen:
                seen.add(index)
                drawn.append(self.person(index))
        return drawn


def template_fields(template: str, where: str) -> list[str]:
    """The attribute names a template uses, in order; anything but plain ``{name}`` fields is refused."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(f"not a valid template: {exc}", where) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise SpecError(f"{{{name}}}: a template field is a plain attribute name such as {{age}}", where)
        if name not in names:
            names.append(name)
    if not names:
        raise SpecError("uses no attribute (write fields such as {occupation})", where)
    return names


def _attribute_lists(data: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict) or not data:
        raise SpecError("must be a mapping of attribute name to a list of values", where)
    out = {}
    for name, values in data.items():
        at = f"{where}.{name}"
        if name == "index":
            raise SpecError("is reserved: each trial's persona_index is the persona's number", at)
        if not isinstance(values, list) or not values:
            raise SpecError("must be a non-empty list of strings", at)
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                raise SpecError("must be a non-empty string", f"{at}[{i}]")
        if len(set(values)) != len(values):
            raise SpecError("lists a value twice", at)
        out[str(name)] = tuple(values)
    return out


def _population(template: str, attributes: dict[str, tuple[str, ...]], where: str, *,
                all_used: bool) -> Population:
    names = template_fields(template, f"{where}.template")
    missing = [n for n in names if n not in attributes]
    if missing:
        raise SpecError(f"{{{missing[0]}}} names no attribute (attributes: {', '.join(attributes)})",
                        f"{where}.template")
    unused = [n for n in attributes if n not in names]
    if all_used and unused:  # two people differing only there would read the same
        raise SpecError(f"the template does not use {unused[0]!r}, so people differing only there would read "
                        "alike", f"{where}.attributes.{unused[0]}")
    return Population(template, tuple((n, attributes[n]) for n in names))


@cache
def builtin_populations() -> dict[str, Path]:
    """The populations that come with emolab: name -> file."""
    return {p.stem: p for p in sorted(POPULATIONS.glob("*.yaml"))}


def _builtin(name: str, where: str | None = None) -> tuple[str, dict[str, tuple[str, ...]]]:
    """A built-in population's (template, attributes); an unknown name is a ``SpecError`` at ``where``."""
    if name not in builtin_populations():
        raise SpecError(f"no built-in population {name!r} (built-in: {', '.join(builtin_populations())})", where)
    return _read_builtin(name)


@cache
def _read_builtin(name: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    data = yaml.safe_load(builtin_populations()[name].read_text())
    return data["template"], {k: tuple(v) for k, v in data["attributes"].items()}


def population(name: str = "everyday", template: str | None = None) -> Population:
    """A built-in population, optionally rendered through another template of its attributes."""
    default, attributes = _builtin(name)
    return _population(template or default, attributes, "personas", all_used=False)


def read_personas(r: Reader, key: str, default: list[str] | None
                  ) -> tuple[tuple[str, ...], tuple[dict[str, str], ...]] | None:
    """A spec's personas (a list, or a mapping that samples a population) and each one's attributes (empty for a
    written list); ``None`` where the key is absent and ``default`` is ``None``."""
    where = r.path(key)
    if isinstance(r.data.get(key), dict):
        r.used.add(key)
        p = Reader(r.data[key], where)
        n = p.get("sample", int, check=lambda v: 1 <= v <= MAX_SAMPLE, why=f"must be 1..{MAX_SAMPLE}")
        seed = p.get("seed", int, 0)
        template = p.get("template", str, None)
        if "attributes" in p.data:
            if template is None:
                raise SpecError("a population of the spec's own needs a template", f"{where}.template")
            if "population" in p.data:
                raise SpecError("give a built-in population or attributes of your own, not both", f"{where}.population")
            pop = _population(template, _attribute_lists(p.get("attributes", dict), f"{where}.attributes"), where,
                              all_used=True)
        else:
            default_template, attributes = _builtin(p.get("population", str, "everyday"), f"{where}.population")
            pop = _population(template or default_template, attributes, where, all_used=False)
        p.finish()
        if n > pop.size:
            raise SpecError(f"the population has {pop.size} distinct people, asked for {n}", f"{where}.sample")
        people = pop.sample(n, seed)
        return tuple(pop.render(person) for person in people), tuple(people)
    personas = r.strings(key, default)
    return None if personas is None else (tuple(personas), ())


def resize_personas(value: Any, n: int, where: str = "personas") -> Any:
    """A spec's ``personas`` data with ``n`` people: the first N of a written list, a draw of N from a population
    (the first N of a larger draw, so the same people either way)."""
    if isinstance(value, dict):
        return {**value, "sample": n}
    if not isinstance(value, list):
        raise SpecError("this spec has no personas to keep", where)
    if not 1 <= n <= len(value):
        raise SpecError(f"the spec has {len(value)} personas, asked for {n}", where)
    return value[:n]
