"""Bring your own dataset: a CSV (or JSONL, TSV, parquet, folder) and a label-mapping file, extracted on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from emolab.extraction import ExtractConfig, ExtractError, extract
from emolab.extraction.data import Record, load_records
from emolab.extraction.labelled import read_label_map

FEELINGS = {"angry": "anger", "happy": "joy", "3": "sadness"}  # the CSV's labels; 3 is an int label


def own_csv(folder: Path, per_class: int = 30) -> Path:
    """A CSV of distinct texts: `per_class` rows of each feeling, 7 unmapped 'bored' rows, 2 empty texts."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "feeling"])
        rows = [(f"{feeling} review number {i}, with \"quotes\"", feeling) for i in range(per_class) for feeling in FEELINGS]
        rows += [(f"a bored review {i}", "bored") for i in range(7)] + [("", "happy"), ("", "angry")]
        for n, (text, feeling) in enumerate(rows):
            writer.writerow([n, text, feeling])
    return path


def write_map(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec) if path.suffix == ".json" else "\n".join(f"{k}: {json.dumps(v)}" for k, v in spec.items()))
    return path


MAPPING = {"text": "review", "label": "feeling", "map": {"angry": "anger", "happy": "joy", "3": "sadness"}}


def test_a_csv_of_your_own_extracts_and_the_counts_follow_the_mapping(tiny, tmp_path):
    data = own_csv(tmp_path / "data")
    label_map = tmp_path / "feelings.yaml"
    label_map.write_text("text: review\nlabel: feeling\nmap:\n  angry: anger\n  happy: joy\n  3: sadness\n")
    model, tokenizer = tiny
    config = ExtractConfig(model="tiny", emotions=("anger", "joy", "sadness"), data=str(data), label_map=str(label_map),
                           layers="all", window=1, batch_size=30, max_length=32, test_size=0.2, seed=1, progress=False,
                           output=str(tmp_path / "bundle"))
    meta = extract(config, model=model, tokenizer=tokenizer).metadata
    assert meta["counts_available"] == {"anger": 30, "joy": 30, "sadness": 30}
    assert (meta["n_train"], meta["n_val"]) == (72, 18)
    assert meta["counts_train"] == {"anger": 24, "joy": 24, "sadness": 24}
    assert meta["dropped"]["no_target_emotion"] == 7  # the bored rows; the empty texts are no rows at all
    assert meta["data_source"] == f"file:{data.resolve()}"
    assert meta["label_map"] == str(label_map.resolve())


def test_the_records_of_a_csv(tmp_path):
    data = own_csv(tmp_path, per_class=2)
    records, source = load_records(str(data), label_map=write_map(tmp_path / "m.json", MAPPING))
    assert source == f"file:{data.resolve()}"
    assert records[:3] == [Record('angry review number 0, with "quotes"', ("anger",)),
                           Record('happy review number 0, with "quotes"', ("joy",)),
                           Record('3 review number 0, with "quotes"', ("sadness",))]
    assert records[6] == Record("a bored review 0", ()) and len(records) == 6 + 7


