"""A real ragserve server and a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Two documents about two different plans: "What does the plan cost?" gets a question back.
PLAN_DOCS = {
    "basic-plan.md": "# Basic plan\n\nThe Basic plan costs 10 dollars a month and includes 5 "
    "projects and email support.\n",
    "team-plan.md": "# Team plan\n\nThe Team plan costs 40 dollars a month and includes "
    "unlimited projects and phone support.\n",
}

XSS_DOC = """# Llama festival archive

The secret password of the llama festival is <img src=x onerror="window.__xss=1"> written on a
<script>window.__xss=1</script> scroll kept in the archive.
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Iterator[str]:
    work = tmp_path_factory.mktemp("browser")
    corpus = work / "corpus"
    corpus.mkdir()
    for name in ("timeouts.md", "http2.md", "proxies.md"):
        shutil.copy(sample_corpus / "httpx" / name, corpus / name)
    (corpus / "festival.md").write_text(XSS_DOC)
    for name, text in PLAN_DOCS.items():
        (corpus / name).write_text(text)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(work / "index"),
        "HF_HUB_OFFLINE": "1",
        "RAGSERVE_CORS_ORIGINS": f'["{url}"]',
        "RAGSERVE_NO_PROGRESS": "1",
        "RAGSERVE_RATE_LIMIT_PER_MINUTE": "1000",
        # Two shared cores: a slow answer must still be an answer, not a timeout.
        "RAGSERVE_LLM_TIMEOUT_S": "240",
    }
    subprocess.run(
        [sys.executable, "-m", "ragserve.cli.main", "ingest", str(corpus)],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli.main", "serve", "--port", str(port)],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("server exited: " + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("server not ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Per module: Playwright's sync API keeps an event loop running in the main thread while
    it is open, and tests outside this folder start loops of their own there (asyncio.run)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/install_browser_deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = context.new_page()
    pg.goto(server + "/")
    yield pg
    context.close()
