"""GoEmotions loading, Ekman grouping, filtering, balancing and the train/validation split.

Three sources give the same records, all read by ``datasets``: the Hugging Face hub
(``google-research-datasets/go_emotions``, config ``simplified``), a local folder of the original TSVs, or
the copy bundled with emolab (``emolab/data/goemotions``, Apache-2.0). ``auto`` tries the hub and falls back
to the bundled copy. Local files are prepared under the emolab cache (``$EMOLAB_CACHE/datasets``), never
in the Hugging Face cache, and need no network; hub datasets use the Hugging Face caches, checked first
(``emolab.core.cache``). With a label-mapping file any other labelled dataset gives the records
(``emolab.extraction.labelled``).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emolab.core.cache import hub_offline
from emolab.core.emotions import FINE_TO_EKMAN, GOEMOTIONS_LABELS
from emolab.extraction.errors import ExtractError
from emolab.extraction.labelled import load_labelled
from emolab.extraction.sources import Record, columns, datasets_module, is_hub_id, load_hub, load_local

__all__ = ["BUNDLED_DIR", "HUB_ID", "HUB_SPLITS", "LABEL_SETS", "SPLITS", "EmotionDataset", "Record", "build_dataset",
           "ekman_targets", "group_texts", "load_records", "origin", "rebuild_split"]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "goemotions"
HUB_ID = "google-research-datasets/go_emotions"
SPLITS = ("train", "dev", "test")
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # emolab's split -> the hub copy's
# The original TSVs: text, comma-separated label ids, comment id; no header, no quoting (a quote is a
# character of the text). Every column is read as a string and nothing as missing ("NA" is a text).
_TSV_COLUMNS = ["text", "labels", "id"]
_TSV_OPTIONS = dict(delimiter="\t", header=None, column_names=_TSV_COLUMNS, quoting=csv.QUOTE_NONE, na_filter=False)
# Which GoEmotions texts stand for an Ekman emotion: every fine label of its group (the reference
# tool's grouping: anger = anger + annoyance + disapproval), or only texts that carry the fine label
# named like the emotion itself ("core": anger texts, not mere disapproval).
LABEL_SETS = ("group", "core")


@dataclass
class EmotionDataset:
    """Single-emotion texts after filtering and balancing, split for the probe."""

    emotions: list[str]
    train_texts: list[str]
    train_labels: np.ndarray  # int index into ``emotions``
    val_texts: list[str]
    val_labels: np.ndarray
    source: str
    counts_available: dict[str, int] = field(default_factory=dict)  # per class before balancing
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def counts_train(self) -> dict[str, int]:
        return {e: int((self.train_labels == i).sum()) for i, e in enumerate(self.emotions)}

    @property
    def counts_val(self) -> dict[str, int]:
        return {e: int((self.val_labels == i).sum()) for i, e in enumerate(self.emotions)}


def _goemotions_hub(dataset_id: str, splits: tuple[str, ...], probe: bool = False) -> list[Record]:
    ds = load_hub(dataset_id, "simplified", probe=probe)
    records = []
    for split in splits:
        rows = columns(ds[HUB_SPLITS[split]], ["text", "labels"])
        records += [Record(text, tuple(GOEMOTIONS_LABELS[i] for i in ids))
                    for text, ids in zip(rows["text"], rows["labels"], strict=True)]
    return records


def _load_folder(folder: Path, splits: tuple[str, ...]) -> list[Record]:
    """The original TSVs of ``folder`` (``<split>.tsv``), through ``datasets``' CSV reader."""
    files = {}
    for split in splits:
        path = folder / f"{split}.tsv"
        if not path.is_file():
            raise ExtractError(f"{folder}: missing {path.name}", setting="data")
        files[split] = str(path)
    datasets = datasets_module()
    features = datasets.Features({name: datasets.Value("string") for name in _TSV_COLUMNS})
    ds = load_local("csv", files, where=", ".join(files.values()), features=features, **_TSV_OPTIONS)
    records = []
    for split in splits:
        rows = columns(ds[split], _TSV_COLUMNS)
        for text, ids, comment in zip(rows["text"], rows["labels"], rows["id"], strict=True):
            if not ids and not comment:  # a line without a tab: no label ids, no comment id
                raise ExtractError(f"{files[split]}: malformed row {text!r:.200} (want text<TAB>label ids<TAB>id)",
                                   setting="data")
            try:
                labels = tuple(GOEMOTIONS_LABELS[int(x)] for x in ids.split(",") if x.strip())
            except (ValueError, IndexError):
                raise ExtractError(f"{files[split]}: bad label ids {ids!r:.80} in row {text!r:.120}", setting="data") from None
            records.append(Record(text, labels))
    return records


