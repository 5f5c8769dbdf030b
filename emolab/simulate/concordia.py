"""DeepMind's Concordia over an emolab server: a ``LanguageModel`` per agent, each with its own steering.

Concordia (``pip install 'emolab[concordia]'``, gdm-concordia 2.1.0) builds every entity and game master
from one ``LanguageModel``; give each its own ``SteeredLanguageModel`` and they all share one server::

    client = SteeringClient("http://127.0.0.1:8000", api_key=KEY)
    alice = SteeredLanguageModel(client, steering={"joy": 0.8}, name="Alice", max_tokens=64)
    bob = SteeredLanguageModel(client, steering=lambda: mood["Bob"], name="Bob")  # read at every call

``steering`` is what ``SteeringClient.chat`` takes (``{"fear": 1.0}``, a ``Steering``, the flat list,
``None``), or a callable returning one: it is called at every request, so a simulation can change an
agent's emotion between calls. ``name`` goes out as the request's ``user`` field (server logs tell the
agents apart).

``sample_text`` sends a *chat* request: Concordia writes its prompts as documents to be continued
("...Answer: Alice is "), so a system message asks the chat model to continue the text, as Concordia's
own chat models (GPT, Ollama) do. ``max_tokens``/``temperature``/``top_p``/``top_k``/``seed`` are
honoured (the constructor's values, where set, cap ``max_tokens`` and replace the others: an agent keeps
its own sampling); ``terminators`` go out as ``stop`` (the first 16) and the reply is also cut before
the first of them here. ``top_k`` goes in the body only when set (the HF backend refuses it).

``sample_choice`` presents the responses as labelled options, ``(A) ...``, ``(B) ...`` (Concordia's own
multiple-choice documents already list ``(a) ...`` and pass the letters as responses: those letters are
then the labels, and a token spelling the capital counts for its letter), and asks for the label with
``logprobs`` (greedy; each retry warmer, as Concordia's ``dynamically_adjust_temperature``, with the
next seed). Where the server answers logprobs (both emolab backends do), the choice is the argmax of
the label probabilities at the answer position, renormalized over the options (``emolab.simulate.readout``:
``label_of_token``, ``option_probabilities``); where it does not, or no label got any probability, the
reply's text is parsed (``parse_choice``, or the whole reply equal to one response). A server that
refuses ``logprobs`` (a 400 naming that field) is asked again without, and not asked for them again.
After ``choice_attempts`` unreadable replies it raises ``InvalidResponseError``, as Concordia's models
do. The info dict: ``method`` ("logprobs" or "text"), ``probabilities`` (one per response, in order,
summing to 1; None when read from text), ``label_probabilities``, ``mass`` (the share of the
distribution on the labels), ``labels``, ``text``, ``attempts``.

``HashingEmbedder``: Concordia's memory banks want a sentence embedder; this one hashes words into a
fixed-size unit vector (deterministic, no model, no download): similar wording, similar vectors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

try:
    from concordia.language_model import language_model as _concordia_lm
    from concordia.utils.sampling import dynamically_adjust_temperature
except ImportError as exc:  # the optional extra is not installed
    raise ImportError("emolab.simulate.concordia needs DeepMind's Concordia: "
                      "pip install 'emolab[concordia]' (gdm-concordia==2.1.0)") from exc

import numpy as np
import openai

from emolab.api_client.client import SteeringClient, SteeringSpec
from emolab.simulate.readout import label_of_token, option_probabilities, parse_choice

__all__ = [
    "CHOICE_SYSTEM_MESSAGE", "DEFAULT_SYSTEM_MESSAGE", "HashingEmbedder", "InvalidResponseError",
    "SteeredLanguageModel", "choice_prompt", "cut_at_terminators", "label_probabilities",
]

InvalidResponseError = _concordia_lm.InvalidResponseError
DEFAULT_SYSTEM_MESSAGE = (
    "Continue the user's text. Never repeat its start: reply with the continuation only. For example, "
    "'Question: Is Jake a turtle?\nAnswer: Jake is ' is continued with 'not a turtle.'"
)
CHOICE_SYSTEM_MESSAGE = "Answer the multiple-choice question with the label of one option only."
MAX_STOPS = 16  # what emolab's servers take
_LETTERS = [chr(ord("a") + i) for i in range(26)]

Steerer = SteeringSpec | Callable[[], SteeringSpec]


def cut_at_terminators(text: str, terminators: Collection[str]) -> str:
    """``text`` up to (not including) the earliest of ``terminators``."""
    cut = len(text)
    for terminator in terminators:
        if terminator and (at := text.find(terminator)) != -1:
            cut = min(cut, at)
    return text[:cut]


def choice_prompt(prompt: str, responses: Sequence[str]) -> tuple[str, list[str]]:
    """(the question as sent, the labels: one per response).

    Responses that are Concordia's own option keys (``a``, ``b``, ... in order: its documents already list
    ``(a) ...``) are their own labels; any others are listed as ``(A) ...``, ``(B) ...`` (numbers past 26).
    The instruction does not list the labels (a small model copies such a list as its answer).
    """
    if _are_keys(responses):
        text = prompt.rstrip()
        text = text[:-1].rstrip() if text.endswith("(") else text  # Concordia's "Answer: (" cue
        return f"{text}\nReply with the letter of one option only.\nAnswer:", list(responses)
    labels = ([chr(ord("A") + i) for i in range(len(responses))] if len(responses) <= 26
              else [str(i + 1) for i in range(len(responses))])
    options = "\n".join(f"({label}) {response}" for label, response in zip(labels, responses, strict=True))
    return f"{prompt.rstrip()}\n\nOptions:\n{options}\nReply with the label of one option only.\nAnswer:", labels


def label_probabilities(content: Sequence[Mapping[str, Any]] | None, labels: Sequence[str],
                        ) -> tuple[dict[str, float] | None, float, int]:
    """(label -> probability renormalized over the labels, mass on the labels, position read) from a chat
    reply's ``logprobs.content``: at the first generated token that spells a label (else the first token),
    the top alternatives plus the sampled token. ``(None, 0.0, -1)`` when there is nothing to read.

    For Concordia's lower-case keys a token spelling the capital (``" B"``) counts for the key (``b``).
    """
    if not content:
        return None, 0.0, -1
    fold = _are_keys(labels)
    spell = (lambda token: _fold(token, labels)) if fold else str
    position = next((i for i, entry in enumerate(content)
                     if label_of_token(spell(str(entry.get("token", ""))), labels) is not None), 0)
    entry = content[position]
    top = [{"token": spell(str(t["token"])), "logprob": t["logprob"]} for t in entry.get("top_logprobs") or []]
    if not any(t.get("token") == entry.get("token") for t in entry.get("top_logprobs") or []):
        top.append({"token": spell(str(entry["token"])), "logprob": entry["logprob"]})  # the sampled token counts
    probs, mass = option_probabilities(top, labels)
    return probs, mass, position


def _are_keys(responses: Sequence[str]) -> bool:
    """Concordia's multiple-choice keys: ``a``, ``b``, ... in order."""
    return bool(responses) and list(responses) == _LETTERS[:len(responses)]


