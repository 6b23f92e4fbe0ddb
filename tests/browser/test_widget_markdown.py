"""The widget renders an answer's Markdown, safely, in headless Chromium.

Answers are fed through a route stub on /chat (an SSE body of token events and a done event), so
each test controls exactly what the "model" wrote, hostile parts included.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser

SOURCES = [
    {
        "id": "a",
        "source": "timeouts.md",
        "page": None,
        "section": "Timeouts",
        "score": 1.0,
        "text": "Timeouts default to five seconds.",
    },
    {
        "id": "b",
        "source": "zlib.3.pdf",
        "page": 1,
        "section": None,
        "score": 0.9,
        "text": "The zlib library is a general purpose data compression library.",
    },
]


def _sse(tokens: list[str], answer: str | None = None, refused: bool = False) -> str:
    events = [f"event: token\ndata: {json.dumps({'text': t})}\n\n" for t in tokens]
    done = {
        "answer": "".join(tokens) if answer is None else answer,
        "sources": SOURCES,
        "citations": [{"number": 1, "span": "five seconds"}, {"number": 2, "span": "zlib"}],
        "timings": {},
        "refused": refused,
    }
    events.append(f"event: done\ndata: {json.dumps(done)}\n\n")
    return "".join(events)


def _answer(page, tokens: list[str], final: str | None = None):  # type: ignore[no-untyped-def]
    """Ask anything; the stubbed server streams ``tokens`` (then ``final`` as the done event's
    answer, by default the tokens joined); returns the answer's body."""
    page.route(
        "**/chat",
        lambda route: route.fulfill(
            status=200, body=_sse(tokens, final), headers={"content-type": "text/event-stream"}
        ),
    )
    page.locator("#ragserve-widget .rs-bubble").click()
    box = page.locator("#ragserve-widget .rs-input")
    box.fill("a question")
    box.press("Enter")
    msg = page.locator("#ragserve-widget .rs-assistant").last
    msg.locator(".rs-sources li").first.wait_for(timeout=15_000)
    return msg.locator(".rs-body")


def _shadow(page, script: str):  # type: ignore[no-untyped-def]
    return page.evaluate(
        "() => { const root = document.querySelector('#ragserve-widget').shadowRoot;"
        " const body = [...root.querySelectorAll('.rs-assistant .rs-body')].pop();"
        f" return ({script}); }}"
    )


def test_links_render_as_safe_anchors(page) -> None:  # type: ignore[no-untyped-def]
    body = _answer(
        page,
        [
            "See the [httpx docs](https://www.python-httpx.org/advanced/",
            "timeouts/) ",
            "or https://zlib.net/manual.html.",
        ],
    )
    links = _shadow(
        page,
        "[...body.querySelectorAll('a')].map(a => [a.textContent, a.getAttribute('href'),"
        " a.getAttribute('rel'), a.getAttribute('target')])",
    )
    assert links == [
        [
            "httpx docs",
            "https://www.python-httpx.org/advanced/timeouts/",
            "noopener noreferrer",
            "_blank",
        ],
        [
            "https://zlib.net/manual.html",
            "https://zlib.net/manual.html",
            "noopener noreferrer",
            "_blank",
        ],
    ]
    assert "[httpx docs]" not in body.inner_text()
    assert body.inner_text().rstrip().endswith("manual.html.")  # the full stop is not in the link