def load_records(source: str = "auto", splits: tuple[str, ...] = ("train",),
                 label_map: str | Path | None = None) -> tuple[list[Record], str]:
    """Load GoEmotions records; return them with a string saying where they came from (``kind:where``).

    ``source``: ``auto`` (hub, else bundled), ``bundled``, a local folder holding ``<split>.tsv``
    files, or a hub dataset id. With ``label_map`` (a YAML/JSON file, ``emolab.extraction.labelled``):
    any labelled dataset, a hub id or a local file or folder that ``datasets`` reads.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ExtractError(f"unknown split(s) {bad}; choose from {SPLITS}")
    if label_map is not None:

        return load_labelled(source, splits, label_map)
    if source == "bundled":
        return _load_folder(BUNDLED_DIR, splits), f"bundled:{BUNDLED_DIR}"
    if Path(source).is_dir():
        return _load_folder(Path(source), splits), f"folder:{Path(source).resolve()}"
    if source == "auto":
        reason = "offline (HF_HUB_OFFLINE=1)"
        if not hub_offline(datasets=True):
            try:
                return _goemotions_hub(HUB_ID, splits, probe=True), f"hub:{HUB_ID}"
            except Exception as exc:  # no network, an unwritable cache (CacheError), ... -> the identical copy
                reason = f"hub unavailable: {type(exc).__name__}: {exc}"[:600]
        print(f"GoEmotions: using the bundled copy of the original TSVs ({reason})", file=sys.stderr)
        return _load_folder(BUNDLED_DIR, splits), f"bundled:{BUNDLED_DIR}"
    if is_hub_id(source):  # owner/name, not a path
        return _goemotions_hub(source, splits), f"hub:{source}"
    raise ExtractError(f"{source!r} is not 'auto', 'bundled', an existing folder of TSVs, or a hub id", setting="data")


def origin(source: str) -> str:
    """The ``source`` that reads more splits from where ``load_records`` said (``kind:where``) its records came
    from: the folder or the hub id itself, so ``auto`` is not resolved, and its fallback announced, again."""
    return source.partition(":")[2]


def ekman_targets(record: Record, emotions: list[str]) -> set[str]:
    """The selected Ekman emotions a record's fine labels map to (neutral maps to none)."""
    return {FINE_TO_EKMAN[label] for label in record.labels if FINE_TO_EKMAN.get(label) in emotions}


