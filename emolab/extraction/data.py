"""GoEmotions loading, Ekman grouping, filtering, balancing and the train/validation split.

Three sources give the same records: the Hugging Face hub (``google-research-datasets/go_emotions``,
config ``simplified``), a local folder of the original TSVs, or the copy bundled with emolab
(``emolab/data/goemotions``, Apache-2.0). ``auto`` tries the hub and falls back to the bundled copy.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emolab.core.emotions import FINE_TO_EKMAN, GOEMOTIONS_LABELS
from emolab.extraction.errors import ExtractError

__all__ = ["BUNDLED_DIR", "HUB_ID", "LABEL_SETS", "SPLITS", "EmotionDataset", "Record", "build_dataset", "ekman_targets", "group_texts",
           "load_records", "origin", "read_tsv"]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "goemotions"
HUB_ID = "google-research-datasets/go_emotions"
SPLITS = ("train", "dev", "test")
# Which GoEmotions texts stand for an Ekman emotion: every fine label of its group (the reference
# tool's grouping: anger = anger + annoyance + disapproval), or only texts that carry the fine label
# named like the emotion itself ("core": anger texts, not mere disapproval).
LABEL_SETS = ("group", "core")


@dataclass(frozen=True)
class Record:
    text: str
    labels: tuple[str, ...]  # fine GoEmotions label names


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


def read_tsv(path: Path) -> list[Record]:
    """Read one original GoEmotions TSV (text, comma-separated label ids, comment id)."""
    records = []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 2:
                raise ExtractError(f"{path}: malformed row {row!r:.200} (want text<TAB>label ids<TAB>id)", setting="data")
            ids = [int(x) for x in row[1].split(",") if x.strip()]
            records.append(Record(row[0], tuple(GOEMOTIONS_LABELS[i] for i in ids)))
    return records


def _load_hub(dataset_id: str, splits: tuple[str, ...]) -> list[Record]:
    try:
        from datasets import load_dataset  # optional dependency, only for the hub path
    except ImportError:
        raise ExtractError(
            f"reading {dataset_id} from the hub needs `pip install datasets`; "
            "the source 'bundled' uses the copy shipped with emolab", setting="data",
        ) from None

    hub_split = {"train": "train", "dev": "validation", "test": "test"}
    try:
        ds = load_dataset(dataset_id, "simplified")
    except (OSError, ConnectionError) as exc:  # offline, unknown id, ...
        raise ExtractError(f"cannot load {dataset_id} from the hub ({exc})", setting="data") from None
    records = []
    for split in splits:
        for row in ds[hub_split[split]]:
            records.append(Record(row["text"], tuple(GOEMOTIONS_LABELS[i] for i in row["labels"])))
    return records


def load_records(source: str = "auto", splits: tuple[str, ...] = ("train",)) -> tuple[list[Record], str]:
    """Load GoEmotions records; return them with a string saying where they came from.

    ``source``: ``auto`` (hub, else bundled), ``bundled``, a local folder holding ``<split>.tsv``
    files, or a hub dataset id.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ExtractError(f"unknown split(s) {bad}; choose from {SPLITS}")
    if source == "bundled":
        return _load_folder(BUNDLED_DIR, splits), f"bundled:{BUNDLED_DIR}"
    if Path(source).is_dir():
        return _load_folder(Path(source), splits), f"folder:{Path(source).resolve()}"
    if source == "auto":
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        reason = "offline (HF_HUB_OFFLINE=1)"
        if not offline:
            try:
                return _load_hub(HUB_ID, splits), f"hub:{HUB_ID}"
            except Exception as exc:  # no `datasets`, no network, ... -> the identical bundled copy
                reason = f"hub unavailable: {type(exc).__name__}: {exc}"[:200]
        print(f"GoEmotions: using the bundled copy of the original TSVs ({reason})", file=sys.stderr)
        return _load_folder(BUNDLED_DIR, splits), f"bundled:{BUNDLED_DIR}"
    if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source) and not Path(source).exists():  # owner/name, not a path
        return _load_hub(source, splits), f"hub:{source}"
    raise ExtractError(f"{source!r} is not 'auto', 'bundled', an existing folder of TSVs, or a hub id", setting="data")


def origin(source: str) -> str:
    """The ``source`` that reads more splits from where ``load_records`` said (``kind:where``) its records came
    from: the folder or the hub id itself, so ``auto`` is not resolved, and its fallback announced, again."""
    return source.partition(":")[2]


def _load_folder(folder: Path, splits: tuple[str, ...]) -> list[Record]:
    records = []
    for split in splits:
        path = folder / f"{split}.tsv"
        if not path.is_file():
            raise ExtractError(f"{folder}: missing {path.name}", setting="data")
        records.extend(read_tsv(path))
    return records


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
