"""Bring your own dataset: any labelled dataset that ``datasets`` reads, mapped onto the emotions by a file.

``emolab extract --data PATH_OR_ID --label-map FILE``: the data is a hub dataset id, a CSV/TSV/JSON/JSONL/
parquet file, or a folder of such files (one split per file: ``train.csv``, ``validation.csv``, ...). The
label-mapping file (YAML or JSON; ``docs/datasets.md``) says how its rows become records::

    text: sentence                # the column of the texts (required)
    label: emotion                # one column: one label (string or int) or a list of labels per row
    # labels: [angry, happy]      # or: one 0/1 column per label, the column's name being the label
    separator: ","                # optional, with label: a string column holding several labels
    map: {angry: anger, happy: joy, 3: sadness}   # dataset label -> emotion; other labels are ignored
    splits: {train: train, dev: validation}       # optional; a dataset of one split is the train split
    config: simplified            # optional: the hub dataset's configuration

A label maps onto an Ekman emotion, ``neutral`` or a GoEmotions label (which counts for its Ekman group, as
in GoEmotions). The records then go through the same filtering, balancing and split as GoEmotions'
(``emolab.extraction.data.build_dataset``). A bad mapping file is one ``ExtractError`` naming the file and
the field (``setting="label_map"``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from emolab.core.emotions import GOEMOTIONS_LABELS
from emolab.extraction.errors import ExtractError
from emolab.extraction.sources import Record, columns, is_hub_id, load_hub, load_local

__all__ = ["FIELDS", "FILE_TYPES", "LabelMap", "load_labelled", "read_label_map"]

FIELDS = ("text", "label", "labels", "separator", "map", "splits", "config")
# A data file's ending -> the datasets builder that reads it, and its options. A CSV cell is missing only
# when empty: a text "NA" or "null" stays a text.
FILE_TYPES: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {"keep_default_na": False, "na_values": [""]}),
    ".tsv": ("csv", {"keep_default_na": False, "na_values": [""], "delimiter": "\t"}),
    ".json": ("json", {}), ".jsonl": ("json", {}), ".parquet": ("parquet", {}),
}
# Where a split is looked for when the file does not name it (datasets names a folder's dev.csv "validation").
_DEFAULT_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}
_TRUE = {"1", "true", "yes", "y"}


@dataclass(frozen=True)
class LabelMap:
    """A label-mapping file, checked: every field named in it exists and maps onto an emotion."""

    path: Path
    text: str
    mapping: dict[str, str]  # dataset label (as a key: ``_key``) -> emotion
    label: str | None = None
    labels: tuple[str, ...] = ()
    separator: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    config: str | None = None

    def fail(self, where: str, message: str) -> ExtractError:
        return ExtractError(f"{self.path}: {where}: {message}", setting="label_map")

    @property
    def label_columns(self) -> list[str]:
        return [self.label] if self.label else list(self.labels)


def _key(value) -> str:
    """A label as the mapping looks it up: ``3``, ``3.0`` and ``"3"`` are one key, ``True`` is ``"true"``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_label_map(path: str | Path) -> LabelMap:
    """Read and check a label-mapping file (YAML, or JSON)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{path}: no such label-mapping file", setting="label_map")
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ExtractError(f"{path}: not a readable YAML/JSON file ({exc})"[:400], setting="label_map") from None
    if not isinstance(spec, dict):
        raise ExtractError(f"{path}: want a mapping of the fields {', '.join(FIELDS)}", setting="label_map")

    def fail(where: str, message: str) -> ExtractError:
        return ExtractError(f"{path}: {where}: {message}", setting="label_map")

    unknown = sorted(str(k) for k in spec if k not in FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; the fields are {', '.join(FIELDS)}")
    if not isinstance(spec.get("text"), str) or not spec["text"]:
        raise fail("text", "missing; name the column that holds the texts")
    label, labels = spec.get("label"), spec.get("labels")
    if (label is None) == (labels is None):
        raise fail("label", "name one label column (label: COLUMN) or the 0/1 columns, one per label (labels: [...])")
    if label is not None and not isinstance(label, str):
        raise fail("label", f"want one column name, got {label!r}")
    if labels is not None and (not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels)):
        raise fail("labels", f"want a list of column names, got {labels!r}")
    separator = spec.get("separator")
    if separator is not None and (label is None or not isinstance(separator, str) or not separator):
        raise fail("separator", "a non-empty string, with label: (a string column holding several labels)")
    raw = spec.get("map")
    if not isinstance(raw, dict) or not raw:
        raise fail("map", "missing; map each dataset label onto an emotion, e.g. {angry: anger, happy: joy}")
    mapping = {}
    for key, emotion in raw.items():
        if not isinstance(emotion, str) or emotion.strip().lower() not in GOEMOTIONS_LABELS:
            raise fail("map", f"{key!r} -> {emotion!r} is not an emotion; map onto anger, disgust, fear, joy, sadness, "
                              "surprise, neutral or a GoEmotions label")
        mapping[_key(key)] = emotion.strip().lower()
    if labels is not None:
        stray = [k for k in mapping if k not in labels]
        if stray:
            raise fail("map", f"{stray[0]!r} is not one of the label columns {labels}")
    splits = spec.get("splits") or {}
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise fail("splits", f"want {{train: NAME, dev: NAME, test: NAME}}, got {splits!r}")
    for name in splits:
        if name not in _DEFAULT_SPLITS:
            raise fail("splits", f"unknown split {name!r}; the splits are train, dev, test")
    config = spec.get("config")
    if config is not None and not isinstance(config, str):
        raise fail("config", f"want the name of a hub configuration, got {config!r}")
    return LabelMap(path=path, text=spec["text"], mapping=mapping, label=label, labels=tuple(labels or ()),
                    separator=separator, splits=dict(splits), config=config)


def _file_type(path: Path) -> tuple[str, dict]:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ExtractError(f"{path}: not a file that emolab reads ({', '.join(FILE_TYPES)})", setting="data")
    return kind


def _load(source: str, lm: LabelMap):
    """The dataset's ``DatasetDict`` and where it came from (``kind:where``, as ``load_records`` says it)."""
    path = Path(source)
    if path.is_file():
        builder, options = _file_type(path)
        return load_local(builder, {"train": str(path)}, where=str(path), **options), f"file:{path.resolve()}"
    if path.is_dir():
        endings = {p.suffix.lower() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts)}
        kinds = {repr(FILE_TYPES[ending]) for ending in endings}  # .json and .jsonl are one kind
        if len(kinds) != 1:
            found = f"holds {sorted(endings)} files" if endings else "holds no data files"
            raise ExtractError(f"{path}: {found}; a folder of one kind ({', '.join(FILE_TYPES)}) is one dataset",
                               setting="data")
        _, options = FILE_TYPES[endings.pop()]  # datasets picks the reader and the splits from the file names
        return load_local(str(path.resolve()), None, where=str(path), **options), f"folder:{path.resolve()}"
    if source in ("auto", "bundled"):
        raise ExtractError(f"a label map ({lm.path}) goes with a dataset of your own (a file, folder or hub id), "
                           f"not {source!r}", setting="data")
    if is_hub_id(source):
        return load_hub(source, lm.config), f"hub:{source}"
    raise ExtractError(f"{source!r} is not an existing file or folder, or a hub id", setting="data")


