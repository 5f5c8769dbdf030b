"""llama.cpp control-vector export.

Fast (no model): the file's layout and its round trip to the bundle's vectors x alpha, input errors, the
CLI. Slow (marked ``slow``; ~30 s together): proofs against the real llama.cpp library (libllama via
llama-cpp-python, the ``llamacpp`` extra) running the packaged SmolLM2 Q4_1 GGUF: an exported file steers
its continuation, and the layer mapping is exact by next-token logits against emolab's HF backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import run_cli

from emolab.core.bundle import EmotionBundle
from emolab.export import (
    ExportError,
    control_vector,
    emolab_layer,
    export_gguf,
    export_per_emotion,
    llamacpp_direction_index,
    parse_steering,
    read_control_vector,
    write_control_vector,
)


@pytest.fixture(scope="module")
def bundle(smollm2_bundle_path) -> EmotionBundle:
    return EmotionBundle.load(smollm2_bundle_path)


def raw_fields(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, int]]:
    """The file as the gguf package sees it, without emolab's reader."""
    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name].contents() for name in reader.fields}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    return fields, tensors, types


@pytest.mark.parametrize("scale", ["raw", "normalized"])
def test_exported_file_round_trips_to_the_bundle_vectors_times_alpha(bundle, tmp_path, scale):
    steering = {"fear": 1.5, "joy": -0.5}
    path = export_gguf(bundle, steering, tmp_path / "mix.gguf", scale=scale)
    fields, tensors, types = raw_fields(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"  # SmolLM2's llama.cpp architecture
    steered = {e: set(bundle.layers_of(e)) for e in steering}  # a tuned bundle: per-emotion layers
    layers = sorted(set().union(*steered.values()))
    assert fields["controlvector.layer_count"] == len(layers)
    assert json.loads(fields["emolab.steering"]) == steering and fields["emolab.alpha_scale"] == scale
    assert sorted(tensors) == [f"direction.{layer}" for layer in layers]
    assert set(types.values()) == {gguf.GGMLQuantizationType.F32}
    if scale == "raw":  # straight from the .npy files
        want = {L: sum(a * bundle.vector(e, L) for e, a in steering.items() if L in steered[e]) for L in layers}
    else:  # each vector rescaled to 0.1 x the layer's mean residual norm
        norms = dict(zip(bundle.chosen_layers, bundle.residual_norms(), strict=True))

        def unit(e, L):
            return bundle.vector(e, L) / np.linalg.norm(bundle.vector(e, L))

        want = {L: 0.1 * norms[L] * sum(a * unit(e, L) for e, a in steering.items() if L in steered[e])
                for L in layers}
    for layer, vector in want.items():
        got = tensors[f"direction.{layer}"]
        assert got.shape == (bundle.hidden,)
        np.testing.assert_allclose(got, vector, rtol=1e-5, atol=1e-6)
    read_back = read_control_vector(path)
    assert read_back.model_hint == "llama" and read_back.layer_count == len(layers)
    assert sorted(read_back.by_emolab_layer()) == layers
    for layer, vector in read_back.by_emolab_layer().items():
        np.testing.assert_array_equal(vector, tensors[f"direction.{layer}"])


def test_layer_rule_is_identity_from_one_and_refuses_block_zero():
    assert [llamacpp_direction_index(L) for L in (1, 15, 29)] == [1, 15, 29]
    assert [emolab_layer(n) for n in (1, 15, 29)] == [1, 15, 29]
    with pytest.raises(ExportError, match="block 0") as caught:
        llamacpp_direction_index(0)
    assert caught.value.subject == "layers"


def per_emotion_layers_bundle(bundle: EmotionBundle) -> tuple[EmotionBundle, int]:
    """The committed bundle, except that fear's vector is zero at the middle one of its layers (as a bundle
    with per-emotion layers stores a layer an emotion does not steer); and that layer."""
    middle = bundle.layers_of("fear")[len(bundle.layers_of("fear")) // 2]
    vectors = dict(bundle.vectors)
    fear = vectors["fear"].copy()
    fear[bundle.chosen_layers.index(middle)] = 0.0
    vectors["fear"] = fear
    return EmotionBundle(emotions=bundle.emotions, chosen_layers=bundle.chosen_layers, vectors=vectors,
                         metadata=dict(bundle.metadata)), middle


def test_only_layers_where_the_sum_is_non_zero_are_written(bundle, tmp_path):
    partial, middle = per_emotion_layers_bundle(bundle)
    fear_only = [L for L in bundle.layers_of("fear") if L != middle]
    assert sorted(control_vector(partial, {"fear": 1.0}, "raw")) == fear_only
    _, tensors, _ = raw_fields(export_gguf(partial, {"fear": 1.0}, tmp_path / "fear.gguf", scale="raw"))
    assert sorted(tensors) == [f"direction.{L}" for L in fear_only]
    both = sorted(set(fear_only) | set(bundle.layers_of("joy")))
    assert sorted(control_vector(partial, {"fear": 1.0, "joy": 0.5}, "raw")) == both
    with pytest.raises(ExportError, match="adds nothing"):
        control_vector(bundle, {"fear": 0.0}, "raw")


def test_a_layer_zero_vector_cannot_be_exported(tmp_path):
    with pytest.raises(ExportError, match="block 0"):
        write_control_vector(tmp_path / "x.gguf", {0: np.ones(4, np.float32)}, "llama")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_per_emotion_files_hold_each_vector_at_alpha_one(bundle, tmp_path):
    paths = export_per_emotion(bundle, tmp_path / "new" / "per", scale="raw")
    assert sorted(paths) == sorted(bundle.emotions)
    for emotion, path in paths.items():
        assert path == tmp_path / "new" / "per" / f"{emotion}.gguf"
        for layer, vector in read_control_vector(path).by_emolab_layer().items():
            np.testing.assert_array_equal(vector, bundle.vector(emotion, layer))


@pytest.mark.parametrize(
    ("steering", "subject", "message"),
    [
        ({"fea": 1.0}, "steering", "anger, joy, sadness, disgust, fear, surprise"),
        ({"fear": float("nan")}, "steering", "finite"),
        ({"fear": float("inf")}, "steering", "finite"),
        ({}, "steering", "no emotion"),
    ],
)
def test_bad_steering_is_a_clear_error(bundle, tmp_path, steering, subject, message):
    with pytest.raises(ExportError, match=message) as caught:
        export_gguf(bundle, steering, tmp_path / "x.gguf")
    assert caught.value.subject == subject
    assert not (tmp_path / "x.gguf").exists()


def test_normalized_scale_without_residual_norm_is_a_clear_error(bundle, tmp_path):
    metadata = {k: v for k, v in bundle.metadata.items() if k != "residual_norm"}
    bare = EmotionBundle(emotions=bundle.emotions, chosen_layers=bundle.chosen_layers, vectors=bundle.vectors,
                         metadata=metadata)
    with pytest.raises(ExportError, match="residual_norm") as caught:
        export_gguf(bare, {"fear": 1.0}, tmp_path / "x.gguf", scale="normalized")
    assert caught.value.subject == "scale"
    assert export_gguf(bare, {"fear": 1.0}, tmp_path / "x.gguf", scale="raw").is_file()


def test_output_folders_are_created_and_a_folder_is_not_a_file(bundle, tmp_path):
    assert export_gguf(bundle, {"fear": 1.0}, tmp_path / "a" / "b" / "fear.gguf").is_file()
    with pytest.raises(ExportError, match="is a folder") as caught:
        export_gguf(bundle, {"fear": 1.0}, tmp_path / "a")
    assert caught.value.subject == "output"
    (tmp_path / "plain").write_text("")
    with pytest.raises(ExportError) as caught:
        export_gguf(bundle, {"fear": 1.0}, tmp_path / "plain" / "fear.gguf")
    assert caught.value.subject == "output"


def test_parse_steering():
    assert parse_steering("fear=1.0, joy=-0.5") == {"fear": 1.0, "joy": -0.5}
    for bad in ("fear", "fear=x", "=1", "fear=1,fear=2", ","):
        with pytest.raises(ExportError):
            parse_steering(bad)


def test_reader_refuses_a_file_that_is_not_a_control_vector(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")  # architecture llama: a model, not a control vector
    writer.add_tensor("direction.1", np.ones(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ExportError, match="not 'controlvector'"):
        read_control_vector(tmp_path / "model.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not gguf")
    with pytest.raises(ExportError, match="not a readable GGUF"):
        read_control_vector(tmp_path / "junk.gguf")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_the_mix_and_the_per_emotion_files(smollm2_bundle_path, tmp_path, capsys):
    argv = ["export-gguf", str(smollm2_bundle_path), "--steering", "fear=1.0,joy=0.5", "--alpha-scale", "normalized",
            "--output", str(tmp_path / "out" / "fear.gguf"), "--per-emotion", str(tmp_path / "per")]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    bundle = EmotionBundle.load(smollm2_bundle_path)
    layers = sorted(set(bundle.layers_of("fear")) | set(bundle.layers_of("joy")))
    assert ", ".join(f"direction.{L}" for L in layers) in out
    mix = read_control_vector(tmp_path / "out" / "fear.gguf")
    assert json.loads(mix.metadata["emolab.steering"]) == {"fear": 1.0, "joy": 0.5}
    assert mix.metadata["emolab.alpha_scale"] == "normalized"
    assert sorted(p.name for p in (tmp_path / "per").iterdir()) == sorted(
        f"{e}.gguf" for e in EmotionBundle.load(smollm2_bundle_path).emotions
    )


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--steering", "fea=1", "--output", "OUT"], "--steering"),
        (["--steering", "fear=nan", "--output", "OUT"], "--steering"),
        (["--steering", "fear", "--output", "OUT"], "--steering"),
        (["--steering", "fear=1", "--alpha-scale", "unit", "--output", "OUT"], "--alpha-scale"),
        (["--steering", "fear=1"], "--output"),
        (["--output", "OUT"], "--steering"),
        ([], "--steering"),
    ],
)
def test_cli_bad_flags_name_the_flag(smollm2_bundle_path, tmp_path, capsys, args, flag):
    args = [str(tmp_path / "x.gguf") if a == "OUT" else a for a in args]
    code, _, err = run_cli(["export-gguf", str(smollm2_bundle_path), *args], capsys)
    assert code == 2
    assert flag in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()


def test_cli_missing_bundle_and_output_folder_are_one_line_errors(smollm2_bundle_path, tmp_path, capsys):
    code, _, err = run_cli(["export-gguf", str(tmp_path / "nope"), "--steering", "fear=1",
                             "--output", str(tmp_path / "x.gguf")], capsys)
    assert code == 2 and str(tmp_path / "nope") in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export-gguf", str(smollm2_bundle_path), "--steering", "fear=1",
                             "--output", str(tmp_path)], capsys)
    assert code == 2 and "--output" in err and "is a folder" in err


