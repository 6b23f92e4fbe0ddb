"""The chat widget end to end in headless Chromium against a real server."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser


def _open(page) -> None:  # type: ignore[no-untyped-def]
    page.locator("#ragserve-widget .rs-bubble").click()
    page.locator("#ragserve-widget .rs-panel").wait_for(state="visible")


def _ask(page, question: str) -> None:  # type: ignore[no-untyped-def]
    box = page.locator("#ragserve-widget .rs-input")
    box.fill(question)
    box.press("Enter")


def _last_answer(page):  # type: ignore[no-untyped-def]
    return page.locator("#ragserve-widget .rs-assistant").last


def test_ask_streams_answer_with_sources_then_follow_up_uses_history(page) -> None:  # type: ignore[no-untyped-def]
    bodies: list[dict] = []
    page.on(
        "request",
        lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat") else None,
    )
    _open(page)
    assert page.locator("#ragserve-widget [role=dialog]").count() == 1
    assert page.locator("#ragserve-widget [role=log]").get_attribute("aria-live") == "polite"
    _ask(page, "How do I set a timeout on an httpx client?")
    answer = _last_answer(page)
    answer.locator(".rs-sources li").first.wait_for(timeout=60_000)
    assert "timeout" in answer.inner_text().lower()
    source = answer.locator(".rs-source").first
    assert "timeouts.md" in source.inner_text()
    source.click()
    assert answer.locator(".rs-source-text").first.is_visible()
    assert bodies[0]["stream"] is True and bodies[0]["history"] == []
    # No screenshot here: scripts/screenshot_widget.py retakes the README's on purpose.

    _ask(page, "And how do I disable it?")
    page.wait_for_function(
        "() => document.querySelector('#ragserve-widget').shadowRoot"
        ".querySelectorAll('.rs-assistant .rs-sources, .rs-assistant.rs-refused').length >= 2",
        timeout=60_000,
    )
    assert len(bodies) == 2
    history = bodies[1]["history"]
    assert history[0] == {"role": "user", "content": "How do I set a timeout on an httpx client?"}
    assert history[1]["role"] == "assistant" and history[1]["content"]


def test_planted_html_is_shown_as_text_and_never_runs(page) -> None:  # type: ignore[no-untyped-def]
    _open(page)
    # Capitalised, it names its subject: "the llama festival" alone is asked back (clarify).
    _ask(page, "What is the secret password of the Llama festival?")
    answer = _last_answer(page)
    answer.locator(".rs-sources li").first.wait_for(timeout=60_000)
    text = answer.inner_text()
    assert "<img" in text or "<script>" in text, text  # shown literally
    answer.locator(".rs-source").first.click()
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__xss") is None
    assert (
        page.evaluate(
            "() => document.querySelector('#ragserve-widget').shadowRoot.querySelectorAll('img, script').length"
        )
        == 0
    )


def test_escape_closes_and_enter_sends(page) -> None:  # type: ignore[no-untyped-def]
    _open(page)
    page.keyboard.press("Escape")
    assert page.locator("#ragserve-widget .rs-panel").is_hidden()


def test_server_down_shows_error_and_retry_works(page) -> None:  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def flaky(route):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            route.abort()
        else:
            route.continue_()

    page.route("**/chat", flaky)
    _open(page)
    _ask(page, "How do I enable HTTP/2?")
    err = page.locator("#ragserve-widget .rs-error")
    err.wait_for(timeout=30_000)
    assert "reach the server" in err.inner_text()
    err.locator(".rs-retry").click()
    _last_answer(page).locator(".rs-sources li").first.wait_for(timeout=60_000)


def test_non_json_error_is_shown_not_a_crash(page) -> None:  # type: ignore[no-untyped-def]
    page.route(
        "**/chat",
        lambda route: route.fulfill(
            status=500, body="<html>Bad gateway</html>", content_type="text/html"
        ),
    )
    _open(page)
    _ask(page, "anything")
    err = page.locator("#ragserve-widget .rs-error")
    err.wait_for(timeout=15_000)
    assert "500" in err.inner_text() and err.locator(".rs-retry").count() == 1


def test_mobile_width(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 375, "height": 700})
    page = context.new_page()
    page.goto(server + "/")
    _open(page)
    box = page.locator("#ragserve-widget .rs-panel").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    context.close()
