"""The guard in conftest.py fails a run that writes into a tracked file, and leaves a clean run alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_repo(tmp_path: Path, test_body: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "bundle.json").write_text('{"alpha": 1}\n')
    shutil.copy(HERE / "git_guard.py", repo / "tests" / "git_guard.py")
    (repo / "tests" / "conftest.py").write_text(
        "from pathlib import Path\n"
        "from git_guard import fail_if_tracked_files_changed, remember_tracked_state\n"
        "ROOT = Path(__file__).resolve().parent.parent\n"
        "def pytest_sessionstart(session):\n    remember_tracked_state(session, ROOT)\n"
        "def pytest_sessionfinish(session, exitstatus):\n    fail_if_tracked_files_changed(session, ROOT)\n")
    (repo / "tests" / "test_x.py").write_text(test_body)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    return repo


def run_pytest(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo,
                          capture_output=True, text=True, timeout=300)


def test_a_run_that_writes_into_a_tracked_file_fails(tmp_path):
    repo = make_repo(tmp_path, "from pathlib import Path\n"
                               "def test_overwrites():\n"
                               "    (Path(__file__).parent.parent / 'bundle.json').write_text('{}')\n")
    done = run_pytest(repo)
    assert done.returncode == 1, done.stdout
    assert "TESTS WROTE INTO TRACKED FILES" in done.stdout and "bundle.json" in done.stdout


def test_a_clean_run_passes(tmp_path):
    repo = make_repo(tmp_path, "def test_nothing():\n    assert True\n")
    done = run_pytest(repo)
    assert done.returncode == 0, done.stdout
