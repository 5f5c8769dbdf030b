"""``emolab readout``: per-token scores of a text or chat, and a reference recorded for an older bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emolab.cli import main
from emolab.core.bundle import READOUT_KEY, EmotionBundle

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory, tiny_qwen3_path):
    """A bundle of tiny-qwen3's shape made before readout references existed (none in its metadata)."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("old") / "bundle"
    meta = {"num_layers": 4, "model": str(tiny_qwen3_path), "data_source": f"folder:{FIXTURE_DIR}", "seed": 3,
            "test_size": 0.4, "emotions": ["anger", "joy", "sadness"]}
    vectors = {e: rng.normal(size=(2, 128)).astype(np.float32) for e in meta["emotions"]}
    return EmotionBundle(meta["emotions"], [1, 2], vectors, meta).save(folder)


def test_readout_of_a_text_and_a_chat(old_bundle, tiny_qwen3_path, tmp_path, capsys):
    assert main(["readout", "--vectors", str(old_bundle), "--model", str(tiny_qwen3_path), "--text", "What a day.",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "scores: raw projection on the unit direction" in out and out.splitlines()[-1].startswith("mean  anger")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["scale"]["scale"] == "raw" and len(saved["tokens"]) >= 3 and set(saved["means"]) == {"anger", "joy", "sadness"}
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]))
    assert main(["readout", "--vectors", str(old_bundle), "--model", str(tiny_qwen3_path), "--chat", str(chat)]) == 0
    assert " assistant " in capsys.readouterr().out


def test_bad_chat_file_is_one_line(old_bundle, tiny_qwen3_path, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"role": "user"}))
    with pytest.raises(SystemExit) as exit_:
        main(["readout", "--vectors", str(old_bundle), "--model", str(tiny_qwen3_path), "--chat", str(bad)])
    assert exit_.value.code == 2 and f"--chat {bad}: expected a non-empty JSON list" in capsys.readouterr().err


def test_record_reference_for_an_older_bundle(old_bundle, tiny_qwen3_path, tmp_path, capsys):
    out = tmp_path / "with-ref"
    assert main(["readout", "--vectors", str(old_bundle), "--model", str(tiny_qwen3_path),
                 "--record-reference", str(out)]) == 0
    assert "readout reference over" in capsys.readouterr().out
    old, new = EmotionBundle.load(old_bundle), EmotionBundle.load(out)
    assert READOUT_KEY not in old.metadata and new.metadata[READOUT_KEY]["layers"] == [1, 2]
    assert new.fingerprint() == old.fingerprint()  # the reference steers nothing
    np.testing.assert_array_equal(new.basis(), old.basis())