def _split_name(lm: LabelMap, split: str, available: list[str], where: str) -> str:
    if split in lm.splits:
        if lm.splits[split] not in available:
            raise lm.fail("splits", f"{where} has no split {lm.splits[split]!r} (its splits: {', '.join(available)})")
        return lm.splits[split]
    for name in _DEFAULT_SPLITS[split]:
        if name in available:
            return name
    if split == "train" and len(available) == 1:  # one split: extraction splits it itself
        return available[0]
    raise lm.fail("splits", f"{where} has no {split} split (its splits: {', '.join(available)}); name one here")


def _class_names(feature) -> list[str] | None:
    """A ClassLabel column's names (also of a list of ClassLabels): its ints map by number or by name."""
    inner = getattr(feature, "feature", feature)
    return list(getattr(inner, "names", None) or []) or None


def _flag(value) -> bool:
    """A 0/1 label column's cell: 1, True, "1", "true", "yes" are on; 0, empty, NaN are off."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value.strip().lower() in _TRUE if isinstance(value, str) else bool(value)


def _row_keys(lm: LabelMap, row: dict, names: dict[str, list[str] | None]) -> list[str]:
    """A row's labels, as mapping keys (a ClassLabel's int gives the name when only the name is mapped)."""
    if lm.labels:
        return [column for column in lm.labels if _flag(row[column])]
    value = row[lm.label]
    if value is None:
        return []
    if isinstance(value, str) and lm.separator:
        items = [v for v in value.split(lm.separator) if v.strip()]
    else:
        items = value if isinstance(value, list) else [value]
    keys, classes = [], names[lm.label]
    for item in items:
        key = _key(item)
        if classes and key not in lm.mapping and isinstance(item, int) and 0 <= item < len(classes):
            key = classes[item]
        keys.append(key)
    return keys


def _records(lm: LabelMap, split, where: str) -> list[Record]:
    wanted = [lm.text, *lm.label_columns]
    present = list(split.column_names)
    for column in wanted:
        if column not in present:
            what = "text" if column == lm.text else ("label" if lm.label else "labels")
            raise lm.fail(what, f"no column {column!r} in {where} (its columns: {', '.join(present)})")
    rows = columns(split, list(dict.fromkeys(wanted)))
    names = {c: _class_names(split.features[c]) for c in lm.label_columns}
    records = []
    for i, text in enumerate(rows[lm.text]):
        if text is None or not str(text).strip():
            continue  # an empty cell is no example
        keys = _row_keys(lm, {c: rows[c][i] for c in lm.label_columns}, names)
        labels = tuple(dict.fromkeys(lm.mapping[k] for k in keys if k in lm.mapping))
        records.append(Record(str(text), labels))
    return records


def load_labelled(source: str, splits: tuple[str, ...], label_map: str | Path) -> tuple[list[Record], str]:
    """The records of ``splits`` of a dataset of your own, labelled by ``label_map``; and where they came from."""
    lm = read_label_map(label_map)
    ds, where = _load(source, lm)
    available = list(ds)
    records = []
    for split in splits:
        records += _records(lm, ds[_split_name(lm, split, available, where)], where)
    return records, where
