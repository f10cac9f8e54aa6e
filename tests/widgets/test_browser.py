"""The panel in a real browser: Voila serves notebooks/02_panel.ipynb on localhost, Playwright
drives Debian's chromium (its executable, not Playwright's own download): move a slider,
click Evaluate, and the accuracy text and the chart change."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "02_panel.ipynb"


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None
try:
    import voila  # noqa: F401
    HAVE_VOILA = True
except ImportError:
    HAVE_VOILA = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (Debian package 'chromium'; make venv installs it as root)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(not HAVE_VOILA, reason="voila is not installed (pip install -e '.[dev]')"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "static/", timeout=2):
                return
        except urllib.error.HTTPError:  # any answer means the server is up
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"voila did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def voila(tmp_path):
    port = _free_port()
    log = tmp_path / "voila.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--show_tracebacks=True", f"--Voila.root_dir={ROOT / 'notebooks'}"]
    with open(log, "wb") as out:
        # a session of its own, so the teardown stops voila and the kernel it started, nothing else
        proc = subprocess.Popen(cmd, cwd=ROOT / "notebooks", env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_http(url, proc, log)
        yield url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _runs_in_chart(page) -> set:
    svg = page.inner_html(".qlab-chart")
    return set(re.findall(r"<title>run: (\d+);", svg))


def test_panel_in_chromium(voila, tmp_path):
    voila_url, log = voila
    try:
        _drive_panel(voila_url, tmp_path)
    except Exception as e:  # a timeout says little by itself: add what the server printed
        raise AssertionError(f"{type(e).__name__}: {e}\n--- voila log (tail) ---\n{log.read_text()[-4000:]}") from e


def _drive_panel(voila_url, tmp_path):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(45_000)
            page.goto(voila_url)
            accuracy = page.locator(".qlab-accuracy")
            # the notebook's own cells made runs 1 (float) and 2 (every output fixed(2,0))
            # (the first visit runs the whole notebook: it may train lenet300 when nothing is cached)
            accuracy.filter(has_text="run 2:").wait_for(timeout=150_000)
            before = accuracy.inner_text()
            assert "extrinsic fixed(2,0,nearest) [all layers]" in before
            assert _runs_in_chart(page) == {"1", "2"}

            # move the all-layers W slider from 2 to 8 with the keyboard
            row = page.locator(".qlab-row-all")
            readout = row.locator(".qlab-W .widget-readout")
            assert readout.inner_text().strip() == "2"
            handle = row.locator(".qlab-W .noUi-handle")
            handle.focus()
            for _ in range(6):
                handle.press("ArrowRight")
            page.wait_for_function(
                "() => document.querySelector('.qlab-row-all .qlab-W .widget-readout').innerText.trim() === '8'")
            # the kernel saw it: every layer row follows the all-layers row
            page.wait_for_function(
                "() => [...document.querySelectorAll('.qlab-row .qlab-W .widget-readout')]"
                ".every(e => e.innerText.trim() === '8')")

            page.locator(".qlab-evaluate").click()
            accuracy.filter(has_text="run 3:").wait_for()
            after = accuracy.inner_text()
            assert after != before
            assert "extrinsic fixed(8,0,nearest) [all layers]" in after
            rel_before = float(re.search(r"relative accuracy ([\d.]+)", before).group(1))
            rel_after = float(re.search(r"relative accuracy ([\d.]+)", after).group(1))
            assert rel_after > rel_before  # 8 bits keep more accuracy than 2
            page.wait_for_function(
                "() => document.querySelector('.qlab-chart').innerHTML.includes('<title>run: 3;')")
            assert _runs_in_chart(page) == {"1", "2", "3"}

            shot = tmp_path / "panel.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            browser.close()