# ------------------------------------------------------------------------------- the real llama.cpp
# The packaged SmolLM2-135M-Instruct Q4_1 GGUF runs in libllama (llama-cpp-python, the `llamacpp` extra,
# which `make setup` installs); emolab's HF backend runs the same model converted to fp32.
PROMPT = "Describe a walk in the park."
MAPPING_MARGIN = 0.1  # r at the right layer must beat r at a neighbouring layer by this much


@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("llama_cpp", reason="the llamacpp extra (make test / make setup-test installs it)")
    from emolab.core.offline import smollm2_gguf
    from emolab.export.llamacpp import LlamaCppModel

    # One thread: ggml's worker threads spin at every barrier, and on two shared cores a second one
    # waits for the scheduler at each op (a 12-token continuation took 68 s with two, 1.5 s with one).
    with LlamaCppModel(smollm2_gguf(), n_ctx=128, n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def hf(smollm2_path):
    import torch

    from emolab.core.models import load_model

    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as for llama.cpp: on busy shared cores one thread is several times faster
    yield model, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt_ids(hf) -> list[int]:
    from emolab.core.models import chat_prompt_ids

    return chat_prompt_ids(hf[1], [{"role": "user", "content": PROMPT}])


@pytest.mark.slow
def test_exported_fear_file_steers_llama_cpp(bundle, llama, hf, prompt_ids, tmp_path):
    path = export_gguf(bundle, {"fear": 1.0}, tmp_path / "fear.gguf", scale="normalized")
    plain = llama.generate_greedy(prompt_ids, 12)
    llama.set_control_vectors([(path, 1.0)])  # as llama-cli --control-vector-scaled fear.gguf:1.0
    try:
        steered = llama.generate_greedy(prompt_ids, 12)
    finally:
        llama.clear_control_vectors()
    assert llama.generate_greedy(prompt_ids, 12) == plain  # cleared: back to the plain continuation
    decode = hf[1].decode
    assert steered != plain, f"fear changed nothing: {decode(plain)!r}"
    print(f"\nllama.cpp plain:   {decode(plain)!r}\nllama.cpp fear=1: {decode(steered)!r}")


def logit_change_in_hf(hf, prompt_ids: list[int], vector: np.ndarray, layer: int) -> np.ndarray:
    """Next-token logits with ``vector`` added at emolab layer ``layer`` by emolab's HF backend, minus plain."""
    import torch

    from emolab.steer import HFSteerer

    model = hf[0]
    probe = EmotionBundle(["probe"], [layer], {"probe": vector[None].astype(np.float32)}, {"num_layers": 30})
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        plain = model(ids).logits[0, -1].numpy()
        with HFSteerer(model, probe).steer(np.ones(1, np.float32)):
            steered = model(ids).logits[0, -1].numpy()
    return steered - plain


def probe_vector(bundle: EmotionBundle, direction: str, length: float) -> np.ndarray:
    if direction == "fear":
        fear_layers = bundle.layers_of("fear")  # a layer fear steers (zero elsewhere in a tuned bundle)
        vector = bundle.vector("fear", fear_layers[len(fear_layers) // 2]).astype(np.float64)
    else:  # a fixed random direction
        vector = np.random.default_rng(1).standard_normal(bundle.hidden)
    return (vector / np.linalg.norm(vector) * length).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "direction", "length"),
    [
        (1, "random", 25.0),  # the first block llama.cpp can steer; ~0.3 x its mean residual norm (84)
        (29, "fear", 50.0),  # the last block; its output goes straight to the final norm and the LM head
    ],
)
def test_layer_mapping_is_exact(bundle, llama, hf, prompt_ids, tmp_path, layer, direction, length):
    """A vector exported for emolab layer L moves llama.cpp's logits the way the HF backend's layer L does,
    and clearly unlike its layer L-1 or L+1: an off-by-one mapping fails here."""
    vector = probe_vector(bundle, direction, length)
    path = write_control_vector(tmp_path / f"layer{layer}.gguf", {layer: vector}, "llama")
    assert sorted(read_control_vector(path).directions) == [layer]
    plain = llama.next_token_logits(prompt_ids)
    llama.set_control_vectors([(path, 1.0)])
    try:
        change_in_llama = llama.next_token_logits(prompt_ids) - plain
    finally:
        llama.clear_control_vectors()
    pearson = {
        hf_layer: float(np.corrcoef(change_in_llama, logit_change_in_hf(hf, prompt_ids, vector, hf_layer))[0, 1])
        for hf_layer in (layer - 1, layer, layer + 1)
        if 0 <= hf_layer < 30
    }
    print(f"\n{direction} probe at emolab layer {layer} in llama.cpp; Pearson r with HF at layer: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in pearson.items()))
    neighbours = [r for hf_layer, r in pearson.items() if hf_layer != layer]
    assert pearson[layer] >= 0.9
    assert pearson[layer] - max(neighbours) >= MAPPING_MARGIN
