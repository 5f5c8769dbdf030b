"""The readout's slots under churn: a full engine where requests finish and arrive in the same step.

A GPU run (H200, N=256 reading requests, max_num_seqs 256) once lost the readout of ~10% of the requests:
slots were freed only after a background thread had written the finished request's part, so the requests
that arrived in the step another finished found none free. Slots are now freed as soon as the copy is
queued, on both devices in the same place. On CPU the copy is synchronous, so this test checks the churn's
bookkeeping (every request a slot, every part equal to sums computed by hand), not the GPU's timing; the GPU
run of `scripts/gpu/features.sh` counts the readouts a full engine loses (none expected).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from emolab.fastpath.readout_slots import NO_SLOT, ReadoutBuffers
from emolab.fastpath.readout_store import choice_index, collect, new_key, parse_xarg, readout_xarg


def test_full_engine_churn_reads_every_request(tmp_path, caplog):
    capacity, prompt_len, steps = 4, 3, 40
    buffers = ReadoutBuffers([7], 2, max_tokens=64, max_requests=capacity, token_slots=64,
                             device=torch.device("cpu"), folder=tmp_path)
    keys, expected, computed = {}, {}, {}
    in_flight: list[str] = []
    serial = 0

    def arrive() -> None:
        nonlocal serial
        req_id = f"r{serial}"
        serial += 1
        keys[req_id] = new_key()
        buffers.add(req_id, f"{keys[req_id]}:per_token", max_tokens=16)
        expected[req_id] = np.zeros((2, 2))  # [prompt, generated] sums of both emotions
        computed[req_id] = 0
        in_flight.append(req_id)

    for _ in range(capacity):
        arrive()
    for step in range(steps):
        # Each request's next position: its whole prompt at first, then one generated token per step.
        counts = np.array([prompt_len if computed[r] == 0 else 1 for r in in_flight])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        positions = np.concatenate([np.arange(computed[r], computed[r] + c) for r, c in zip(in_flight, counts, strict=True)])
        buffers.layout(list(in_flight), starts, counts, np.full(len(in_flight), prompt_len), positions)
        before = torch.tensor([[step + 0.5 * p, -float(p)] for p in positions], dtype=torch.float32)
        buffers.accumulate(0, before)
        for i, req_id in enumerate(in_flight):
            for p in positions[starts[i]:starts[i] + counts[i]]:
                if p > 0:  # position 0: the attention sink, never read
                    expected[req_id][0 if p < prompt_len else 1] += [step + 0.5 * p, -float(p)]
            computed[req_id] += int(counts[i])
        # The oldest request leaves and a new one takes its place in the same step: the engine stays full.
        done = in_flight.pop(0)
        buffers.finish(done)
        arrive()
    assert "no readout slot free" not in caplog.text
    finished = serial - capacity
    for n in range(finished):
        req_id = f"r{n}"
        (path,) = tmp_path.glob(f"{keys[req_id]}.*.json")
        part = json.loads(path.read_text())
        assert part["prompt_count"] == prompt_len - 1
        assert part["generated_count"] == computed[req_id] - prompt_len
        np.testing.assert_allclose(part["prompt_sum"][0], expected[req_id][0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(part["generated_sum"][0], expected[req_id][1], rtol=0, atol=1e-5)
        assert len(part["per_token"]) == computed[req_id] - prompt_len


def test_chunked_prompt_and_recomputed_positions_are_read_once(tmp_path):
    """A prompt read in two chunks, then the whole request recomputed from position 0 (as after a preemption),
    beside a request that does not read: each position is counted once, the other request's tokens nowhere."""
    buffers = ReadoutBuffers([0, 5], 1, max_tokens=32, max_requests=2, token_slots=8, device=torch.device("cpu"),
                             folder=tmp_path)
    key = new_key()
    buffers.add("reader", f"{key}:per_token", max_tokens=4)
    prompt_len = 5

    def step(reader_positions, other_count=2):
        positions = np.array([*reader_positions, *range(other_count)])
        counts = np.array([len(reader_positions), other_count])
        buffers.layout(["reader", "other"], np.array([0, len(reader_positions)]), counts,
                       np.array([prompt_len, 3]), positions)
        buffers.accumulate(0, torch.tensor(positions, dtype=torch.float32)[:, None])
        buffers.accumulate(1, 10 * torch.tensor(positions, dtype=torch.float32)[:, None])

    step([0, 1, 2])          # first chunk of the prompt (position 0: the sink)
    step([3, 4])             # the rest of it
    step([5])                # first generated token
    step([0, 1, 2, 3, 4, 5])  # recomputed from the start: nothing new to read
    step([6])
    buffers.finish("reader")
    (path,) = tmp_path.glob(f"{key}.*.json")
    part = json.loads(path.read_text())
    assert part["layers"] == [0, 5]
    assert (part["prompt_count"], part["generated_count"]) == (4, 2)
    assert part["prompt_sum"] == [[1 + 2 + 3 + 4], [10 * (1 + 2 + 3 + 4)]]
    assert part["generated_sum"] == [[5 + 6], [10 * (5 + 6)]]
    assert part["per_token"] == [[[5.0], [50.0]], [[6.0], [60.0]]]


