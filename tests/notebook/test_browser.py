"""03_steer.ipynb in a real browser: JupyterLab on loopback, headless Debian Chromium driven by Playwright.

Runs all cells, drags the joy slider, presses generate, and checks that a steered reply appears
and differs from the baseline. The screenshot goes to executed/browser-03_steer.png.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from emolab.notebook.widgets import alpha_range

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "executed" / "browser-03_steer.png"
LONG_MS = 600_000  # model load and generation on a busy 2-core machine

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def lab_workspace(tmp: Path) -> Path:
    """A root for JupyterLab: a copy of the notebook (autosave must not write outputs into the repo's
    copy) beside a link to the committed vectors, with fewer new tokens and no preset alphas."""
    (tmp / "notebooks").mkdir(parents=True)
    (tmp / "vectors").symlink_to(ROOT / "vectors", target_is_directory=True)
    book = json.loads((ROOT / "notebooks" / "03_steer.ipynb").read_text())
    (params,) = [c for c in book["cells"] if "parameters" in c["metadata"].get("tags", [])]
    source = "".join(params["source"])
    for old, new in (("max_new_tokens = 40", "max_new_tokens = 16"), ('demo_alphas = None', "demo_alphas = {}")):
        assert old in source, f"parameters cell no longer has {old!r}"
        source = source.replace(old, new)
    params["source"] = source
    (tmp / "notebooks" / "03_steer.ipynb").write_text(json.dumps(book, indent=1))
    return tmp


@pytest.fixture
def jupyterlab(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} missing (Debian package chromium; `make setup` installs it as root)")
    pytest.importorskip("playwright.sync_api")
    root = lab_workspace(tmp_path / "lab")
    state = tmp_path / "state"
    env = {
        **os.environ,
        # keep the user's Jupyter settings and workspaces out of the test, and the test out of them
        "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
    }
    port, token = free_port(), secrets.token_hex(16)
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start\n" + (tmp_path / "lab.log").read_text()
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_for_idle_kernel(base: str, token: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as response:
            sessions = json.loads(response.read())
        if any(s["kernel"]["execution_state"] == "idle" for s in sessions):
            return
        time.sleep(0.5)
    raise TimeoutError("the notebook's kernel did not start")


def test_steer_notebook_in_chromium(jupyterlab):
    from playwright.sync_api import expect, sync_playwright

    base, token = jupyterlab
    SCREENSHOT.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/notebooks/03_steer.ipynb?token={token}", timeout=120_000)
            expect(page.locator(".jp-Notebook")).to_be_visible(timeout=120_000)
            wait_for_idle_kernel(base, token)  # "Run All" before the kernel is up would be lost

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            generate = page.locator(".emolab-generate")
            expect(generate).to_be_visible(timeout=LONG_MS)
            status = page.locator(".emolab-status")
            expect(status).to_have_text("done", timeout=LONG_MS)  # the headless cell ran with no alphas
            baseline = page.locator(".emolab-baseline pre").inner_text().strip()
            assert baseline
            assert page.locator(".emolab-steered pre").inner_text().strip() == baseline  # all alphas 0

            # drag the joy slider's handle to 80% of its track (the range follows the bundle's recommended alphas)
            low, high = alpha_range(json.loads((ROOT / "vectors" / "smollm2" / "metadata.json").read_text()))
            slider = page.locator(".emolab-alpha-joy")
            slider.scroll_into_view_if_needed()
            track = slider.locator(".noUi-base").bounding_box()
            handle = slider.locator(".noUi-handle").bounding_box()
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.8 * track["width"], track["y"] + track["height"] / 2, steps=12)
            page.mouse.up()
            alpha = float(slider.locator(".widget-readout").inner_text())
            assert abs(alpha - (low + 0.8 * (high - low))) < 0.1 * (high - low), (alpha, low, high)

            generate.click()
            title = page.locator(".emolab-steered b")
            expect(title).to_contain_text(f"joy={alpha:+.2f}", timeout=LONG_MS)
            expect(status).to_have_text("done", timeout=LONG_MS)
            steered = page.locator(".emolab-steered pre").inner_text().strip()
            assert steered and steered != baseline
            assert page.locator(".emolab-baseline pre").inner_text().strip() == baseline
            page.locator(".emolab-steered").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT), full_page=False)
        finally:
            browser.close()
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
