"""The family table (``emolab.core.families``) is the one list of proven families: the README's and the
fast-path page's tables say exactly what it says, and every family's tiny model is the architecture it
names, with blocks the HF reference finds (built on the meta device: no weights, no time)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from emolab.core.families import FAMILIES, TINY_SHAPE, family, proven_architectures
from emolab.core.models import FASTPATH_ARCHITECTURES, decoder_layers
from emolab.core.offline import tiny_family_config

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_WORDS = {"pair": "(hidden_states, residual)", "tensor": "one tensor"}


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading`` whose header starts with ``| family |`` (header and
    rule skipped)."""
    section = text[text.index(heading):]
    section = section[section.index("\n| family |") + 1:]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def test_the_readme_table_lists_the_proven_families_and_their_layouts():
    rows = table_rows((ROOT / "README.md").read_text(), "### Model families")
    assert [row[1].strip("`") for row in rows] == list(proven_architectures())
    for row, entry in zip(rows, FAMILIES, strict=True):
        assert row[2] == LAYOUT_WORDS[entry.layout], row


def test_the_fast_path_page_describes_every_proven_family():
    rows = table_rows((ROOT / "docs" / "vllm-fast-path.md").read_text(), "## Model families")
    assert [re.sub(r"`", "", row[1]) for row in rows] == list(proven_architectures())
    for row, entry in zip(rows, FAMILIES, strict=True):
        assert row[2] == entry.what, row


def test_fastpath_architectures_stays_importable_as_the_proven_list():
    assert FASTPATH_ARCHITECTURES == proven_architectures()
    assert {"LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"} <= set(FASTPATH_ARCHITECTURES)
    with pytest.raises(KeyError, match="no family"):
        family("gpt2")


@pytest.mark.parametrize("entry", FAMILIES, ids=lambda f: f.name)
def test_every_tiny_family_model_is_its_architecture_and_fits_one_bundle(entry, smollm2_path):
    from transformers import AutoModelForCausalLM

    config = tiny_family_config(entry)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert head_dim >= 32  # vLLM-CPU attention kernels need it
    assert (config.num_hidden_layers, config.hidden_size) == (TINY_SHAPE["num_hidden_layers"],
                                                             TINY_SHAPE["hidden_size"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == entry.architecture == config.architectures[0]
    assert len(decoder_layers(model)) == TINY_SHAPE["num_hidden_layers"]  # where the HF reference steers
