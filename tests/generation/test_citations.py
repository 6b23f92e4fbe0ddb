from __future__ import annotations

import pytest

from ragserve.context.assembler import ContextAssembler
from ragserve.generation.citations import (
    REFUSAL_TEXT,
    attribute,
    is_refusal,
    validate_citations,
)
from ragserve.types import Chunk, Hit

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)


def _ctx():  # type: ignore[no-untyped-def]
    texts = [
        "Timeouts default to five seconds. They can be disabled with None.",
        "HTTP/2 is enabled with http2=True. It needs the h2 package.",
    ]
    hits = [
        Hit(
            Chunk(
                id=f"c{i}",
                doc_id="d",
                source=f"s{i}.md",
                text=t,
                chunk_index=i,
                char_start=0,
                char_end=len(t),
                content_hash="h",
                page=i + 1,
            ),
            1.0,
        )
        for i, t in enumerate(texts)
    ]
    return ContextAssembler(lambda s: len(s.split())).assemble("q", hits)


def test_valid_citations_get_metadata_and_supporting_span() -> None:
    _text, cites, invalid = validate_citations(
        "The default timeout is five seconds [1]. Use http2=True [2].", _ctx()
    )
    assert invalid == [] and [c.number for c in cites] == [1, 2]
    assert cites[0].source == "s0.md" and cites[0].page == 1
    assert cites[0].span == "Timeouts default to five seconds."
    assert cites[1].span == "HTTP/2 is enabled with http2=True."


def test_invented_source_numbers_are_dropped_and_reported() -> None:
    text, cites, invalid = validate_citations("Five seconds [1][7]. Also [3, 2].", _ctx())
    assert invalid == [3, 7]
    assert "[7]" not in text and "[3" not in text and "[1]" in text and "[2]" in text
    assert {c.number for c in cites} == {1, 2}


def test_source_n_style_markers_are_normalised() -> None:
    text, cites, _ = validate_citations("Five seconds [Source 1].", _ctx())
    assert text == "Five seconds [1]." and cites[0].number == 1


def test_refusal_detection() -> None:
    assert is_refusal(REFUSAL_TEXT)
    assert is_refusal("The provided sources do not contain information about llamas.")
    assert is_refusal("I don't know.")
    assert not is_refusal("Timeouts default to five seconds [1].")


def test_an_uncited_answer_is_credited_to_the_source_that_contains_it() -> None:
    texts = ["Paris is the capital of France.", "The Eiffel Tower is 330 metres tall."]
    assert attribute("330 metres", texts) == 2
    assert attribute("the capital of France", texts) == 1


def test_an_answer_no_source_supports_gets_no_citation() -> None:
    texts = ["Paris is the capital of France."]
    assert attribute("Berlin, in 1961", texts) is None
    assert attribute("", texts) is None


def test_words_repeated_from_the_question_do_not_count_as_support() -> None:
    texts = ["Manning, 39, became the oldest quarterback to play in a Super Bowl."]
    question = "How old was Peyton Manning when he played in Super Bowl 50?"
    assert attribute("He was 39 years old when he played in Super Bowl 50.", texts) is None
    assert attribute("He was 39 years old", texts, question=question) is None
    assert attribute("39", texts, question=question) == 1
    assert attribute("Peyton Manning played in Super Bowl 50", texts, question=question) is None


def test_ground_keeps_a_citation_whose_source_holds_the_answer() -> None:
    from ragserve.grounding.evidence import ground

    texts = ["Timeouts default to five seconds.", "HTTP/2 needs the h2 package."]
    assert ground("five seconds [1]", texts, [1], question="What is the default timeout?") == [1]


def test_ground_moves_a_wrong_citation_to_the_source_that_holds_the_words() -> None:
    from ragserve.grounding.evidence import ground

    texts = ["Timeouts default to five seconds.", "HTTP/2 needs the h2 package."]
    assert ground("the h2 package [1]", texts, [1], question="What does HTTP/2 need?") == [2]


def test_ground_rejects_a_fact_no_source_states() -> None:
    from ragserve.grounding.evidence import ground

    texts = ["The Louvre is a museum in Paris.", "It holds the Mona Lisa."]
    assert (
        ground("It was founded in 1762. [2]", texts, [2], question="When was the Louvre founded?")
        is None
    )


def test_ground_does_not_count_function_words_as_unsupported() -> None:
    from ragserve.grounding.evidence import ground

    texts = ["For instance: transport = httpx.AsyncHTTPTransport(retries=1) for AsyncClient."]
    question = "How do I configure retries in httpx?"
    framed = "You can set it when you create it: `httpx.AsyncHTTPTransport(retries=1)` [1]."
    assert ground(framed, texts, [1], question=question) == [1]
    assert (
        ground("You can set it with a backoff factor of 3 [1].", texts, [1], question=question)
        is None
    )


