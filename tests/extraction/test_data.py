"""GoEmotions mapping, filtering, balancing and splitting, checked on hand-written fixture rows; the loader
(``datasets``) checked against the hand reader it replaced, record for record."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from emolab.core.emotions import DEFAULT_EMOTIONS, EKMAN_GROUPS, FINE_TO_EKMAN, GOEMOTIONS_LABELS, parse_emotions
from emolab.extraction import ExtractError
from emolab.extraction.data import BUNDLED_DIR, SPLITS, Record, build_dataset, ekman_targets, load_records, origin

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"


def reference_read_tsv(path: Path) -> list[Record]:
    """The hand reader emolab used before ``datasets`` (emolab.extraction.data.read_tsv, removed): the reference."""
    records = []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 2:
                raise ValueError(f"{path}: malformed row {row!r:.200}")
            ids = [int(x) for x in row[1].split(",") if x.strip()]
            records.append(Record(row[0], tuple(GOEMOTIONS_LABELS[i] for i in ids)))
    return records


def fixture_records() -> list[Record]:
    return load_records(str(FIXTURE_DIR))[0]


@pytest.mark.parametrize("split", SPLITS)
def test_the_datasets_loader_gives_the_hand_readers_records(split):
    """Every bundled split: the same records in the same order (texts with quotes, tabs never, labels as ids)."""
    records, source = load_records("bundled", (split,))
    assert source == f"bundled:{BUNDLED_DIR}"
    reference = reference_read_tsv(BUNDLED_DIR / f"{split}.tsv")
    assert len(records) == len(reference) > 5000
    assert records == reference
    assert any('"' in r.text for r in records)  # quoting none: a quote is a character of the text
    assert load_records(str(FIXTURE_DIR))[0] == reference_read_tsv(FIXTURE_DIR / "train.tsv")


def test_bundled_splits_read_together_keep_their_order():
    records, _ = load_records("bundled", ("train", "dev", "test"))
    assert records == [r for split in SPLITS for r in reference_read_tsv(BUNDLED_DIR / f"{split}.tsv")]


def test_local_data_is_prepared_under_the_emolab_cache_only(tmp_path, monkeypatch):
    """A folder of TSVs: nothing is written beside the files, everything under $EMOLAB_CACHE/datasets, and the
    second load (prepared Arrow files) is not slower than a second."""
    folder = tmp_path / "goemotions"
    folder.mkdir()
    (folder / "train.tsv").write_bytes((FIXTURE_DIR / "train.tsv").read_bytes())
    monkeypatch.setenv("EMOLAB_CACHE", str(tmp_path / "cache"))
    first, _ = load_records(str(folder))
    t0 = time.perf_counter()
    again, _ = load_records(str(folder))
    assert time.perf_counter() - t0 < 1.0
    assert first == again == reference_read_tsv(folder / "train.tsv")
    assert [p.name for p in folder.iterdir()] == ["train.tsv"]
    assert list((tmp_path / "cache" / "datasets").rglob("*.arrow"))

# The grouping exactly as the issue states it.
ISSUE_GROUPS = {
    "anger": {"anger", "annoyance", "disapproval"},
    "disgust": {"disgust"},
    "fear": {"fear", "nervousness"},
    "joy": {
        "admiration", "amusement", "approval", "caring", "desire", "excitement", "gratitude", "joy", "love",
        "optimism", "pride", "relief",
    },
    "sadness": {"disappointment", "embarrassment", "grief", "remorse", "sadness"},
    "surprise": {"confusion", "curiosity", "realization", "surprise"},
}


def test_ekman_groups_match_the_issue_and_the_bundled_mapping():
    assert {e: set(fines) for e, fines in EKMAN_GROUPS.items()} == ISSUE_GROUPS
    bundled = json.loads((BUNDLED_DIR / "ekman_mapping.json").read_text())
    assert {e: set(fines) for e, fines in bundled.items()} == ISSUE_GROUPS
    # Every fine label but neutral belongs to exactly one group.
    assert sorted(FINE_TO_EKMAN) == sorted(set(GOEMOTIONS_LABELS) - {"neutral"})
    assert DEFAULT_EMOTIONS == ("anger", "joy", "sadness", "disgust", "fear", "surprise")


def test_label_ids_follow_emotions_txt():
    names = (BUNDLED_DIR / "emotions.txt").read_text().split()
    assert tuple(names) == GOEMOTIONS_LABELS


def test_parse_emotions():
    assert parse_emotions(" Anger, joy ,") == ["anger", "joy"]
    assert parse_emotions(["fear", "joy"]) == ["fear", "joy"]
    with pytest.raises(ValueError, match="unknown emotion"):
        parse_emotions("anger,happiness")
    with pytest.raises(ValueError, match="twice"):
        parse_emotions("anger,anger")
    with pytest.raises(ValueError, match="at least two"):
        parse_emotions("anger")


def test_the_loader_maps_label_ids_to_names():
    records = fixture_records()
    assert len(records) == 27
    assert records[0] == Record("This is outrageous, I am furious.", ("anger",))
    assert records[6] == Record("Thank you so much, you are amazing.", ("admiration", "gratitude"))
    assert records[21].labels == ("neutral",)


def test_ekman_targets_only_counts_selected_emotions():
    mixed = Record("x", ("anger", "joy"))
    assert ekman_targets(mixed, ["anger", "joy"]) == {"anger", "joy"}
    assert ekman_targets(mixed, ["anger", "sadness"]) == {"anger"}
    assert ekman_targets(Record("x", ("annoyance", "disapproval")), ["anger", "joy"]) == {"anger"}
    assert ekman_targets(Record("x", ("neutral",)), list(DEFAULT_EMOTIONS)) == set()


def test_filter_counts_on_fixture_rows():
    records = fixture_records()
    ds = build_dataset(records, list(DEFAULT_EMOTIONS), test_size=0.5, seed=0)
    # Two neutral rows; "angry and happy" and "sad and surprised" mix targets; one repeated text.
    assert ds.dropped == {"no_target_emotion": 2, "several_target_emotions": 2, "duplicate_text": 1}
    # anger+annoyance stays anger; nervousness+neutral counts as fear.
    assert ds.counts_available == {"anger": 5, "joy": 5, "sadness": 5, "disgust": 2, "fear": 3, "surprise": 2}
    # Balanced down to the smallest class (2), half of it held out per class.
    assert ds.counts_train == dict.fromkeys(DEFAULT_EMOTIONS, 1)
    assert ds.counts_val == dict.fromkeys(DEFAULT_EMOTIONS, 1)


def test_selected_emotions_change_what_counts_as_mixed():
    records = fixture_records()
    ds = build_dataset(records, ["anger", "joy"], test_size=0.2, seed=0)
    # Only "angry and happy" mixes anger and joy now; sadness/surprise rows have no target.
    assert ds.dropped["several_target_emotions"] == 1
    assert ds.dropped["no_target_emotion"] == 27 - 1 - 1 - 10
    assert ds.counts_available == {"anger": 5, "joy": 5}
    assert ds.counts_train == {"anger": 4, "joy": 4}
    assert ds.counts_val == {"anger": 1, "joy": 1}
    truth = {r.text: ekman_targets(r, ["anger", "joy"]) for r in records}
    for text, label in zip(ds.train_texts + ds.val_texts, np.concatenate([ds.train_labels, ds.val_labels]), strict=True):
        assert truth[text] == {ds.emotions[label]}


def test_core_labels_keep_only_texts_with_the_emotions_own_label():
    records = fixture_records()
    emotions = ["anger", "sadness", "disgust"]
    ds = build_dataset(records, emotions, test_size=0.5, seed=0, labels="core")
    # annoyance-only and disapproval-only rows are no anger examples now, nor disappointment, grief or
    # remorse sadness ones; "angry and happy" is anger (joy is not selected), "sad and surprised" sadness.
    assert ds.dropped == {"no_target_emotion": 12, "several_target_emotions": 0, "duplicate_text": 1,
                          "not_core_label": 5}
    assert ds.counts_available == {"anger": 4, "sadness": 3, "disgust": 2}
    by_text = {r.text: r.labels for r in records}
    for text, label in zip(ds.train_texts + ds.val_texts, np.concatenate([ds.train_labels, ds.val_labels]), strict=True):
        assert emotions[label] in by_text[text]
    group = build_dataset(records, emotions, test_size=0.5, seed=0)
    assert group.counts_available == {"anger": 6, "sadness": 6, "disgust": 2} and "not_core_label" not in group.dropped
    with pytest.raises(ExtractError, match="label set") as info:
        build_dataset(records, emotions, labels="fine")
    assert info.value.setting == "labels"


def test_core_labels_on_the_bundled_data():
    records, _ = load_records("bundled")
    core = build_dataset(records, list(DEFAULT_EMOTIONS), seed=42, labels="core")
    group = build_dataset(records, list(DEFAULT_EMOTIONS), seed=42)
    assert core.counts_available["disgust"] == group.counts_available["disgust"]  # disgust's group is itself
    for emotion in ("anger", "joy", "sadness", "fear", "surprise"):
        assert core.counts_available[emotion] < group.counts_available[emotion]
    labels_of: dict[str, set[str]] = {}
    for r in records:  # a text may recur with other labels; the first one kept it
        labels_of.setdefault(r.text, set()).update(r.labels)
    assert all(core.emotions[y] in labels_of[t] for t, y in zip(core.train_texts, core.train_labels, strict=True))


def test_balance_is_seeded_capped_and_disjoint():
    records = fixture_records()
    emotions = ["anger", "joy", "sadness"]
    a = build_dataset(records, emotions, max_per_class=4, test_size=0.25, seed=7)
    b = build_dataset(records, emotions, max_per_class=4, test_size=0.25, seed=7)
    assert (a.train_texts, a.val_texts) == (b.train_texts, b.val_texts)
    assert a.counts_train == dict.fromkeys(emotions, 3)
    assert a.counts_val == dict.fromkeys(emotions, 1)
    assert not set(a.train_texts) & set(a.val_texts)
    assert a.train_labels.dtype == np.int64
    picks = {tuple(build_dataset(records, emotions, max_per_class=4, test_size=0.25, seed=s).train_texts) for s in range(6)}
    assert len(picks) > 1  # the seed matters


def test_balance_on_the_bundled_data():
    records, source = load_records("bundled")
    assert source.startswith("bundled:")
    assert len(records) == 43410
    ds = build_dataset(records, list(DEFAULT_EMOTIONS), seed=42)
    smallest = min(ds.counts_available.values())
    assert ds.counts_available["disgust"] == smallest  # disgust is the rarest single-emotion class
    n_val = round(smallest * 0.2)
    assert ds.counts_train == dict.fromkeys(DEFAULT_EMOTIONS, smallest - n_val)
    assert ds.counts_val == dict.fromkeys(DEFAULT_EMOTIONS, n_val)


def test_bad_split_sizes_are_refused():
    records = fixture_records()
    with pytest.raises(ExtractError, match="validation share"):
        build_dataset(records, ["anger", "joy"], test_size=1.0)
    with pytest.raises(ExtractError, match="at least 2 examples per class"):
        build_dataset(records, ["anger", "joy"], max_per_class=1)
    with pytest.raises(ValueError, match="too few examples"):
        build_dataset(records, ["disgust", "surprise"], test_size=0.2)  # 2 per class: round(0.4) = 0 held out


def test_load_records_sources(monkeypatch, capsys):
    records, source = load_records(str(FIXTURE_DIR))
    assert source == f"folder:{FIXTURE_DIR.resolve()}"
    assert records == reference_read_tsv(FIXTURE_DIR / "train.tsv")
    assert load_records(origin(source))[0] == records
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    _, source = load_records("auto")
    assert source.startswith("bundled:")
    notice = capsys.readouterr().err.splitlines()
    assert len(notice) == 1 and "bundled copy" in notice[0] and "offline" in notice[0]
    dev, _ = load_records(origin(source), ("dev",))  # more splits from the resolved source, without a notice
    assert dev == reference_read_tsv(BUNDLED_DIR / "dev.tsv") and capsys.readouterr().err == ""
    assert origin("hub:google-research-datasets/go_emotions") == "google-research-datasets/go_emotions"
    with pytest.raises(ExtractError, match="dev.tsv"):
        load_records(str(FIXTURE_DIR), splits=("train", "dev"))
    with pytest.raises(ValueError, match="unknown split"):
        load_records("bundled", splits=("validation",))
    for missing in ("no-such-folder", "./no/such", "/no/such/folder"):
        with pytest.raises(ValueError, match="not 'auto', 'bundled', an existing folder"):
            load_records(missing)


def test_malformed_tsv_names_the_file(tmp_path):
    bad = tmp_path / "train.tsv"
    for text in ("fine\t3\t1\na line without labels\n", "fine\t3\t1\ntoo\tmany\tfields\there\n", "text\t99\tx\n"):
        bad.write_text(text)
        with pytest.raises(ExtractError, match="train.tsv") as info:
            load_records(str(tmp_path))
        assert info.value.setting == "data"


def test_hub_ids_fail_cleanly_offline(monkeypatch):
    """Without `datasets` (or without network) a hub id is a clear --data error, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ExtractError, match="google-research-datasets/go_emotions"):
        load_records("google-research-datasets/go_emotions")


