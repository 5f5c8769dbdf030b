"""Multi-agent, multi-turn conversations: N agents share a feed; some carry an emotion, fixed or by a state rule.

One conversation per condition x replicate (a seed). Turn t is synchronous: every agent of every
conversation reads the feed as it stood at the start of turn t (its last ``window`` messages) and
replies; all those requests are in flight at once (one wave, so vLLM batches them); each reply is
judged (the independent MiniLM judge of ``emolab.evaluate.judge``) and logged as it lands, and once
the wave is in, the replies join their feeds in agent order. The seeded agents (the first ``agents.seeded``) carry the condition: steered, prompted
or both; with ``state.rule: decay`` every agent's emotion level follows ``next_level`` (it decays
toward a baseline and is nudged by the judged emotion of what the agent read), so affect can persist
and spread through steering too. Contagion is read from the unseeded agents' judged emotion.

Because turns are synchronous and every input is logged, a resumed run rebuilds each feed and each
level from ``trials.jsonl`` and asks only for the replies still missing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from emolab.simulate.design import Condition, emotion_instruction, fill, sampling_kwargs, trial_id
from emolab.simulate.errors import SimulationError
from emolab.simulate.log import RunLog
from emolab.simulate.spec import ExperimentSpec, StateSpec

__all__ = ["Conversation", "agent_messages", "judge_texts", "next_level", "run_conversations", "trajectory"]

MODERATOR = "Moderator"


def next_level(state: StateSpec, level: float, read: float) -> float:
    """The state rule: decay toward the baseline, nudged by what was read, clipped to [low, high]."""
    if state.rule == "fixed":
        return level
    value = state.baseline + state.decay * (level - state.baseline) + state.gain * (read - state.reference)
    return min(state.high, max(state.low, value))


def trajectory(state: StateSpec, initial: float, reads: list[float]) -> list[float]:
    """The levels at turns 0..len(reads): ``initial``, then ``next_level`` after each turn's reading."""
    levels = [initial]
    for read in reads:
        levels.append(next_level(state, levels[-1], read))
    return levels


@dataclass
class Conversation:
    condition: Condition
    replicate: int  # index into spec.seeds
    feed: list[dict[str, Any]] = field(default_factory=list)  # {"speaker", "text", "judged"}
    levels: list[float] = field(default_factory=list)


def agent_messages(spec: ExperimentSpec, conv: Conversation, agent: int) -> list[dict[str, str]]:
    """What agent ``agent`` is sent: its persona (and the emotion asked for, when prompted), the recent feed."""
    a = spec.agents
    name = a.names[agent]
    persona = a.personas[(agent + conv.replicate) % len(a.personas)]
    system = fill(spec.system, persona=persona, name=name) if spec.system else (
        f"You are {name}, {persona}, taking part in a group chat. Reply with one or two short sentences.")
    if conv.condition.prompted and agent < a.seeded:
        system = f"{system} {emotion_instruction(spec, conv.condition.emotion)}"
    recent = "\n".join(f"{m['speaker']}: {m['text']}" for m in conv.feed[-spec.window:])
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"The chat so far:\n{recent}\n\nWrite {name}'s next message."}]


def _steering(spec: ExperimentSpec, conv: Conversation, agent: int) -> dict[str, float] | None:
    if not conv.condition.steered:
        return None
    if spec.state.rule == "fixed" and agent >= spec.agents.seeded:
        return None
    return conv.condition.steering(round(conv.levels[agent], 6))


def _reply_id(spec: ExperimentSpec, conv: Conversation, turn: int, agent: int) -> str:
    return trial_id({"experiment": spec.name, "condition": conv.condition.name, "replicate": conv.replicate,
                     "turn": turn, "agent": agent})


def _initial_levels(spec: ExperimentSpec, condition: Condition) -> list[float]:
    a, s = spec.agents, spec.state
    return [s.initial if i < a.seeded and condition.steered else s.baseline for i in range(a.count)]


def judge_texts(judge: Any, texts: list[str]) -> list[dict[str, float] | None]:
    """The judge's probability of each emotion for each text (``None`` each when there is no judge)."""
    if judge is None:
        return [None] * len(texts)
    proba = judge.predict_proba(texts)
    return [{e: round(float(p), 6) for e, p in zip(judge.emotions, row, strict=True)} for row in proba]


def _read_score(spec: ExperimentSpec, conv: Conversation, emotion: str | None) -> float:
    """The judged probability of the condition's emotion in the window the agents just read."""
    if emotion is None:
        return spec.state.reference
    seen = [m["judged"][emotion] for m in conv.feed[-spec.window:] if m.get("judged") and emotion in m["judged"]]
    return sum(seen) / len(seen) if seen else spec.state.reference


def _own_reading(spec: ExperimentSpec, record: dict[str, Any], emotion: str | None) -> float:
    """An agent's readout of the condition's emotion over the prompt it read (its state after reading)."""
    if emotion is None:
        return spec.state.reference
    value = ((record.get("readout") or {}).get("prompt") or {}).get(emotion)
    return spec.state.reference if value is None else float(value)


