"""emolab.simulate.concordia: Concordia agents, each with its own steering, over a real `emolab serve`.

The fast tests drive ``SteeredLanguageModel`` with hand-made replies (no server): the label readout from
logprobs, the text fallback, a server that refuses logprobs, Concordia's failure convention, stops and
caps. The slow ones start the HF backend on SmolLM2 with the committed bundle and run a two-step
Concordia 2.1 simulation (two ``minimal`` entity prefabs and the ``generic`` game master), every request
captured on the wire by an httpx event hook.
"""

from __future__ import annotations

import json
import math
import threading
from functools import cached_property
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
from conftest import VLLM_KEY, running_server

pytest.importorskip("concordia", reason="gdm-concordia is not installed (pip install 'emolab[concordia]'; "
                                        "make setup-test installs it)")

from emolab.api_client.client import SteeringClient  # noqa: E402
from emolab.simulate.concordia import (  # noqa: E402
    HashingEmbedder,
    InvalidResponseError,
    SteeredLanguageModel,
    choice_prompt,
    cut_at_terminators,
    label_probabilities,
)

KEY = "test-key-concordia"
STEERINGS = {"Alice": {"joy": 0.4}, "Bob": {"fear": 0.4}}  # the game master ("Narrator") is unsteered
OPTIONS = ("greet the other", "walk away")


# ------------------------------------------------------------------ no server: hand-made replies
def reply(text: str, content: list[dict] | None = None) -> SimpleNamespace:
    logprobs = SimpleNamespace(content=content) if content is not None else None
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text), logprobs=logprobs)])


def step(token: str, logprob: float, top: dict[str, float]) -> dict:
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]}