def _fold(token: str, keys: Sequence[str]) -> str:
    """A token spelling a capital key (``" B"``) as the lower-case key (``" b"``); any other token as it is."""
    upper = [key.upper() for key in keys]
    label = label_of_token(token, upper)
    return token.replace(label, label.lower(), 1) if label is not None else token


class HashingEmbedder:
    """Text -> a unit vector of ``dim`` floats: each word (lower-cased) hashed to a signed bucket.

    A sentence embedder for Concordia's memory banks with no model behind it: deterministic, and
    texts sharing words score a higher cosine; nothing semantic beyond that.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def __call__(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float64)
        for word in re.findall(r"\w+", text.casefold()):
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            vector[value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        norm = np.linalg.norm(vector)
        if norm == 0:
            vector[0] = 1.0  # an empty text still gets a unit vector (cosine with anything is defined)
            return vector
        return vector / norm


class SteeredLanguageModel(_concordia_lm.LanguageModel):
    """Concordia's ``LanguageModel`` over an emolab server, every request carrying this agent's steering.

    ``client``: a ``SteeringClient`` (several models may share one), or give ``base_url``/``api_key``.
    ``steering``: a steering or a callable returning one (read at every request). ``max_tokens``: a cap on
    every request; ``temperature``/``top_p``/``top_k``/``seed``: where set, replace what Concordia passes.
    ``logprobs``: True (always ask), False (never: text only) or None (ask until the server refuses).
    """

    def __init__(self, client: SteeringClient | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, model: str | None = None, steering: Steerer = None,
                 name: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
                 system_message: str | None = DEFAULT_SYSTEM_MESSAGE,
                 choice_system_message: str | None = CHOICE_SYSTEM_MESSAGE, choice_max_tokens: int = 8,
                 choice_attempts: int = 5, top_logprobs: int = 20, logprobs: bool | None = None,
                 extra_body: Mapping[str, Any] | None = None, measurements: Any = None,
                 channel: str = _concordia_lm.DEFAULT_STATS_CHANNEL) -> None:
        if client is None:
            kwargs = {"base_url": base_url} if base_url else {}
            client = SteeringClient(**kwargs, api_key=api_key, model=model)
        elif base_url is not None or api_key is not None or model is not None:
            raise ValueError("give either a client or base_url/api_key/model, not both")
        if choice_attempts < 1:
            raise ValueError(f"choice_attempts must be at least 1, got {choice_attempts}")
        self.client = client
        self.steering = steering
        self.name = name
        self.max_tokens, self.temperature, self.top_p, self.top_k, self.seed = (
            max_tokens, temperature, top_p, top_k, seed)
        self.system_message, self.choice_system_message = system_message, choice_system_message
        self.choice_max_tokens, self.choice_attempts, self.top_logprobs = choice_max_tokens, choice_attempts, top_logprobs
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        self._measurements, self._channel = measurements, channel

    # ------------------------------------------------------------------ requests
    def current_steering(self) -> SteeringSpec:
        """The steering the next request carries (the callable's current answer, if one was given)."""
        steering = self.steering
        if callable(steering) and not isinstance(steering, (Mapping, Sequence)):
            return steering()
        return steering

    def _messages(self, system: str | None, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": prompt}]

    def _request(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float | None,
                 top_p: float | None, top_k: int | None, seed: int | None, stop: Sequence[str],
                 timeout: float | None, logprobs: bool) -> Any:
        kwargs: dict[str, Any] = {"max_tokens": max(1, int(max_tokens))}
        for key, value in (("temperature", temperature), ("top_p", top_p), ("seed", seed), ("user", self.name),
                           ("timeout", timeout)):
            if value is not None:
                kwargs[key] = value
        stops = [s for s in stop if s][:MAX_STOPS]
        if stops:
            kwargs["stop"] = stops
        if logprobs:
            kwargs["logprobs"], kwargs["top_logprobs"] = True, self.top_logprobs
        body = dict(self.extra_body)
        if top_k is not None:
            body["top_k"] = top_k
        try:
            return self.client.chat_completion(messages, self.current_steering(), extra_body=body or None, **kwargs)
        except openai.APITimeoutError as exc:  # Concordia's contract: TimeoutError
            raise TimeoutError(str(exc)) from exc

    def _chat_with_logprobs(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        """A request asking for logprobs unless this server refused them; a refusal is remembered."""
        if self.logprobs is False:
            return self._request(messages, logprobs=False, **kwargs)
        try:
            return self._request(messages, logprobs=True, **kwargs)
        except Exception as exc:
            if self.logprobs is None and _refuses_logprobs(exc):
                self.logprobs = False
                return self._request(messages, logprobs=False, **kwargs)
            raise

    def _publish(self, datum: Mapping[str, Any]) -> None:
        if self._measurements is not None:
            self._measurements.publish_datum(self._channel, dict(datum))

    # ------------------------------------------------------------------ Concordia's interface
    def sample_text(self, prompt: str, *, max_tokens: int = _concordia_lm.DEFAULT_MAX_TOKENS,
                    terminators: Collection[str] = _concordia_lm.DEFAULT_TERMINATORS,
                    temperature: float = _concordia_lm.DEFAULT_TEMPERATURE, top_p: float | None = None,
                    top_k: int | None = None, timeout: float = _concordia_lm.DEFAULT_TIMEOUT_SECONDS,
                    seed: int | None = None) -> str:
        cap = max_tokens if self.max_tokens is None else min(max_tokens, self.max_tokens)
        reply = self._request(
            self._messages(self.system_message, prompt), max_tokens=cap,
            temperature=_first(self.temperature, temperature), top_p=_first(self.top_p, top_p),
            top_k=_first(self.top_k, top_k), seed=_first(seed, self.seed), stop=list(terminators),
            timeout=timeout, logprobs=False)
        text = cut_at_terminators(reply.choices[0].message.content or "", terminators)
        self._publish({"raw_text_length": len(text)})
        return text

    def sample_choice(self, prompt: str, responses: Sequence[str], *,
                      seed: int | None = None) -> tuple[int, str, dict[str, Any]]:
        if not responses:
            raise ValueError("sample_choice needs at least one response")
        question, labels = choice_prompt(prompt, responses)
        messages = self._messages(self.choice_system_message, question)
        keywords = None if labels == list(responses) else {label: [r] for label, r in zip(labels, responses, strict=True) if r}
        text = ""
        seed = _first(seed, self.seed)
        for attempt in range(self.choice_attempts):
            reply = self._chat_with_logprobs(  # greedy first, then warmer (and another seed) on each retry
                messages, max_tokens=self.choice_max_tokens,
                temperature=dynamically_adjust_temperature(attempt + 1, self.choice_attempts),
                top_p=None, top_k=None, seed=None if seed is None else seed + attempt, stop=(), timeout=None)
            choice = reply.choices[0]
            text = choice.message.content or ""
            content = _logprob_content(choice)
            probs, mass, _ = label_probabilities(content, labels)
            info: dict[str, Any] = {"text": text, "attempts": attempt + 1, "labels": labels, "mass": mass,
                                    "label_probabilities": probs, "probabilities": None}
            if probs is not None:
                index = max(range(len(labels)), key=lambda i: probs[labels[i]])
                info["method"] = "logprobs"
                info["probabilities"] = [probs[label] for label in labels]  # aligned with responses
            else:
                index = _index_from_text(text, labels, responses, keywords)
                if index is None:
                    continue
                info["method"] = "text"
            self._publish({"choices_calls": attempt})
            return index, responses[index], info
        raise InvalidResponseError(f"Too many multiple choice attempts ({self.choice_attempts}).\n"
                                   f"Last attempt: {text!r}, labels: {labels}")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _refuses_logprobs(exc: Exception) -> bool:
    """A 400 naming ``logprobs``/``top_logprobs`` (the HF backend's ``unsupported_field``)."""
    if getattr(exc, "status_code", None) != 400:
        return False
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, Mapping) else None
    param = str(error.get("param") or "") if isinstance(error, Mapping) else ""
    return param in ("logprobs", "top_logprobs") or "logprobs" in str(exc)


def _logprob_content(choice: Any) -> list[dict[str, Any]] | None:
    """A chat choice's ``logprobs.content`` as plain dicts (None when the server sent none)."""
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    return [item.model_dump() if hasattr(item, "model_dump") else dict(item) for item in content]


def _index_from_text(text: str, labels: Sequence[str], responses: Sequence[str],
                     keywords: Mapping[str, Sequence[str]] | None) -> int | None:
    """The option a free-text reply chose: a label written as an answer, the reply equal to one response,
    or exactly one response's text in it; else None."""
    label = parse_choice(text, labels, keywords=keywords)
    if label is not None:
        return list(labels).index(label)
    if _are_keys(labels):  # Concordia's keys, answered as "(B)"
        upper = [label.upper() for label in labels]
        label = parse_choice(text, upper)
        if label is not None:
            return upper.index(label)
    stripped = text.strip().strip(".\"'")
    if stripped in responses:
        return list(responses).index(stripped)
    return None
