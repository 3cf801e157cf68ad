"""The prediction browser in a real JupyterLab, driven by Chromium through Playwright.

Needs a Chromium binary (Debian: ``apt-get install chromium``; or set ``SKINSEG_CHROMIUM``) and the python
``playwright`` package; ``playwright install`` is not needed. Skipped when either is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from skinseg.paths import PROJ_ROOT, REPORTS_DIR
from conftest import train_tiny_checkpoint

pytestmark = pytest.mark.slow

TOKEN = "skinseg-browser-test"
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/lib/chromium/chromium-headless-shell",
                  "/usr/bin/chromium-headless-shell", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-gpu", "--disable-dev-shm-usage"]
IMAGE = "img.skinseg-image"
SLIDER_HANDLE = ".skinseg-slider .noUi-handle"
NEXT = ".skinseg-next button, button.skinseg-next"


def find_chromium() -> str | None:
    candidates = [os.environ.get("SKINSEG_CHROMIUM"), *CHROMIUM_PATHS, shutil.which("chromium")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(folder: Path, checkpoint: Path, root: Path) -> Path:
    import nbformat

    source = ("from skinseg.widgets import browse\n"
              f"b = browse({str(checkpoint)!r}, {str(root)!r}, splits=('val',))\n"
              "b")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    path = folder / "browser.ipynb"
    nbformat.write(nb, path)
    return path


def start_jupyterlab(folder: Path, port: int, log) -> subprocess.Popen:
    state = folder / ".jupyter-state"
    # no "notified about Jupyter news?" toast over the screenshot
    settings = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join([str(PROJ_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        # keep the user's workspaces, settings and runtime files out of it
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "IPYTHONDIR": str(state / "ipython"),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}",
        "--ServerApp.disable_check_xsrf=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_server(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


KERNEL_IDLE = ("() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
               ".some(e => /^(?!No Kernel).+\\|\\s*Idle$/.test(e.textContent.trim()))")
CELL_STARTED = ("() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]"
                ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")


def run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells from the menu bar once the notebook's kernel is idle; accept a kernel dialog if one
    pops up (it does when the session is not ready yet) and try again."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)
    for _ in range(attempts):
        select = page.locator(".jp-Dialog button:has-text('Select')")
        if select.count():
            select.first.click()
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item .lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(CELL_STARTED, timeout=15_000)
            return
        except Exception:  # playwright's TimeoutError: look for a dialog and retry
            continue
    raise AssertionError(f"the cell did not start after {attempts} tries of Run > Run All Cells")


def image_state(page) -> tuple[str, str]:
    """(src of the overlay img, hash of its pixels as rendered)."""
    element = page.locator(IMAGE).first
    return element.get_attribute("src") or "", hashlib.sha1(element.screenshot()).hexdigest()


def wait_for_new_image(page, old_src: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel); return e && e.src && e.src !== old"
        " && e.complete && e.naturalWidth > 0; }",
        arg=[IMAGE, old_src], timeout=timeout,
    )


def test_browser_renders_in_jupyterlab_and_the_slider_changes_the_image(tmp_path, cache_root):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found: install Debian's `chromium` (apt-get install chromium) or set SKINSEG_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")

    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "browser_failure.png").unlink(missing_ok=True)
    folder = tmp_path / "lab"
    folder.mkdir()
    port, log_path = free_port(), tmp_path / "jupyterlab.log"
    console: list[str] = []
    with open(log_path, "w") as log:
        proc = start_jupyterlab(folder, port, log)  # boots while the checkpoint trains
        try:
            checkpoint, root = train_tiny_checkpoint(tmp_path)
            write_notebook(folder, checkpoint, root)
            wait_for_server(proc, port, log_path)
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                try:
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/browser.ipynb?token={TOKEN}",
                              wait_until="domcontentloaded", timeout=60_000)
                    run_all_cells(page)
                    page.wait_for_selector(IMAGE, state="visible", timeout=120_000)
                    wait_for_new_image(page, "", timeout=30_000)
                    first_src, first_pixels = image_state(page)
                    first_id = page.locator(".skinseg-id select").input_value()

                    handle = page.locator(SLIDER_HANDLE).first
                    handle.focus()
                    handle.press("ArrowRight")
                    wait_for_new_image(page, first_src)
                    moved_src, moved_pixels = image_state(page)
                    moved_id = page.locator(".skinseg-id select").input_value()
                    assert moved_src != first_src and moved_pixels != first_pixels, "the slider did not redraw"
                    assert moved_id != first_id, f"the id dropdown stayed at {first_id} after the slider moved"

                    page.locator(NEXT).first.click()
                    wait_for_new_image(page, moved_src)
                    assert image_state(page)[1] != moved_pixels, "Next did not redraw the image"
                    page.locator(".jp-OutputArea-output").first.scroll_into_view_if_needed()
                    page.screenshot(path=str(REPORTS_DIR / "browser.png"))
                except Exception as e:
                    failure = REPORTS_DIR / "browser_failure.png"
                    page.screenshot(path=str(failure), full_page=True)
                    raise AssertionError(
                        f"{type(e).__name__}: {e}\nscreenshot: {failure}\nbrowser console (last 30):\n"
                        + "\n".join(console[-30:]) + f"\nJupyterLab log:\n{tail(log_path)}"
                    ) from e
                finally:
                    browser.close()
        finally:
            stop(proc)
    assert (REPORTS_DIR / "browser.png").stat().st_size > 10_000
    assert json.loads((folder / "browser.ipynb").read_text())["cells"]  # the notebook was not clobbered