async def run_conversations(spec: ExperimentSpec, client: Any, log: RunLog, conds: list[Condition], *,
                            progress: bool = True, limit: int | None = None, judge: Any = "auto") -> None:
    """Run (or resume) every conversation of the spec, turn by turn; each reply is logged as it lands.

    ``judge``: an ``EmotionJudge``, ``"auto"`` (the cached MiniLM judge), or ``None`` to judge later
    (``emolab simulate report`` judges what the log lacks); the decay rule reads the judge every turn,
    so it cannot go without one.
    """
    from tqdm.auto import tqdm

    from emolab.api_client.client import readout_of

    reads_readout = spec.state.read == "readout"
    if judge is None and spec.state.rule != "fixed" and not reads_readout:
        raise SimulationError("state.rule: decay reads the judged emotion every turn; it needs the judge")
    if judge == "auto":
        from emolab.evaluate.judge import load_or_train_judge

        judge = load_or_train_judge()
    convs = [Conversation(c, r) for c in conds for r in range(len(spec.seeds))]
    for conv in convs:
        conv.feed = [{"speaker": MODERATOR, "text": spec.opening, "judged": None}]
        conv.levels = _initial_levels(spec, conv.condition)
    logged = {r["trial_id"]: r for r in log.records}
    total = len(convs) * spec.turns * spec.agents.count
    log.update_meta(n_trials=total)
    bar = tqdm(total=total, initial=len(logged), desc=spec.name, unit="reply", disable=not progress)
    gate = asyncio.Semaphore(spec.concurrency)
    budget = [limit if limit is not None else total]

    async def reply(conv: Conversation, turn: int, agent: int, tid: str) -> None:
        async with gate:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            messages = agent_messages(spec, conv, agent)
            steering = _steering(spec, conv, agent)
            began = time.time()
            seed = spec.seeds[conv.replicate] * 100_003 + turn * 1009 + agent
            extra = {"readout": True} if reads_readout else {}
            response = await client.chat_completion(messages, steering, **sampling_kwargs(spec, seed, False), **extra)
            choice = response.choices[0]
            record = {
                "trial_id": tid, "experiment": spec.name, "kind": spec.kind, "condition": conv.condition.name,
                "condition_kind": conv.condition.kind, "emotion": conv.condition.emotion,
                "multiple": conv.condition.multiple, "alpha": conv.condition.alpha, "replicate": conv.replicate,
                "seed": spec.seeds[conv.replicate], "turn": turn, "agent": agent, "name": spec.agents.names[agent],
                "seeded": agent < spec.agents.seeded, "level": round(conv.levels[agent], 6), "steering": steering,
                "messages": messages, "reply": (choice.message.content or "").strip(),
                "finish_reason": choice.finish_reason,
                "usage": response.usage.model_dump() if response.usage is not None else None,
                "latency_s": round(time.time() - began, 4), "t_start": round(began, 4)}
            if reads_readout:  # the agent's own internal reading of the feed (and of its reply), from the server
                record["readout"] = readout_of(response)
                if not record["readout"] or record["readout"].get("error"):
                    raise SimulationError(f"state.read: readout, but the server returned no readout: "
                                          f"{record['readout']}")
            # judged and logged the moment it lands: a kill mid-turn loses no finished reply
            record["judged"] = judge_texts(judge, [record["reply"]])[0]
            log.append(record)
            logged[tid] = record
            bar.update(1)

    try:
        for turn in range(spec.turns):
            jobs = []
            for conv in convs:
                for agent in range(spec.agents.count):
                    tid = _reply_id(spec, conv, turn, agent)
                    if tid not in logged:
                        jobs.append((conv, agent, asyncio.ensure_future(reply(conv, turn, agent, tid))))
            try:
                await asyncio.gather(*(job for _, _, job in jobs))
            except Exception as exc:
                for _, _, job in jobs:
                    job.cancel()
                raise SimulationError(f"turn {turn}: a request failed ({type(exc).__name__}: {exc}); run the same "
                                      "output folder again to resume") from None
            complete = True
            for conv in convs:
                turn_records = [logged.get(_reply_id(spec, conv, turn, agent)) for agent in range(spec.agents.count)]
                if any(r is None for r in turn_records):
                    complete = False
                    continue
                for record in turn_records:
                    conv.feed.append({"speaker": record["name"], "text": record["reply"], "judged": record["judged"]})
                if reads_readout:  # per agent: its own readout of the feed it read this turn
                    reads = [_own_reading(spec, record, conv.condition.emotion) for record in turn_records]
                else:  # per conversation: the judged emotion of the window every agent read
                    reads = [_read_score(spec, conv, conv.condition.emotion)] * len(turn_records)
                conv.levels = [next_level(spec.state, level, read) if conv.condition.steered else level
                               for level, read in zip(conv.levels, reads, strict=True)]
            if not complete:  # the limit ran out inside this turn: the rest waits for a resumed run
                return
    finally:
        bar.close()
