from __future__ import annotations

import pytest

from ragserve.grounding.show_code import attach_code
from ragserve.text.support import SentenceSupport

pytestmark = pytest.mark.fast  # pure logic: a stemmer, no model (make test-fast)

HTTP2 = (
    "If you're issuing highly concurrent requests you might want to consider trying out our "
    "HTTP/2 support. You can do so by first making sure to install the optional HTTP/2 "
    "dependencies...\n\n```shell\n$ pip install httpx[http2]\n```\n\n"
    "And then instantiating a client with HTTP/2 support enabled:\n\n"
    "```python\nclient = httpx.AsyncClient(http2=True)\n...\n```\n\n"
    "You can also instantiate a client as a context manager."
)
QUESTION = "How do I enable HTTP/2?"
PROSE = (
    "To enable HTTP/2, you need to install the optional HTTP/2 dependencies using pip and "
    "instantiate a client with HTTP/2 support enabled. [1]"
)


@pytest.fixture(scope="module")
def support() -> SentenceSupport:
    return SentenceSupport()


def test_a_how_to_answer_in_prose_gets_the_code_its_source_shows(support: SentenceSupport) -> None:
    answer = attach_code(PROSE, [HTTP2], [1], support, question=QUESTION)
    assert answer.startswith(PROSE)
    # Both steps the answer names, in the source's order, as the source has them.
    assert answer.index("pip install httpx[http2]") < answer.index("AsyncClient(http2=True)")
    assert answer.endswith("client = httpx.AsyncClient(http2=True)\n...\n```")


def test_tilde_fenced_blocks_are_shown_and_recognised(support: SentenceSupport) -> None:
    tilde = HTTP2.replace("```", "~~~")
    answer = attach_code(PROSE, [tilde], [1], support, question=QUESTION)
    assert answer.endswith("~~~python\nclient = httpx.AsyncClient(http2=True)\n...\n~~~")
    assert attach_code(answer, [HTTP2], [1], support, question=QUESTION) == answer


def test_code_comes_only_from_cited_sources_and_paraphrased_steps(
    support: SentenceSupport,
) -> None:
    other = "A different page.\n\nFor retries use a transport:\n\n```python\nt = T(retries=1)\n```"
    assert attach_code(PROSE, [other, HTTP2], [1], support, question=QUESTION) == PROSE
    unrelated = "HTTP/2 is a binary protocol with multiplexed streams. [1]"
    assert attach_code(unrelated, [HTTP2], [1], support, question=QUESTION) == unrelated
    assert attach_code(PROSE, [HTTP2], [], support, question=QUESTION) == PROSE


def test_an_answer_that_shows_code_or_a_cut_block_is_left_alone(support: SentenceSupport) -> None:
    shown = PROSE.replace("enabled.", "enabled: `httpx.AsyncClient(http2=True)`.")
    assert attach_code(shown, [HTTP2], [1], support, question=QUESTION) == shown
    cut = HTTP2.split("...\n```")[0]  # the context window ended inside the second block
    answer = attach_code(PROSE, [cut], [1], support, question=QUESTION)
    assert "pip install" in answer and "AsyncClient" not in answer
