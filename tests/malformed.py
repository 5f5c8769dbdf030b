"""Hypothesis strategies for request bodies that every emolab backend must refuse with a 4xx.

Each body starts from a valid chat or text-completion request and gets one mutation that makes it
invalid on *both* backends (so a 2xx is a bug, whichever backend answers). ``malformed_requests``
draws ``(path, raw body bytes)``.
"""

from __future__ import annotations

import json
import math
import re

from hypothesis import strategies as st

from emolab.serve.schema import ROLES

EMOTIONS = ("anger", "joy", "sadness", "disgust", "fear", "surprise")
# What a server may steer besides: the committed SmolLM2 bundle (the vLLM tests') also has the derived directions,
# ids 6 and 7. A "bad" id or name is bad on both backends, so these are never drawn as bad.
STEERABLE = (*EMOTIONS, "valence", "arousal")
MAX_ALPHA = 10.0
MAX_PAIRS = 16
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def _bad_id_text(text: str) -> bool:
    key = text.strip().lower()
    if key in STEERABLE:
        return False
    return not (_INTEGER.fullmatch(key) and 0 <= int(key) < len(STEERABLE))


def _bad_alpha_text(text: str) -> bool:
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return True
    return not math.isfinite(value) or abs(value) > MAX_ALPHA


junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
good_id = st.one_of(st.integers(0, len(EMOTIONS) - 1), st.sampled_from(EMOTIONS))
good_alpha = st.floats(-MAX_ALPHA, MAX_ALPHA)
bad_id = st.one_of(
    st.integers().filter(lambda i: not 0 <= i < len(STEERABLE)), st.text(max_size=12).filter(_bad_id_text),
    st.floats(allow_nan=False).filter(lambda f: not f.is_integer() or not 0 <= f < len(STEERABLE)),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2), st.sampled_from(["--1", "²", "١", "0x1"]),
)
bad_alpha = st.one_of(
    st.floats(allow_nan=False).filter(lambda f: abs(f) > MAX_ALPHA), st.text(max_size=10).filter(_bad_alpha_text),
    st.booleans(), st.none(), st.lists(st.floats(), max_size=2), st.integers(min_value=10**20),
    st.integers(max_value=-(10**20)), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
bad_steering = st.one_of(
    st.tuples(good_id, good_alpha, good_id).map(list),                                  # odd length
    st.tuples(bad_id, good_alpha).map(list),
    st.tuples(good_id, bad_alpha).map(list),
    st.lists(st.tuples(good_id, good_alpha), min_size=MAX_PAIRS + 1, max_size=MAX_PAIRS + 4).map(
        lambda pairs: [x for pair in pairs for x in pair]),                              # too many pairs
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(),
              st.dictionaries(st.sampled_from(EMOTIONS), good_alpha, min_size=1, max_size=2)),  # not a list
)
misspelled = st.sampled_from(["Steering", "steer", "STEERING", "steerings", "sterring", "steering_vector",
                              "emotion", "emotions", "vllm_xarg", "vllmXargs", "vllm-xargs", "xargs", "extra_body"])
unknown_model = st.one_of(st.text(max_size=12).filter(lambda m: m != "__served__"), st.integers(), st.booleans(),
                          st.lists(st.text(max_size=3), max_size=2), st.floats(allow_nan=False))
bad_role = st.text(max_size=10).filter(lambda r: r not in ROLES)
bad_message = st.one_of(
    st.builds(lambda r: {"role": r, "content": "hi"}, bad_role),
    st.just({"content": "hi"}),
    st.builds(lambda c: {"role": "user", "content": c}, st.one_of(st.integers(), st.floats(allow_nan=False),
                                                                   st.booleans(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))),
    st.builds(lambda t: {"role": "user", "content": [{"type": t, "text": "hi"}]}, st.text(max_size=8).filter(lambda t: t != "text")),
    st.builds(lambda x: {"role": "user", "content": [{"type": "text", "text": x}]}, st.one_of(st.integers(), st.none())),
    st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
)
bad_messages = st.one_of(st.just([]), st.text(max_size=5), st.integers(), st.none(),
                         st.lists(bad_message, min_size=1, max_size=3))