def test_label_columns_lists_splits_and_class_labels(tmp_path):
    # One 0/1 column per label (TSV), the column name being the label.
    (tmp_path / "flags.tsv").write_text("text\tis_mad\tis_glad\nfurious\t1\t0\nglad\t0\t1\nboth\t1\t1\nnone\t0\t0\n")
    spec = {"text": "text", "labels": ["is_mad", "is_glad"], "map": {"is_mad": "anger", "is_glad": "joy"}}
    records, _ = load_records(str(tmp_path / "flags.tsv"), label_map=write_map(tmp_path / "flags.yaml", spec))
    assert [r.labels for r in records] == [("anger",), ("joy",), ("anger", "joy"), ()]
    # A multi-label list column (JSONL) in a folder of splits: train and dev (datasets calls dev.jsonl "validation").
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"t": "a", "y": ["mad", "sad"]}\n{"t": "b", "y": []}\n')
    (folder / "dev.jsonl").write_text('{"t": "c", "y": ["glad"]}\n')
    spec = {"text": "t", "label": "y", "map": {"mad": "anger", "sad": "sadness", "glad": "joy"}}
    mapping = write_map(tmp_path / "split.yaml", spec)
    assert load_records(str(folder), label_map=mapping)[0] == [Record("a", ("anger", "sadness")), Record("b", ())]
    dev, source = load_records(str(folder), ("dev",), label_map=mapping)
    assert dev == [Record("c", ("joy",))] and source == f"folder:{folder.resolve()}"
    with pytest.raises(ExtractError, match="no test split") as info:
        load_records(str(folder), ("test",), label_map=mapping)
    assert str(mapping) in str(info.value) and info.value.setting == "label_map"
    spec["splits"] = {"train": "validation"}  # which split means train, named in the file
    assert load_records(str(folder), label_map=write_map(mapping, spec))[0] == [Record("c", ("joy",))]
    # A comma-separated string of labels, and a ClassLabel column (parquet written by datasets), by name or by id.
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["sadness", "joy", "anger"])})
    datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [0, 1, 2]}, features=features).to_parquet(
        str(tmp_path / "classes.parquet"))
    spec = {"text": "text", "label": "label", "map": {"sadness": "sadness", "1": "joy"}}
    records, _ = load_records(str(tmp_path / "classes.parquet"), label_map=write_map(tmp_path / "c.yaml", spec))
    assert [r.labels for r in records] == [("sadness",), ("joy",), ()]
    (tmp_path / "sep.csv").write_text('text,tags\nq,"2,x"\n')
    spec = {"text": "text", "label": "tags", "separator": ",", "map": {2: "fear", "x": "fear"}}
    assert load_records(str(tmp_path / "sep.csv"), label_map=write_map(tmp_path / "s.yaml", spec))[0] == [Record("q", ("fear",))]


@pytest.mark.parametrize("change, field, message", [
    ({"text": "body"}, "text", "no column 'body'"),
    ({"label": "mood"}, "label", "no column 'mood'"),
    ({"map": {"happy": "joyful"}}, "map", "'joyful' is not an emotion"),
    ({"text": None}, "text", "missing"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"label": None}, "label", "name one label column"),
    ({"splits": {"training": "train"}}, "splits", "unknown split"),
])
def test_a_bad_mapping_file_is_one_error_naming_the_file_and_the_field(tmp_path, change, field, message):
    data = own_csv(tmp_path, per_class=2)
    spec = {k: v for k, v in {**MAPPING, **change}.items() if v is not None}
    path = write_map(tmp_path / "bad.yaml", spec)
    with pytest.raises(ExtractError) as info:
        load_records(str(data), label_map=path)
    assert str(info.value).startswith(f"{path}: {field}: ") and message in str(info.value)
    assert info.value.setting == "label_map"


def test_unreadable_mapping_files(tmp_path):
    for text in ("[1, 2]", "text: [unclosed"):
        path = tmp_path / "m.yaml"
        path.write_text(text)
        with pytest.raises(ExtractError, match=str(path)):
            read_label_map(path)
    with pytest.raises(ExtractError, match="no such label-mapping file"):
        read_label_map(tmp_path / "absent.yaml")
    with pytest.raises(ExtractError, match="not 'bundled'"):
        load_records("bundled", label_map=write_map(tmp_path / "ok.yaml", MAPPING))


def test_the_cli_takes_a_label_map(tiny_qwen3_path, tmp_path, capsys):
    data = own_csv(tmp_path / "data", per_class=10)
    good = write_map(tmp_path / "map.yaml", MAPPING)
    out = tmp_path / "bundle"
    argv = ["extract", "--model", str(tiny_qwen3_path), "--data", str(data), "--label-map", str(good),
            "--emotions", "anger,joy,sadness", "--layers", "all", "--window", "1", "--max-length", "32",
            "--no-progress", "--output", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "metadata.json").read_text())["counts_available"] == {"anger": 10, "joy": 10, "sadness": 10}
    bad = write_map(tmp_path / "bad.yaml", {**MAPPING, "map": {"happy": "glee"}})
    argv[argv.index(str(good))] = str(bad)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"emolab extract: error: --label-map: {bad}: map: 'happy' -> 'glee' is not an emotion; map onto anger, "
        "disgust, fear, joy, sadness, surprise, neutral or a GoEmotions label"]
