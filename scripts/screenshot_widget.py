"""Retake the README's widget screenshot from a running server.

    .venv/bin/ragserve serve &                      # over an index of samples/corpus
    .venv/bin/python scripts/screenshot_widget.py [--server http://127.0.0.1:8000]
        [--question "What does zlib's deflate do?"] [--out docs/widget-screenshot.png]

Drives Debian's Chromium (scripts/install_browser_deps.sh) through Playwright, as the browser
tests do: opens the demo page, asks the question in the widget, waits for the streamed answer
and its sources, opens the first source and saves the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
DONE = (
    "() => { const r = document.querySelector('#ragserve-widget').shadowRoot;"
    " const m = [...r.querySelectorAll('.rs-assistant')].pop();"
    " return m && !m.classList.contains('rs-pending') &&"
    " !!m.querySelector('.rs-sources, .rs-retry') || (m && m.classList.contains('rs-refused')); }"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--question", default="How do I set a timeout on an httpx client?")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "widget-screenshot.png")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--no-open-source", action="store_true", help="leave the sources folded")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("Chromium not found: run scripts/install_browser_deps.sh", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.server.rstrip("/") + "/")
        page.locator("#ragserve-widget .rs-bubble").click()
        box = page.locator("#ragserve-widget .rs-input")
        box.fill(args.question)
        box.press("Enter")
        page.wait_for_function(DONE, timeout=120_000)
        answer = page.locator("#ragserve-widget .rs-assistant").last
        source = answer.locator(".rs-source").first
        if not args.no_open_source and source.count():
            source.click()
        page.wait_for_timeout(300)  # let the stylesheet and the fold settle
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        refused = "rs-refused" in (answer.get_attribute("class") or "")
        print(f"saved {args.out} ({'refused' if refused else 'answered'}): {args.question}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