bad_field = st.one_of(
    st.tuples(st.just("max_tokens"), st.one_of(st.integers(max_value=0), st.integers(min_value=2**31),
                                               st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
                                               st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2))),
    st.tuples(st.just("temperature"), st.one_of(st.floats(max_value=-1e-9, allow_nan=False),
                                                st.floats(min_value=2.0001, allow_nan=False), st.text(max_size=5),
                                                st.booleans(), st.lists(st.floats(), max_size=2))),
    st.tuples(st.just("top_p"), st.one_of(st.floats(max_value=0.0, allow_nan=False),
                                          st.floats(min_value=1.0001, allow_nan=False), st.text(max_size=5))),
    st.tuples(st.just("seed"), st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1),
                                         st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
                                         st.text(max_size=5), st.booleans())),
    st.tuples(st.just("stop"), st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=3),
                                         st.just([""]), st.lists(st.just("x"), min_size=17, max_size=20))),
    st.tuples(st.just("stream"), st.one_of(st.integers(), st.text(max_size=4), st.lists(st.booleans(), max_size=2))),
    st.tuples(st.just("n"), st.one_of(st.integers(max_value=0), st.integers(min_value=129), st.text(max_size=3),
                                      st.booleans())),
    st.tuples(st.just("stream_options"), st.just({"include_usage": True})),                 # without stream
    st.tuples(st.just("vllm_xargs"), st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5),
                                               st.integers(), st.booleans())),
)
bad_chat_field = st.one_of(  # chat only (a text completion has no template to continue)
    # true: with the default generation prompt; and a user message, not a begun reply, is last
    st.tuples(st.just("continue_final_message"), st.one_of(st.just(True), st.text(max_size=4), st.integers())),
    st.tuples(st.just("add_generation_prompt"), st.one_of(st.text(max_size=4), st.integers(), st.none())),
)
raw_garbage = st.one_of(
    st.binary(max_size=40).filter(lambda b: not _is_json_object(b)),
    st.sampled_from([b"", b"   ", b"{bad", b"[1, 2]", b'"text"', b"null", b"3", b"[" * 50_000, b"\xff\xfe{}",
                     b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                     b'{"messages": [{"role": "user", "content": "hi"}], "steering": [0, Infinity]}',
                     b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 4400 + b"}",
                     b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 4400 + b"}"]),
)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def _chat(model: str, **changes) -> tuple[str, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **changes}
    return CHAT, json.dumps(body).encode()


def malformed_requests(model: str, vocab: int) -> st.SearchStrategy[tuple[str, bytes]]:
    """``(path, body)`` pairs, each invalid on both backends, for a server serving ``model``."""

    def completion(**changes) -> tuple[str, bytes]:
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 2, **changes}
        return COMPLETIONS, json.dumps(body).encode()

    bad_prompt = st.one_of(st.integers(), st.just([]), st.lists(st.lists(st.integers(0, 5), max_size=2), min_size=1, max_size=2),
                           st.lists(st.integers(min_value=vocab), min_size=1, max_size=3),
                           st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
    model_unknown = unknown_model.map(lambda m: "not-" + m if m == model else m)
    return st.one_of(
        bad_steering.map(lambda s: _chat(model, vllm_xargs={"steering": s})),
        bad_steering.map(lambda s: _chat(model, steering=s)),
        bad_steering.map(lambda s: completion(vllm_xargs={"steering": s})),
        st.tuples(misspelled, junk).map(lambda kv: _chat(model, **{kv[0]: kv[1]})),
        st.tuples(misspelled.filter(lambda k: k != "extra_body"), junk).map(
            lambda kv: _chat(model, vllm_xargs={kv[0]: kv[1]})),
        model_unknown.map(lambda m: _chat(m)),
        bad_messages.map(lambda m: _chat(model, messages=m)),
        bad_field.map(lambda kv: _chat(model, **{kv[0]: kv[1]})),
        bad_field.map(lambda kv: completion(**{kv[0]: kv[1]})),
        bad_chat_field.map(lambda kv: _chat(model, **{kv[0]: kv[1]})),
        bad_prompt.map(lambda p: completion(prompt=p)),
        raw_garbage.map(lambda raw: (CHAT, raw)),
    )