def group_texts(records: list[Record], emotions: list[str], labels: str = "group",
                neutral: bool = False) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The distinct texts of each selected emotion (records with exactly one), and how many were dropped why.

    ``labels="core"`` also drops records of that emotion's group that lack the emotion's own fine
    label (an ``annoyance``-only text is no anger example then); a record whose other labels map
    to another selected emotion is dropped either way. ``neutral=True`` adds the texts labelled only
    ``neutral`` under the key ``"neutral"``.
    """
    if labels not in LABEL_SETS:
        raise ExtractError(f"unknown label set {labels!r}; choose from {list(LABEL_SETS)}", setting="labels")
    by_class: dict[str, list[str]] = {e: [] for e in emotions}
    if neutral:
        by_class["neutral"] = []
    dropped = {"no_target_emotion": 0, "several_target_emotions": 0, "duplicate_text": 0}
    if labels == "core":
        dropped["not_core_label"] = 0
    seen: set[str] = set()
    for record in records:
        targets = ekman_targets(record, emotions)
        if neutral and record.labels == ("neutral",) and record.text not in seen:
            seen.add(record.text)
            by_class["neutral"].append(record.text)
        elif not targets:
            dropped["no_target_emotion"] += 1
        elif len(targets) > 1:
            dropped["several_target_emotions"] += 1
        elif labels == "core" and next(iter(targets)) not in record.labels:
            dropped["not_core_label"] += 1
        elif record.text in seen:
            dropped["duplicate_text"] += 1
        else:
            seen.add(record.text)
            by_class[targets.pop()].append(record.text)
    return by_class, dropped


def build_dataset(
    records: list[Record],
    emotions: list[str],
    *,
    max_per_class: int | None = None,
    test_size: float = 0.2,
    seed: int = 42,
    source: str = "",
    labels: str = "group",
) -> EmotionDataset:
    """Keep records with exactly one selected emotion, balance the classes, split stratified.

    ``labels``: as ``group_texts``.

    Balancing: every class is randomly (seeded) down-sampled to the size of the smallest class,
    after ``max_per_class`` caps it, so no class can dominate the mean or the probe.
    """
    if not 0.0 < test_size < 1.0:
        raise ExtractError(f"the validation share must be in (0, 1), got {test_size}", setting="test_size")
    by_class, dropped = group_texts(records, emotions, labels)
    available = {e: len(t) for e, t in by_class.items()}
    n_per_class = min(available.values())
    if max_per_class is not None:
        if max_per_class < 2:
            raise ExtractError(f"at least 2 examples per class are needed, got {max_per_class}", setting="max_per_class")
        n_per_class = min(n_per_class, max_per_class)
    n_val = round(n_per_class * test_size)
    if n_per_class < 2 or n_val < 1 or n_val >= n_per_class:
        raise ExtractError(
            f"too few examples per class ({available}) for a train/validation split with a validation share "
            f"of {test_size}; allow more examples per class or use more data", setting="max_per_class",
        )
    rng = np.random.default_rng(seed)
    train_texts, train_labels, val_texts, val_labels = [], [], [], []
    for index, emotion in enumerate(emotions):
        texts = by_class[emotion]
        chosen = rng.permutation(len(texts))[:n_per_class]
        picked = [texts[i] for i in chosen]
        # Stratified: every class contributes the same share to validation.
        val_texts += picked[:n_val]
        val_labels += [index] * n_val
        train_texts += picked[n_val:]
        train_labels += [index] * (n_per_class - n_val)
    return EmotionDataset(
        emotions=list(emotions),
        train_texts=train_texts,
        train_labels=np.asarray(train_labels, dtype=np.int64),
        val_texts=val_texts,
        val_labels=np.asarray(val_labels, dtype=np.int64),
        source=source,
        counts_available=available,
        dropped=dropped,
    )


def rebuild_split(metadata: dict, data: str | None = None) -> EmotionDataset:
    """The train/held-out split a bundle was extracted from, rebuilt from its metadata (data source, emotions,
    seed, share held out, cap per class, label set); ``data`` overrides where the records are read from.

    A source recorded as ``bundled:...`` reads the bundled copy wherever the bundle was made; a folder or a
    hub id must still be there. A bundle made from a dataset of your own (``label_map``) needs ``data`` and
    its map again, so it is refused here with that said.
    """
    if metadata.get("label_map"):
        raise ExtractError("this bundle was extracted with --label-map; rebuild its split with the same data and "
                           "map (emolab extract), not from its metadata", setting="data")
    recorded = str(metadata.get("data_source") or "")
    kind, _, where = recorded.partition(":")
    source = data or ("bundled" if kind == "bundled" else where)
    if not source:
        raise ExtractError("the bundle records no data source; give the data to read", setting="data")
    recipe = metadata.get("recipe")
    labels = metadata.get("labels") or (recipe.get("labels") if isinstance(recipe, dict) else None) or "group"
    records, found = load_records(source)
    return build_dataset(records, list(metadata["emotions"]), max_per_class=metadata.get("max_per_class"),
                         test_size=float(metadata.get("test_size", 0.2)), seed=int(metadata.get("seed", 42)),
                         source=found, labels=labels if labels in LABEL_SETS else "group")