_ASYNC_MD = (
    "You can configure an httpx client to call directly into a Python web application.\n\n"
    "For instance:\n\n```pycon\n>>> import httpx\n"
    ">>> transport = httpx.AsyncHTTPTransport(retries=1)\n"
    ">>> async with httpx.AsyncClient(transport=transport) as client:\n...     ...\n```"
)
_SSL_MD = (
    "If you're using a `Client()` instance you should pass any `verify=<...>` configuration "
    "when instantiating the client.\n\n```pycon\n>>> import httpx\n"
    ">>> client = httpx.Client(verify=False)\n```"
)
_RETRIES = "How do I configure retries in httpx?"


def test_ground_rejects_code_composed_from_words_the_sources_hold() -> None:
    from ragserve.grounding.evidence import ground

    # Every word of the invented call is in ssl.md (retries is the question's own), so the
    # word check alone passes it; its token pairs (Client + retries) are in no source.
    invented = (
        "Pass it to the client:\n\n```python\nimport httpx\nclient = httpx.Client(retries=3)\n```"
    )
    assert ground(invented, [_SSL_MD, _ASYNC_MD], [1], question=_RETRIES) is None
    copied = (
        "Pass a transport:\n\n```python\nimport httpx\n"
        "transport = httpx.AsyncHTTPTransport(retries=1)  # retry once\n```"
    )
    assert ground(copied, [_SSL_MD, _ASYNC_MD], [1], question=_RETRIES) == [2]


def test_ground_reads_tilde_fences_like_backtick_ones() -> None:
    from ragserve.grounding.evidence import ground

    invented = "Pass it to the client:\n\n~~~python\nclient = httpx.Client(retries=3)\n~~~"
    assert ground(invented, [_SSL_MD, _ASYNC_MD], [1], question=_RETRIES) is None
    copied = "Pass a transport:\n\n~~~\ntransport = httpx.AsyncHTTPTransport(retries=1)\n~~~"
    assert ground(copied, [_SSL_MD, _ASYNC_MD], [1], question=_RETRIES) == [2]


def test_ground_reads_inline_code_like_a_block() -> None:
    from ragserve.grounding.evidence import ground

    invented = "Pass `httpx.Client(retries=3)` when instantiating the client [1]."
    assert ground(invented, [_SSL_MD], [1], question=_RETRIES) is None
    assert ground("Use `AsyncHTTPTransport` [1].", [_ASYNC_MD], [1], question=_RETRIES) == [1]


def test_supported_prefix_drops_a_closing_line_no_source_holds() -> None:
    from ragserve.grounding.evidence import ground, supported_prefix

    answer = (
        "You can use the `retries` parameter when creating an `AsyncHTTPTransport`. For example:"
        "\n\n```python\ntransport = httpx.AsyncHTTPTransport(retries=1)\n```\n\n"
        "This will set the number of retries to 1. You can adjust this value as needed. [2]"
    )
    texts = [_SSL_MD, _ASYNC_MD]
    assert ground(answer, texts, [2], question=_RETRIES) is None  # the tail sinks it
    prefix = supported_prefix(answer, texts, question=_RETRIES)
    assert prefix.endswith("```") and "adjust" not in prefix
    assert ground(prefix, texts, [], question=_RETRIES) == [2]


def test_supported_prefix_keeps_the_first_sentence_and_a_supported_answer_whole() -> None:
    from ragserve.grounding.evidence import supported_prefix

    texts = ["The Louvre is a museum in Paris. It holds the Mona Lisa."]
    question = "Where is the Louvre?"
    assert supported_prefix("It was founded in 1762.", texts, question=question) == (
        "It was founded in 1762."
    )
    whole = "It is a museum in Paris. It holds the Mona Lisa."
    assert supported_prefix(whole, texts, question=question) == whole
    # An unsupported claim before a supported one is not a tail: the whole is judged.
    mixed = "It was founded in 1762. It is a museum in Paris."
    assert supported_prefix(mixed, texts, question=question) == mixed


def test_code_keeps_its_indentation_and_its_brackets() -> None:
    from ragserve.generation.citations import strip_markers

    answer = (
        "Read the timeout [Source 1] like this:\n\n```python\nfor arg in args:\n"
        "    print(sys.argv[1])  [7]\n```\n\nUse `argv[2]` for the next one [2] ."
    )
    text, cites, invalid = validate_citations(answer, _ctx())
    # The bracket pairs in code are code, not citations; prose markers are still checked.
    assert "    print(sys.argv[1])  [7]" in text and "`argv[2]`" in text
    assert [c.number for c in cites] == [1, 2] and invalid == []
    assert text.startswith("Read the timeout [1] like this:") and text.endswith("next one [2].")
    assert "sys.argv[1]" in strip_markers(text) and "[2]." not in strip_markers(text)