def test_an_extraction_is_bit_identical_through_the_new_loader_and_the_old_reader(tiny, monkeypatch):
    """Same seed, same model: the vectors, the probe's AUCs and the counts do not depend on which reader read
    the bundled TSVs."""
    from emolab.extraction import ExtractConfig, extract, pipeline

    model, tokenizer = tiny
    config = ExtractConfig(model="tiny", emotions=("anger", "joy", "fear"), data="bundled", max_per_class=12,
                           layers="all", window=2, batch_size=12, max_length=48, seed=5, progress=False)
    new = extract(config, model=model, tokenizer=tokenizer)
    old_records = reference_read_tsv(BUNDLED_DIR / "train.tsv")
    monkeypatch.setattr(pipeline, "load_records", lambda *a, **k: (old_records, f"bundled:{BUNDLED_DIR}"))
    old = extract(config, model=model, tokenizer=tokenizer)
    assert new.metadata["n_train"] == old.metadata["n_train"] == 3 * (12 - 2)
    for key in ("counts_train", "counts_val", "counts_available", "dropped", "auc_matrix", "chosen_layers"):
        assert new.metadata[key] == old.metadata[key], key
    for emotion in new.emotions:
        assert np.array_equal(new.vectors[emotion], old.vectors[emotion])
        assert np.array_equal(new.full_sweep[emotion], old.full_sweep[emotion])


def test_auto_online_without_a_reachable_hub_falls_back_in_seconds(monkeypatch, tmp_path, capsys):
    """No network: `auto` asks the hub's host once (seconds), not through a download's minute of retries."""
    import socket

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def no_route(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_route)
    capsys.readouterr()
    t0 = time.perf_counter()
    records, source = load_records("auto")
    notice = capsys.readouterr().err.splitlines()
    assert source == f"bundled:{BUNDLED_DIR}" and len(records) == 43410 and time.perf_counter() - t0 < 10
    assert len(notice) == 1 and "huggingface.co unreachable" in notice[0] and "bundled copy" in notice[0]