class FakeClient:
    """Answers ``chat_completion`` from a list (an exception in it is raised) and keeps every call."""

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def chat_completion(self, messages, steering=None, *, extra_body=None, **kwargs):
        self.calls.append({"messages": messages, "steering": steering, "extra_body": extra_body, **kwargs})
        answer = self.replies.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def bad_request(param: str) -> openai.BadRequestError:
    response = httpx.Response(400, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    return openai.BadRequestError("unsupported", response=response,
                                  body={"message": f"{param} is not supported", "param": param})


def test_sample_choice_is_the_argmax_of_the_renormalized_label_probabilities():
    top = {" B": math.log(0.5), " A": math.log(0.2), " C": math.log(0.05), " The": math.log(0.25)}
    client = FakeClient(reply("B", [step(" B", math.log(0.5), top), step(".", -0.1, {".": -0.1})]))
    model = SteeredLanguageModel(client, steering={"joy": 0.5}, seed=7)
    index, response, info = model.sample_choice("Where do you go?", ["stay home", "go out", "call a friend"])
    assert (index, response, info["method"]) == (1, "go out", "logprobs")
    assert info["probabilities"] == pytest.approx([0.2 / 0.75, 0.5 / 0.75, 0.05 / 0.75])
    assert sum(info["probabilities"]) == pytest.approx(1.0)
    assert info["mass"] == pytest.approx(0.75)
    call = client.calls[0]
    assert call["steering"] == {"joy": 0.5} and call["logprobs"] is True and call["top_logprobs"] == 20
    assert call["temperature"] == 0.0 and call["seed"] == 7
    question = call["messages"][-1]["content"]
    assert "(A) stay home\n(B) go out\n(C) call a friend" in question


def test_concordia_letter_keys_are_their_own_labels_and_a_capital_counts_for_the_key():
    prompt = "Question: Is it raining?\n  (a) No\n  (b) Yes\nAnswer: ("
    question, labels = choice_prompt(prompt, ["a", "b"])
    assert labels == ["a", "b"] and "(A)" not in question and not question.endswith("(")
    top = {"B": math.log(0.6), "a": math.log(0.2), "(": math.log(0.2)}
    client = FakeClient(reply("B", [step("B", math.log(0.6), top)]))
    index, response, info = SteeredLanguageModel(client).sample_choice(prompt, ["a", "b"])
    assert (index, response) == (1, "b")
    assert info["label_probabilities"] == pytest.approx({"a": 0.25, "b": 0.75})


def test_label_probabilities_reads_the_answer_position_and_counts_the_sampled_token():
    content = [step("The", -0.1, {"The": -0.1}), step(" answer", -0.1, {" answer": -0.1}),
               step(" B", math.log(0.3), {" A": math.log(0.6)})]  # B sampled outside the top k
    probs, mass, position = label_probabilities(content, ["A", "B"])
    assert position == 2 and probs == pytest.approx({"A": 2 / 3, "B": 1 / 3}) and mass == pytest.approx(0.9)
    assert label_probabilities(None, ["A", "B"]) == (None, 0.0, -1)


def test_a_server_refusing_logprobs_is_asked_again_without_and_the_text_is_parsed():
    client = FakeClient(bad_request("logprobs"), reply("I choose (B)."), reply("go out"))
    model = SteeredLanguageModel(client, steering={"fear": 1.0})
    index, _, info = model.sample_choice("Where?", ["stay home", "go out"])
    assert (index, info["method"], info["probabilities"]) == (1, "text", None)
    assert model.logprobs is False and "logprobs" not in client.calls[1]
    index, _, info = model.sample_choice("Where?", ["stay home", "go out"])  # the response's own words
    assert index == 1 and "logprobs" not in client.calls[2]


def test_unreadable_choices_raise_concordias_invalid_response_error_after_warmer_retries():
    client = FakeClient(*[reply("hmm, hard to say", [step("hmm", -0.1, {"hmm": -0.1})]) for _ in range(5)])
    model = SteeredLanguageModel(client, choice_attempts=5, seed=5)
    with pytest.raises(InvalidResponseError):
        model.sample_choice("Where?", ["stay home", "go out"])
    assert [c["temperature"] for c in client.calls] == [0.0, 0.5, 0.75, 0.75, 0.75]
    assert [c["seed"] for c in client.calls] == [5, 6, 7, 8, 9]


def test_sample_text_caps_tokens_sends_stops_cuts_at_terminators_and_reads_the_steering_each_call():
    mood = {"Carol": {"joy": 0.3}}
    client = FakeClient(reply("smiles.\nThen she leaves"), reply("sighs"))
    model = SteeredLanguageModel(client, steering=lambda: mood["Carol"], max_tokens=16, name="Carol", top_k=40)
    assert model.sample_text("Carol ", max_tokens=5000, terminators=("\n", ""), temperature=0.7) == "smiles."
    mood["Carol"] = {"sadness": 0.6}
    assert model.sample_text("Carol ", max_tokens=8, seed=3) == "sighs"
    first, second = client.calls
    assert first["steering"] == {"joy": 0.3} and second["steering"] == {"sadness": 0.6}
    assert (first["max_tokens"], second["max_tokens"]) == (16, 8)
    assert first["stop"] == ["\n"] and "stop" not in second and second["seed"] == 3
    assert first["temperature"] == 0.7 and first["user"] == "Carol" and first["extra_body"] == {"top_k": 40}
    assert first["messages"][0]["role"] == "system" and first["messages"][-1] == {"role": "user", "content": "Carol "}
    assert cut_at_terminators("a;b,c", [",", ";"]) == "a"


def test_hashing_embedder_is_deterministic_and_unit_norm():
    embed = HashingEmbedder(dim=64)
    a, b = embed("Alice meets Bob in the square"), embed("Alice meets Bob in the square")
    assert a.shape == (64,) and np.array_equal(a, b) and np.linalg.norm(a) == pytest.approx(1.0)
    assert embed("Alice meets Bob") @ a > embed("the weather was cold") @ a
    assert np.linalg.norm(embed("")) == pytest.approx(1.0)


# ------------------------------------------------------------------ a real server and a real simulation
class CapturingClient(SteeringClient):
    """A ``SteeringClient`` whose requests are also kept, as sent (bodies read by an httpx event hook)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    def _record(self, request: httpx.Request) -> None:
        if request.method == "POST":
            with self._lock:
                self.bodies.append(json.loads(request.read()))

    @cached_property
    def openai(self):
        http = httpx.Client(event_hooks={"request": [self._record]}, timeout=self.timeout)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                             max_retries=0, http_client=http)


class RecordingModel(SteeredLanguageModel):
    """Keeps what each ``sample_choice`` returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices: list[tuple[list[str], tuple]] = []

    def sample_choice(self, prompt, responses, *, seed=None):
        result = super().sample_choice(prompt, responses, seed=seed)
        self.choices.append((list(responses), result))
        return result


@pytest.fixture(scope="module")
def hf_url(smollm2_path, smollm2_bundle_path):
    with running_server(vectors=smollm2_bundle_path, model="smollm2", api_key=KEY,
                        extra_args=["--log-level", "warning"]) as url:
        yield url


def steering_ids(client: SteeringClient, steering: dict[str, float]) -> list:
    return client.steering_list(steering, client.emotions)


def run_simulation(models: dict[str, SteeredLanguageModel]) -> tuple[list, list, object]:
    """Two minimal entities and a generic game master (its costly components swapped for lighter
    Concordia ones: SmolLM2 on CPU), fixed acting order, a two-option choice each, two steps."""
    from concordia.associative_memory.basic_associative_memory import AssociativeMemoryBank
    from concordia.components import agent as agent_components
    from concordia.components import game_master as gm
    from concordia.environment.engines import sequential
    from concordia.prefabs.entity import minimal
    from concordia.prefabs.game_master import generic
    from concordia.typing import entity as entity_lib

    embedder = HashingEmbedder()
    entities = [minimal.Entity(params={"name": name, "goal": goal, "randomize_choices": False}).build(
        model=models[name], memory_bank=AssociativeMemoryBank(sentence_embedder=embedder))
        for name, goal in (("Alice", "find her lost cat"), ("Bob", "open his bakery"))]
    names, narrator, context = [e.name for e in entities], models["Narrator"], ["player_characters", "display_events"]
    action = entity_lib.choice_action_spec(call_to_action="What does {name} do now?", options=OPTIONS)
    lighter = {
        gm.terminate.DEFAULT_TERMINATE_COMPONENT_KEY: gm.terminate.Terminate(),  # max_steps ends it
        "relevant_memories": agent_components.constant.Constant(state="", pre_act_label="Background info"),
        gm.make_observation.DEFAULT_MAKE_OBSERVATION_COMPONENT_KEY: gm.make_observation.MakeObservation(
            model=narrator, player_names=names, components=context),
        gm.next_acting.DEFAULT_NEXT_ACTION_SPEC_COMPONENT_KEY: gm.next_acting.FixedActionSpec(action_spec=action),
        gm.switch_act.DEFAULT_RESOLUTION_COMPONENT_KEY: gm.event_resolution.EventResolution(
            model=narrator, event_resolution_steps=(), components=context, notify_observers=True),
    }
    prefab = generic.GameMaster(params={"name": "Narrator", "acting_order": "fixed", "extra_components": lighter})
    prefab.entities = entities
    master = prefab.build(model=narrator, memory_bank=AssociativeMemoryBank(sentence_embedder=embedder))
    log: list = []
    sequential.Sequential().run_loop(game_masters=[master], entities=entities, max_steps=2, log=log,
                                     premise="Alice and Bob meet in the village square on a sunny morning.")
    return log, entities, master


@pytest.mark.slow
def test_a_concordia_simulation_where_every_agent_carries_its_own_steering(hf_url):
    client = CapturingClient(hf_url, api_key=KEY)
    models = {name: RecordingModel(client, steering=STEERINGS.get(name), name=name, max_tokens=12, seed=i,
                                   choice_max_tokens=4)
              for i, name in enumerate(("Alice", "Bob", "Narrator"))}
    log, entities, master = run_simulation(models)

    # The simulation ran: two logged steps, Alice then Bob acting with one of the options.
    assert [entry["Step"] for entry in log] == [1, 2]
    acts = [log[0]["Entity [Alice]"]["__act__"]["Value"], log[1]["Entity [Bob]"]["__act__"]["Value"]]
    assert all(act.strip() in OPTIONS for act in acts), acts
    for entity in entities:  # each was told what it observes
        memories = entity.get_component("__memory__").get_all_memories_as_text()
        assert any("[observation]" in m for m in memories), (entity.name, memories)
    events = " ".join(master.get_component("__memory__").get_all_memories_as_text())
    assert f"Alice: {acts[0]}" in events and f"Bob: {acts[1]}" in events

    # On the wire: every request of an agent carried that agent's steering, the game master's none.
    by_agent: dict[str, list[dict]] = {}
    for body in client.bodies:
        by_agent.setdefault(body.get("user"), []).append(body)
    assert set(by_agent) == {"Alice", "Bob", "Narrator"}
    for name, bodies in by_agent.items():
        want = steering_ids(client, STEERINGS[name]) if name in STEERINGS else None
        assert all((body.get("vllm_xargs") or {}).get("steering") == want for body in bodies), name
        assert all(body["max_tokens"] <= 12 for body in bodies)

    # Each agent's action was a sample_choice over Concordia's letter keys, read from the logprobs the
    # HF backend answers (as vLLM's do).
    for name in ("Alice", "Bob"):
        model = models[name]
        assert model.choices and model.logprobs is not False, name
        for responses, (index, response, info) in model.choices:
            assert 0 <= index < len(responses) and response == responses[index]
            assert info["method"] == "logprobs" and sum(info["probabilities"]) == pytest.approx(1.0)
            assert all(p >= 0 for p in info["probabilities"]) and 0 < info["mass"] <= 1
        assert any(body.get("logprobs") is True for body in by_agent[name])


@pytest.mark.slow
def test_sample_text_over_the_server_follows_a_changing_steering_and_stops(hf_url):
    client = CapturingClient(hf_url, api_key=KEY)
    mood = {"joy": 0.4}
    model = SteeredLanguageModel(client, steering=lambda: dict(mood), name="Carol", max_tokens=6, temperature=0.0)
    first = model.sample_text("Question: What is Carol doing?\nAnswer: Carol is ", terminators=("\n", "."), seed=1)
    mood.clear()
    mood["sadness"] = 0.4
    second = model.sample_text("Question: What is Carol doing?\nAnswer: Carol is ", terminators=("\n",))
    assert "\n" not in first + second and "." not in first
    one, two = client.bodies
    assert one["vllm_xargs"]["steering"] == steering_ids(client, {"joy": 0.4})
    assert two["vllm_xargs"]["steering"] == steering_ids(client, {"sadness": 0.4})
    assert (one["max_tokens"], one["stop"], one["seed"], one["temperature"]) == (6, ["\n", "."], 1, 0.0)


@pytest.mark.slow
@pytest.mark.vllm
def test_sample_choice_reads_the_vllm_backends_logprobs(vllm_server):
    client = CapturingClient(vllm_server, api_key=VLLM_KEY)
    model = SteeredLanguageModel(client, steering={"fear": 0.4}, name="Dana", choice_max_tokens=4)
    index, response, info = model.sample_choice("Dana hears a noise in the dark house. What does she do?",
                                                ["hide under the bed", "go and look"])
    assert info["method"] == "logprobs" and response == ["hide under the bed", "go and look"][index]
    assert sum(info["probabilities"]) == pytest.approx(1.0) and 0 < info["mass"] <= 1
    (body,) = client.bodies
    assert body["logprobs"] is True and body["vllm_xargs"]["steering"] == steering_ids(client, {"fear": 0.4})