def test_code_check_lets_the_asker_choose_values_and_quote_the_question() -> None:
    from ragserve.grounding.evidence import ground

    texts = [_ASYNC_MD]
    changed = "Use:\n\n```python\ntransport = httpx.AsyncHTTPTransport(retries=3)\n```"
    assert ground(changed, texts, [1], question="How do I retry 3 times in httpx?") == [1]
    question = "Why does `httpx.Client(retries=3)` fail?"
    quoted = (
        "`httpx.Client(retries=3)` is not how: pass "
        "`transport = httpx.AsyncHTTPTransport(retries=1)` [1]."
    )
    assert ground(quoted, texts, [1], question=question) == [1]


def test_code_check_reads_comments_and_stray_backticks_as_prose() -> None:
    from ragserve.generation.citations import code_shares

    source = ["x = httpx.Client(timeout=10.0)"]
    commented = "```js\nx = httpx.Client(timeout=10.0)  // ten seconds\n```"
    assert code_shares(commented, source) == [1.0]
    # An odd backtick would pair prose with code: no inline code is read at all.
    assert code_shares("network `inactivity. Use `httpx.Client(...)`", source) is None
    include = "```cpp\n#include <boost/filesystem.hpp>\n```"
    assert code_shares(include, ["#include <boost/filesystem.hpp>"]) == [1.0]


def test_supported_prefix_never_cuts_inside_a_code_block() -> None:
    from ragserve.grounding.evidence import supported_prefix

    answer = (
        "Pass a transport. For example:\n\n```python\nimport httpx\n\n"
        "transport = httpx.AsyncHTTPTransport(retries=1)\n```\n\n"
        "It backs off with random jitter forever. [2]"
    )
    prefix = supported_prefix(answer, [_ASYNC_MD], question=_RETRIES)
    assert prefix.endswith("AsyncHTTPTransport(retries=1)\n```"), prefix
    # A block no source holds goes whole, with the sentence that only introduced it.
    invented = (
        "Pass a transport [1]. For example:\n\n```python\nzebra = banana.Moo(quack=True)\n```"
    )
    assert supported_prefix(invented, [_ASYNC_MD], question=_RETRIES) == "Pass a transport [1]."
    assert supported_prefix("Use it. Then more.", [], question=_RETRIES) == "Use it."


def test_grounding_compares_stems_so_a_paraphrase_of_a_source_is_supported() -> None:
    from ragserve.grounding.evidence import ground

    source = ["When using the client, HTTP/2 support is enabled with httpx.Client(http2=True)."]
    answer = "Use the http2 argument on clients and set it to True. [1]"
    # Own words: use, http2, argument, clients, set, true. "using" and "client" are stems of
    # two of them; "argument" and "set" are in no source, so 4 of 6 are held.
    assert ground(answer, source, [1], question="How do I enable HTTP/2?") == [1]
    invented = "Use the h3 flag on sessions with retries set to True. [1]"
    assert ground(invented, source, [1], question="How do I enable HTTP/2?") is None


def test_ground_wants_the_words_and_the_code_from_one_source() -> None:
    """A Frankenstein answer: its words from timeouts.md, its exception from ssl.md. It is
    cited to the source its code comes from, never to the one it does not."""
    from ragserve.grounding.evidence import ground

    timeouts = (
        "The connect timeout specifies the maximum amount of time to wait until a socket "
        "connection is established. If HTTPX is unable to connect, a `ConnectTimeout` "
        "exception is raised."
    )
    ssl = "If the certificate has expired, httpx raises `httpx.ConnectError`."
    answer = "The exception you get when the timeout expires is `httpx.ConnectError`. [1]"
    question = "What exception do I get when the timeout expires?"
    assert ground(answer, [timeouts, ssl], [1], question=question) == [2]
    assert ground(answer, [timeouts], [1], question=question) is None
    copied = "You get a `ConnectTimeout` exception. [1]"
    assert ground(copied, [timeouts, ssl], [1], question=question) == [1]


def test_a_one_word_code_span_must_be_in_a_source() -> None:
    from ragserve.grounding.evidence import ground

    source = "A `TimeoutException` is raised after 5 seconds of network inactivity."
    question = "What exception is raised?"
    assert ground("`TimeoutException` [1]", [source], [1], question=question) == [1]
    # Each part of the invented name is in the source; the name is not.
    invented = "A `TimeoutRaisedException` after 5 seconds [1]."
    assert ground(invented, [source], [1], question=question) is None


def test_a_numeral_is_grounded_by_its_number_word() -> None:
    from ragserve.grounding.evidence import ground

    source = "The network has eight owned-and-operated stations."
    question = "How many of the network's stations are owned-and-operated?"
    assert ground("8 [1]", [source], [1], question=question) == [1]
    assert ground("9 [1]", [source], [1], question=question) is None
    # Mapped before stemming: Snowball makes "twelve" "twelv" and "twenty" "twenti".
    assert ground("12 [1]", ["It has twelve stations."], [1], question=question) == [1]
    assert ground("20 [1]", ["It has twenty stations."], [1], question=question) == [1]