def test_hostile_markdown_and_html_stay_text(page) -> None:  # type: ignore[no-untyped-def]
    hostile = (
        "Click [me](javascript:window.__xss=1) or [this](JaVaScRiPt:alert(1)) or "
        "[data](data:text/html,<script>window.__xss=1</script>) or [rel](/relative).\n\n"
        '<script>window.__xss=1</script> <img src=x onerror="window.__xss=1"> '
        '<a href="javascript:window.__xss=1">raw</a> **<b>bold</b>** `<i>code</i>`'
    )
    body = _answer(page, [hostile[i : i + 7] for i in range(0, len(hostile), 7)])
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__xss") is None
    assert _shadow(page, "body.querySelectorAll('script, img, b, i, [onerror]').length") == 0
    hrefs = _shadow(page, "[...body.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert hrefs == []  # javascript:, data: and relative links are not made links
    text = body.inner_text()
    assert "<script>window.__xss=1</script>" in text and "<img src=x" in text
    assert "me" in text and "javascript:" not in text.split("<a href")[0]
    assert _shadow(page, "body.querySelector('strong').textContent") == "<b>bold</b>"
    assert _shadow(page, "body.querySelector('code').textContent") == "<i>code</i>"


def test_code_lists_and_emphasis(page) -> None:  # type: ignore[no-untyped-def]
    md = (
        "Use `httpx.Timeout` with **care** and *patience*:\n\n"
        "```python\nclient = httpx.Client(timeout=10.0)\nif a < b and c > d: pass\n```\n\n"
        "1. first step\n2. second `step`\n\n"
        "- one\n- two\n  - nested\n\n"
        "Done [1]."
    )
    _answer(page, [md[i : i + 5] for i in range(0, len(md), 5)])  # fences split across tokens
    assert _shadow(page, "body.querySelector('p code').textContent") == "httpx.Timeout"
    assert _shadow(page, "body.querySelector('p strong').textContent") == "care"
    assert _shadow(page, "body.querySelector('p em').textContent") == "patience"
    code = _shadow(
        page,
        "[body.querySelector('pre > code').textContent, body.querySelector('pre > code').className]",
    )
    assert code == [
        "client = httpx.Client(timeout=10.0)\nif a < b and c > d: pass",
        "language-python",
    ]
    assert _shadow(page, "[...body.querySelectorAll('ol > li')].map(li => li.textContent)") == [
        "first step",
        "second step",
    ]
    assert _shadow(page, "body.querySelector('ol li:nth-child(2) code').textContent") == "step"
    assert _shadow(page, "[...body.querySelectorAll(':scope > ul > li')].length") == 2
    assert _shadow(page, "body.querySelector('ul ul li').textContent") == "nested"
    assert "```" not in _shadow(page, "body.textContent")


def test_tokens_render_as_they_stream(page) -> None:  # type: ignore[no-untyped-def]
    # Every change to the log is recorded, so what the reader saw before the done event (whose
    # answer here differs) can be checked: an unclosed fence already shows as code.
    page.locator("#ragserve-widget .rs-bubble").click()
    page.evaluate(
        "() => { window.__seen = []; const log = document.querySelector('#ragserve-widget')"
        ".shadowRoot.querySelector('.rs-log'); new MutationObserver(() => {"
        " const code = [...log.querySelectorAll('.rs-assistant pre code')].pop();"
        " if (code) window.__seen.push(code.textContent); })"
        ".observe(log, { childList: true, subtree: true, characterData: true }); }"
    )
    page.locator("#ragserve-widget .rs-bubble").click()  # _answer opens the panel again
    body = _answer(page, ["Run:\n\n```\npip install", " ragserve\n"], final="Done **now**.")
    assert "pip install ragserve" in page.evaluate("() => window.__seen")
    assert body.inner_text().strip() == "Done now."
    assert _shadow(page, "body.querySelector('strong').textContent") == "now"


def test_hostile_nesting_renders_without_exhausting_the_stack(page) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    deep = "> " * 20_000 + "deep quote\n\n" + "*_" * 20_000 + "x" + "_*" * 20_000 + "\n\n"
    deep += "".join("  " * n + "- level\n" for n in range(300)) + "\nthe end"
    body = _answer(page, [deep])
    assert errors == []
    text = body.inner_text()
    assert "deep quote" in text and text.rstrip().endswith("the end")


def test_citations_open_their_source(page) -> None:  # type: ignore[no-untyped-def]
    body = _answer(page, ["Timeouts default to five seconds [1]; zlib compresses [2]."])
    cites = body.locator(".rs-cite")
    assert cites.count() == 2 and cites.nth(1).inner_text() == "[2]"
    msg = page.locator("#ragserve-widget .rs-assistant").last
    assert not msg.locator(".rs-source-text").nth(1).is_visible()
    cites.nth(1).click()
    assert msg.locator(".rs-source-text").nth(1).is_visible()
    assert "zlib" in msg.locator(".rs-source-text").nth(1).inner_text()


@pytest.mark.parametrize(
    ("kind", "style"), [("clarify", "rs-clarify"), ("reply", "rs-reply"), ("refusal", "rs-refused")]
)
def test_each_kind_of_reply_has_its_own_look(page, kind: str, style: str) -> None:  # type: ignore[no-untyped-def]
    # A question back is rendered as one (not as a refusal) and lists no sources; the done
    # event's kind decides, not the answer's words.
    text = {"clarify": "Do you mean **Basic plan** or Team plan?", "reply": "Glad it helps."}
    answer = text.get(kind, "I couldn't find that in the documents.")
    done = {"answer": answer, "sources": SOURCES, "citations": [], "timings": {}}
    done |= {"refused": kind == "refusal", "kind": kind}
    sse = f"event: token\ndata: {json.dumps({'text': answer})}\n\nevent: done\ndata: {json.dumps(done)}\n\n"
    page.route(
        "**/chat",
        lambda route: route.fulfill(
            status=200, body=sse, headers={"content-type": "text/event-stream"}
        ),
    )
    page.locator("#ragserve-widget .rs-bubble").click()
    box = page.locator("#ragserve-widget .rs-input")
    box.fill("What does the plan cost?")
    box.press("Enter")
    msg = page.locator("#ragserve-widget .rs-assistant[data-kind]").last
    msg.wait_for(timeout=15_000)
    classes = (msg.get_attribute("class") or "").split()
    assert msg.get_attribute("data-kind") == kind and style in classes
    assert {"rs-clarify", "rs-reply", "rs-refused"} & set(classes) == {style}
    assert msg.locator(".rs-sources").count() == 0
    if kind == "clarify":
        assert msg.locator("strong").inner_text() == "Basic plan"  # Markdown still renders
