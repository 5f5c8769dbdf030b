"""GPU exactness check of the vLLM fast path (default model runner, CUDA graphs on, bf16).

Runs the engine scenarios of tests/test_vllm_engine.py on the Qwen3-8B shape with dummy weights,
plugin on and plugin not loaded, with vLLM's batch-invariant kernels (``VLLM_BATCH_INVARIANT=1``) so
that "batch equals solo" is a meaningful exact comparison in bf16. Prints a JSON verdict.
Usage: python scripts/gpu/exactness.py MODEL_DIR BUNDLE_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fastpath"))

from test_engine import MIXED, STAGGERED, solo, strip  # noqa: E402


def run(name: str, job: dict, out_dir: Path, env: dict) -> dict:
    job_path, out_path = out_dir / f"{name}.job.json", out_dir / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    with open(out_dir / f"{name}.log", "w") as log:
        code = subprocess.call([sys.executable, str(REPO / "tests" / "fastpath" / "vllm_job.py"), str(job_path), str(out_path)],
                               env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{name} failed; see {out_dir / (name + '.log')}")
    return json.loads(out_path.read_text())


def main(model: str, bundle: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = dict(model=model, load_format="dummy", dtype="bfloat16", seed=0, max_model_len=2048, max_num_seqs=64,
                  max_num_batched_tokens=256, enable_chunked_prefill=True, enable_prefix_caching=False,
                  gpu_memory_utilization=0.85)
    env = {"EMOLAB_VECTORS": bundle, "VLLM_BATCH_INVARIANT": "1"}
    on = run("on", {"engine": engine, "scenarios": {
        "mixed": {"kind": "batch", "requests": MIXED},
        "mixed_solo": {"kind": "sequence", "requests": MIXED},
        "staggered": {"kind": "staggered", "requests": STAGGERED},
        "staggered_solo": {"kind": "sequence", "requests": solo(STAGGERED)},
    }}, out_dir, env)
    off = run("off", {"engine": engine, "scenarios": {"mixed": {"kind": "batch", "requests": strip(MIXED)}}},
              out_dir, {**env, "VLLM_PLUGINS": ""})
    log = (out_dir / "on.log").read_text()
    verdict = {
        "runner_line": next((line for line in log.splitlines() if "emolab steering on" in line), None),
        "unsteered_equal_no_plugin": all(
            on["mixed"][i] == off["mixed"][i] for i, r in enumerate(MIXED) if r["steering"] is None),
        "steered_differs_from_plain": all(
            on["mixed"][i]["token_ids"] != off["mixed"][i]["token_ids"] for i, r in enumerate(MIXED) if r["steering"]),
        "batch_equals_solo": [on["mixed"][i]["token_ids"] == on["mixed_solo"][i]["token_ids"] for i in range(len(MIXED))],
        "staggered_equals_solo": [on["staggered"][i]["token_ids"] == on["staggered_solo"][i]["token_ids"]
                                  for i in range(len(STAGGERED))],
    }
    (out_dir / "verdict.json").write_text(json.dumps(verdict, indent=2))
    print(json.dumps(verdict, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:4])