def test_a_request_without_a_slot_is_answered_at_once_and_its_neighbour_still_reads(tmp_path, caplog):
    """More reading requests than slots: the one left out writes a part that says so, so the API server answers
    at once with the reason (not after its time-out), and the request that holds the slot reads as usual."""
    buffers = ReadoutBuffers([0], 1, max_tokens=16, max_requests=1, token_slots=8, device=torch.device("cpu"),
                             folder=tmp_path)
    first, second = new_key(), new_key()
    buffers.add("first", f"{first}:means", max_tokens=4)
    buffers.add("second", f"{second}:means", max_tokens=4)
    assert "no readout slot free" in caplog.text
    assert collect(tmp_path, second, 1) == {"unavailable": NO_SLOT}
    assert not list(tmp_path.glob(f"{second}.*"))  # collected once, then gone
    positions = np.array([0, 1, 2, 0, 1])
    buffers.layout(["first", "second"], np.array([0, 3]), np.array([3, 2]), np.array([2, 2]), positions)
    buffers.accumulate(0, torch.tensor(positions, dtype=torch.float32)[:, None] + 1)
    buffers.finish("second")  # holds no slot: nothing to write
    buffers.finish("first")
    found = collect(tmp_path, first, 1)
    assert (found["prompt_count"], found["generated_count"]) == (1, 1)
    assert found["prompt_sum"].tolist() == [[2.0]] and found["generated_sum"].tolist() == [[3.0]]


def test_each_of_n_choices_is_read_under_its_own_key_and_an_id_of_another_form_is_not(tmp_path, caplog):
    """vLLM runs choice i of an n > 1 request as "{i}_{request id}": each choice's part goes to "<key>-<i>", so
    the API server answers every choice with its own reading; an id not of that form reads nothing (logged)."""
    buffers = ReadoutBuffers([0], 1, max_tokens=16, max_requests=4, token_slots=8, device=torch.device("cpu"),
                             folder=tmp_path)
    key = new_key()
    for req_id in ("0_cmpl-a", "1_cmpl-a", "cmpl-a", "2_cmpl-a"):
        buffers.add(req_id, f"{key}:means:2", max_tokens=4)
    assert "request cmpl-a: not one of 2 choices" in caplog.text
    assert "request 2_cmpl-a: not one of 2 choices" in caplog.text
    ids = ["0_cmpl-a", "1_cmpl-a"]
    positions = np.array([0, 1, 2, 0, 1, 2])
    buffers.layout(ids, np.array([0, 3]), np.array([3, 3]), np.array([2, 2]), positions)
    buffers.accumulate(0, torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])[:, None])
    for req_id in ids:
        buffers.finish(req_id)
    first, second = collect(tmp_path, f"{key}-0", 1), collect(tmp_path, f"{key}-1", 1)
    assert first["prompt_sum"].tolist() == [[2.0]] and first["generated_sum"].tolist() == [[3.0]]
    assert second["prompt_sum"].tolist() == [[20.0]] and second["generated_sum"].tolist() == [[30.0]]
    assert not list(tmp_path.glob(f"{key}.*"))  # nothing under the request's own key


def test_readout_entries_parse_with_and_without_a_choice_count():
    key = new_key()
    assert parse_xarg(readout_xarg(key, "means")) == (key, "means", 1) == parse_xarg(f"{key}:means")
    assert parse_xarg(readout_xarg(key, "per_token", 3)) == (key, "per_token", 3)
    for bad in (f"{key}:means:0", f"{key}:means:129", f"{key}:means:x", f"{key}:means:-2", f"{key}:other", "k:means",
                3, None):
        assert parse_xarg(bad) is None
    assert [choice_index(r, 3) for r in ("0_x", "2_cmpl-1_2", "3_x", "x_1", "01_x", "cmpl-1")] == [0, 2, None, None, 1,
                                                                                                 None]
