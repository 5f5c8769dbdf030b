"""Every image a Markdown file links exists, relative to that file: the repository's Markdown (README.md,
docs/**/*.md and the rest git knows) and the reports emolab's writers produce (eval sweep, tune report and
docs/steering-effect.md's generator, controls comparison, readout checks), written here with those writers.

docs/steering-effect.md once lost its figures when it was regenerated; the writers now save and link their
plots, and this keeps both the pages and the writers honest. The reports of real runs are checked with the
same helper in their own tests (tests/evaluate/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
from markdown_links import broken_links, linked_images, missing_images
from report_samples import controls_report, eval_report, tune_report

ROOT = Path(__file__).resolve().parent.parent


def _repository_markdown() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def _written_reports(folder: Path) -> list[Path]:
    from emolab.evaluate.controls_report import save_controls_report
    from emolab.evaluate.readout_report import write_readout_report
    from emolab.evaluate.report import save_report
    from emolab.evaluate.tune_report import save_tune_report, write_tune_markdown

    written = [save_report(eval_report(), folder / "eval") / "tables.md",
               save_tune_report(tune_report(), folder / "tune") / "tables.md",
               write_tune_markdown(tune_report(), folder / "docs" / "steering-effect.md"),
               save_controls_report(controls_report(), folder / "controls")]
    emotions = ["anger", "joy"]
    auc = pd.DataFrame({"emotion": emotions, "layers": ["3-4", "3-4"], "texts": [40, 40],
                        "readout_auc_mean": [0.8, 0.7], "mean_ci_low": [0.7, 0.6], "mean_ci_high": [0.9, 0.8],
                        "readout_auc_last": [0.75, 0.65], "last_ci_low": [0.6, 0.5], "last_ci_high": [0.85, 0.8],
                        "probe_auc": [0.9, 0.85]})
    summary = pd.DataFrame({"emotion": emotions * 2, "alpha": [0.3, 0.3, -0.3, -0.3], "prompts": [8] * 4,
                            "unsteered_score": [0.1] * 4, "steered_score": [0.6, 0.4, -0.3, -0.2],
                            "shift": [0.5, 0.3, -0.4, -0.3], "ci_low": [0.3, 0.1, -0.6, -0.5],
                            "ci_high": [0.7, 0.5, -0.2, -0.1]})
    written.append(write_readout_report(folder / "readout", auc, summary, pd.DataFrame({"reply": ["a"]}),
                                        model="m", bundle="b", scale="raw", settings=""))
    return written


def test_every_linked_image_exists(tmp_path):
    reports = _written_reports(tmp_path)
    pages = _repository_markdown()
    assert ROOT / "README.md" in pages and ROOT / "docs" / "steering-effect.md" in pages
    for report in reports:  # each writer writes its plots and links them
        assert linked_images(report), report
    assert linked_images(ROOT / "docs" / "steering-effect.md")  # the page shows its figures again
    missing = {str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.relative_to(tmp_path)): gone
               for path in pages + reports if (gone := missing_images(path))}
    assert missing == {}
    # and the check itself sees a broken link, a link inside a code block is not one, a web image is not local
    (tmp_path / "broken.md").write_text("![a](img/there.png)\n```\n![b](img/code.png)\n```\n"
                                        "![c](https://example.org/x.png) <img src='img/html.png'>\n")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "there.png").write_bytes(b"png")
    assert linked_images(tmp_path / "broken.md") == ["img/there.png", "img/html.png"]
    assert missing_images(tmp_path / "broken.md") == ["img/html.png"]


def test_every_relative_link_and_anchor_resolves():
    """The README is a short tour that links a docs/ page per stage: every such link, and every #anchor in
    it, must land (a moved section would otherwise leave a dead link behind)."""
    pages = _repository_markdown()
    assert broken_links(ROOT / "README.md") == [] and "docs/extract.md" in (ROOT / "README.md").read_text()
    broken = {str(path.relative_to(ROOT)): gone for path in pages if (gone := broken_links(path))}
    assert broken == {}
