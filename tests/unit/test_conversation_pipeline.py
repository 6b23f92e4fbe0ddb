"""The conversation path with small fakes at the model boundary: verified streaming, clarifying
questions, the history budget, small talk, and the pipeline bugs of issue 35 (1, 3, 6)."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import replace

import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.context.assembler import AssembledContext, CompactContextAssembler, fit_history
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.grounding.clarify import clarifying_question, unresolved_reference, which_one
from ragserve.grounding.policy import AnswerPolicy
from ragserve.grounding.verified_stream import VerifiedStream
from ragserve.pipeline import RagPipeline
from ragserve.pipeline.cache import SearchCache
from ragserve.pipeline.rag import recent_turns
from ragserve.types import Chunk, Hit, Message

SOURCES = [
    "Timeouts are enforced by default. The default timeout is five seconds of network "
    "inactivity. Set it with httpx.Client(timeout=10.0).",
    "A timeout raises httpx.TimeoutException. Catch it to retry the request.",
]


def _hit(text: str, n: int, *, title: str | None = None, rerank: float = 0.9) -> Hit:
    chunk = Chunk(
        id=f"c{n}",
        doc_id=f"doc{n}",
        source=f"doc{n}.md",
        text=text,
        chunk_index=0,
        char_start=0,
        char_end=len(text),
        content_hash=str(n),
        title=title,
    )
    return Hit(chunk, rerank, {"rerank": rerank, "dense": 0.8})


def _context(texts: Sequence[str] = SOURCES) -> AssembledContext:
    hits = [_hit(t, n) for n, t in enumerate(texts, 1)]
    return AssembledContext(sources=hits, text="\n\n".join(texts), tokens=50, texts=list(texts))


def _pieces(text: str) -> list[str]:
    """The answer as a reader streams it: a few characters at a time."""
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def _run(
    answer: str, question: str = "What is the default timeout?"
) -> tuple[str, str, str | None]:
    """(everything the client was sent, the final text, the refusal reason)."""
    draft = VerifiedStream(AnswerPolicy(Settings()), question, _context())
    sent = "".join(draft.feed(p) for p in _pieces(answer))
    verdict, rest = draft.finish()
    return sent + rest, verdict.text, verdict.reason


def test_an_unsupported_second_sentence_never_reaches_the_client() -> None:
    sent, final, reason = _run(
        "The default timeout is five seconds of network inactivity [1]. "
        "Moon rabbits juggle purple elephants underwater every Tuesday."
    )
    assert reason is None
    assert "five seconds" in sent
    assert "elephants" not in sent and "elephants" not in final
    assert final.startswith(sent.split(" [")[0])  # the final answer extends what was shown


def test_a_refused_answer_streams_nothing() -> None:
    sent, final, reason = _run("Moon rabbits juggle purple elephants underwater every Tuesday.")
    assert reason == "unsupported"
    assert sent == "" and final == ""


def test_every_token_sent_is_in_the_final_answer() -> None:
    sent, final, reason = _run(
        "The default timeout is five seconds of network inactivity. "
        "Set it with httpx.Client(timeout=10.0) [1]."
    )
    assert reason is None
    assert final.startswith(sent.rstrip(" [1]")) or sent == final
    assert "[1]" in final


def test_the_readers_own_refusal_is_caught_at_its_first_sentence() -> None:
    draft = VerifiedStream(AnswerPolicy(Settings()), "What is it?", _context())
    for piece in _pieces("I don't know. Something else follows here."):
        assert draft.feed(piece) == ""
        if draft.refused_at_once:
            break
    assert draft.refused_at_once
    assert draft.finish()[0].reason == "model"


def test_no_text_is_released_inside_an_open_code_block() -> None:
    draft = VerifiedStream(AnswerPolicy(Settings()), "How do I set a timeout?", _context())
    released = "".join(
        draft.feed(p) for p in _pieces("Set it like this:\n```python\nclient = httpx.Client(")
    )
    assert "```" not in released


# --- clarifying questions ------------------------------------------------------------------


def test_an_unresolved_reference_with_several_readings_is_asked_back() -> None:
    hits = [
        _hit("Chris Hemsworth\nHe trained for Thor.", 1),
        _hit("Harrison Ford\nHe kept fit for Indiana Jones.", 2),
    ]
    question = clarifying_question("What is the actor's approach to fitness?", [], hits)
    assert question == "Do you mean Chris Hemsworth or Harrison Ford?"


def test_only_sources_the_reranker_lets_through_are_readings() -> None:
    """A question whose sources all fail the re-rank floor is not asked back with their
    titles (SQuAD with its paragraph removed was asked "Do you mean Geology or ...?")."""
    hits = [
        _hit("Chris Hemsworth\nHe trained for Thor.", 1, rerank=0.6),
        _hit("Harrison Ford\nHe kept fit for Indiana Jones.", 2, rerank=0.05),
    ]
    question = "What is the actor's approach to fitness?"
    assert clarifying_question(question, [], hits) is not None
    assert clarifying_question(question, [], hits, min_rerank=0.1) is None


def test_a_reference_the_conversation_resolved_is_not_asked_back() -> None:
    history = [
        Message("user", "Tell me about the actor Harrison Ford."),
        Message("assistant", "He is an actor."),
    ]
    hits = [_hit("Chris Hemsworth\nThor.", 1), _hit("Harrison Ford\nIndiana Jones.", 2)]
    assert clarifying_question("What is the actor's approach to fitness?", history, hits) is None


def test_one_reading_or_a_named_subject_is_not_asked_back() -> None:
    one = [_hit("Harrison Ford\nA.", 1), _hit("Harrison Ford\nB.", 2)]
    assert clarifying_question("What is the actor's approach to fitness?", [], one) is None
    assert unresolved_reference("How do I set the timeout on an httpx Client?", []) is None
    assert unresolved_reference("who won the battle of Bull Run", []) is None


def test_which_one_names_the_phrase_the_conversation_never_resolved() -> None:
    history = [Message("user", "I'm not sure if I should take a credit card.")]
    assert which_one("What is the yield of this savings bond?", history) == (
        "Which savings bond do you mean?"
    )
    # The conversation said it, or the turn names what it means: nothing to ask.
    assert which_one("What are the potential rewards of this credit card?", history) is None
    assert which_one("What are the rewards of the Discover card?", history) is None
    assert which_one("How do I apply?", history) is None


def test_a_conversation_turn_the_gate_refuses_is_asked_back_when_it_never_says_which() -> None:
    p = _pipeline("unused", min_support=0.9)
    history = [
        Message("user", "What is the default timeout?"),
        Message("assistant", "Five seconds."),
    ]
    asked = p.answer("What are the potential rewards of this credit card?", history)
    assert asked.kind == "clarify" and not asked.refused
    assert asked.text == "Which credit card do you mean?"
    # The same words as a first question are refused, as a single question always was.
    alone = p.answer("What are the potential rewards of this credit card?")
    assert alone.kind == "refusal" and alone.refusal_reason == "low_support"
    # A turn that says what it means is refused, not asked back.
    plain = p.answer("How do I send an email with smtplib?", history)
    assert plain.kind == "refusal"


# --- the reader's view of the conversation ---------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def test_history_has_its_own_budget_and_long_turns_are_cut_not_dropped() -> None:
    long_answer = "First, open the settings page. " + "Then do many other things. " * 80
    history = [
        Message("user", "How do I reset my password?"),
        Message("assistant", long_answer),
    ]
    kept = fit_history(_words, history, 40)
    assert kept and kept[-1].role == "assistant"
    assert kept[-1].content.startswith("First, open the settings page.")
    assert sum(_words(m.content) + 4 for m in kept) <= 40
    assembler = CompactContextAssembler(_words, budget=32, history_budget=60)
    context = assembler.assemble("Are those the only steps?", [_hit(SOURCES[0], 1)], history)
    assert context.history, "a long answer no longer crowds the conversation out"


def test_history_turns_zero_keeps_no_history() -> None:  # issue 35, bug 1
    history = [Message("user", "a"), Message("assistant", "b")] * 3
    assert recent_turns(history, 0) == []
    assert recent_turns(history, 1) == history[-2:]


# --- the pipeline with fakes ------------------------------------------------------------------


class _FakeIndex:
    def version(self) -> int:
        return 1

    def close(self) -> None:
        pass


class _FakeEmbedder:
    dimension = 4

    def warm_up(self) -> None:
        pass

    def embed_query(self, text: str) -> np.ndarray:
        return np.ones(4, dtype=np.float32)


class _FakeRetriever:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits, self.calls = hits, 0

    def retrieve(self, query: object, k: int) -> list[Hit]:
        self.calls += 1
        return [Hit(h.chunk, h.score, dict(h.scores)) for h in self.hits[:k]]


class _FakeReader:
    name = "fake"
    context_window = 4096
    quotes_sources = False
    max_in_flight = None

    def __init__(self, answer: str, load_seconds: float = 0.0) -> None:
        self.answer, self.load_seconds = answer, load_seconds

    def warm_up(self) -> None:
        time.sleep(self.load_seconds)

    def check_capacity(self) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return _words(text)

    def stream(self, query: str, context: object, history: object) -> Generator[str, None, None]:
        yield from _pieces(self.answer)


def _pipeline(answer: str, *, load_seconds: float = 0.0, **settings: object) -> RagPipeline:
    s = Settings(**{"rerank": False, "min_support": 0.0, **settings})  # type: ignore[arg-type]
    p = RagPipeline(
        s, index=_FakeIndex(), embedder=_FakeEmbedder(), generator=_FakeReader(answer, load_seconds)
    )  # type: ignore[arg-type]
    p.retriever = _FakeRetriever([_hit(t, n) for n, t in enumerate(SOURCES, 1)])  # type: ignore[assignment]
    p._retrieval_ready = True
    return p


def test_the_pipeline_stream_withholds_an_unsupported_sentence() -> None:
    p = _pipeline(
        "The default timeout is five seconds of network inactivity [1]. "
        "Moon rabbits juggle purple elephants underwater every Tuesday."
    )
    events = list(p.stream("What is the default timeout?"))
    sent = "".join(e.text for e in events if e.kind == "token")
    answer = events[-1].answer
    assert answer is not None and not answer.refused and answer.kind == "answer"
    assert "elephants" not in sent and "elephants" not in answer.text
    assert answer.text.startswith(sent[: len(sent) - len(sent.lstrip())] + sent.split(" [")[0])


def test_a_refused_stream_sends_only_the_refusal() -> None:
    p = _pipeline("Moon rabbits juggle purple elephants underwater every Tuesday.")
    events = list(p.stream("What is the default timeout?"))
    assert [e.text for e in events if e.kind == "token"] == [REFUSAL_TEXT]
    assert events[-1].answer is not None and events[-1].answer.kind == "refusal"


def test_small_talk_in_a_conversation_gets_a_reply_not_a_refusal() -> None:
    p = _pipeline("unused")
    history = [
        Message("user", "What is the default timeout?"),
        Message("assistant", "Five seconds."),
    ]
    answer = p.answer("thanks, that helps!", history)
    assert answer.kind == "reply" and not answer.refused and not answer.sources


def test_cached_hits_are_not_shared_between_requests() -> None:  # issue 35, bug 6
    cache = SearchCache()
    cache.put("q", [_hit("text", 1)])
    first = cache.get("q")
    assert first is not None
    first[0].scores["answerable"] = 0.0
    second = cache.get("q")
    assert second is not None and "answerable" not in second[0].scores


def test_a_search_does_not_wait_for_the_reader_to_load() -> None:  # issue 35, bug 3
    p = _pipeline("The default timeout is five seconds.", load_seconds=1.5)
    loader = threading.Thread(target=p.warm_up)
    loader.start()
    time.sleep(0.1)
    began = time.perf_counter()
    p.search(p.process("What is the default timeout?"))
    waited = time.perf_counter() - began
    loader.join()
    assert waited < 1.0, f"search waited {waited:.1f} s behind the reader's load"


@pytest.mark.parametrize("turns", [200])
def test_a_long_history_is_trimmed_not_failing(turns: int) -> None:
    p = _pipeline("The default timeout is five seconds of network inactivity [1].")
    history = [Message("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(turns)]
    answer = p.answer("What is the default timeout?", history)
    assert not answer.refused


def test_history_turns_zero_shows_the_reader_no_history() -> None:  # issue 35, bug 1
    seen: list[object] = []
    p = _pipeline("The default timeout is five seconds of network inactivity [1].", history_turns=0)
    reader = p.generator
    original = reader.stream  # type: ignore[union-attr]

    def recording(query: str, context: object, history: object) -> Generator[str, None, None]:
        seen.append(history)
        yield from original(query, context, history)

    reader.stream = recording  # type: ignore[union-attr,method-assign]
    p.answer("What is the default timeout?", [Message("user", "hi"), Message("assistant", "hello")])
    assert seen == [[]]


def test_a_closing_marker_still_cites_the_answer() -> None:
    sent, final, reason = _run("The default timeout is five seconds of network inactivity [1].")
    assert reason is None and final.endswith("[1]") and sent.startswith("The default timeout")


def test_the_support_gate_accepts_a_follow_up_its_sources_cover_in_the_users_words() -> None:
    """The condensed query carries the conversation's words; a source about the turn need not
    repeat them all. Either reading covered is enough, and neither covered still refuses."""
    policy = AnswerPolicy(Settings(min_support=0.5))
    hits = [_hit("Call exists(p) to check whether the path p exists on disk.", 1)]
    condensed = "How do I check whether a path exists? (iterate Boost.Filesystem directory)"
    assert policy.gate(condensed, hits, reranked=True) == "low_support"
    turn = "How do I check whether a path exists?"
    assert policy.gate(condensed, hits, reranked=True, turn=turn) is None
    other = "How do I rename a folder? (iterate Boost.Filesystem directory)"
    assert policy.gate(other, hits, reranked=True, turn="How do I rename a folder?") == (
        "low_support"
    )


def _judged(hit: Hit, probability: float) -> Hit:
    return replace(hit, scores={**hit.scores, "answerable": probability})


def test_the_conversation_gate_admits_a_turn_any_one_signal_vouches_for() -> None:
    """In a conversation the judge, the re-ranker or the lexical support each admit a turn on
    its own; with all three weak, or the support below its floor, the turn is refused. A turn
    without history keeps the single-question gates."""
    policy = AnswerPolicy(Settings(conversation_gate=True))
    text = "The h2 package adds HTTP/2 support to the client."
    question = "Which package do I need to install for it? (enable HTTP)"

    def gate(judge: float, rerank: float, q: str = question, conversation: bool = True) -> object:
        hits = [_judged(_hit(text, 1, rerank=rerank), judge)]
        return policy.gate(q, hits, reranked=True, in_conversation=conversation)

    assert gate(judge=0.25, rerank=0.05) is None  # the judge vouches
    assert gate(judge=0.05, rerank=0.95) is None  # the re-ranker vouches
    assert gate(judge=0.05, rerank=0.5) == "low_support"  # neither
    fully = "Which package adds HTTP/2 support?"
    assert gate(judge=0.05, rerank=0.5, q=fully) is None  # the words alone (support >= 0.5)
    off_topic = "How do I send an email with smtplib?"
    assert gate(judge=0.9, rerank=0.99, q=off_topic) == "low_support"  # below the support floor
    # A single question: the re-rank floor (0.1) and min_support (0.32) decide as before.
    assert gate(judge=0.0, rerank=0.5, q=fully, conversation=False) is None
    assert gate(judge=0.9, rerank=0.05, q=fully, conversation=False) == "low_support"
    assert gate(judge=0.9, rerank=0.99, conversation=False) == "low_support"  # support 0.28


def test_grounding_reads_the_users_words_not_the_bracketed_subject() -> None:
    """The condenser's bracketed subject words are the conversation's, not the user's: an
    answer that names them claims them, and they count as its own words."""
    source = (
        "Easter Island is also called by its Polynesian name, Rapa Nui, coined after the "
        "slave raids of the early 1860s."
    )
    policy = AnswerPolicy(Settings())
    standalone = "Is Easter Island called another name besides those? (Rapa Nui Dutch Roggeveen)"
    turn = "Is Easter Island called another name besides those?"

    def verify(answer: str) -> str | None:
        return policy.verify(standalone, answer, _context([source]), turn=turn).reason

    assert verify("Yes, it is also called Rapa Nui. [1]") is None
    # "Dutch" and "Roggeveen" are bracket words no source holds: read as the question's, they
    # went unchecked and "named" alone carried the answer.
    assert verify("Yes, Dutch Roggeveen named it. [1]") == "unsupported"


_ZLIB = [
    "The data format used by the zlib library is described by RFC 1950 to 1952.",
    "The code is thread safe, assuming that the standard library functions used are thread "
    "safe, such as memory allocation routines.",
]


@pytest.mark.parametrize(
    ("answer", "sources", "expected"),
    [
        # A "yes" that restates the question stands on the sentence that covers it, cited there.
        (
            "Yes, the library is thread safe. [1]",
            _ZLIB,
            ("Yes, the library is thread safe. [2]", None),
        ),
        ("Yes. [1]", _ZLIB, ("Yes. [2]", None)),
        # The sentence that covers the question says otherwise.
        (
            "Yes, the library is thread safe. [1]",
            ["The library is not thread safe."],
            ("", "unverified"),
        ),
        # No sentence covers the question.
        ("Yes, the library is thread safe. [1]", _ZLIB[:1], ("", "unverified")),
        # Two claims, each needing its evidence: not one restated question.
        ("Yes, it is thread safe. Yes, thread safe it is. [2]", _ZLIB, ("", "unverified")),
    ],
)
def test_a_yes_that_restates_the_question_needs_a_sentence_that_says_so(
    answer: str, sources: list[str], expected: tuple[str, str | None]
) -> None:
    policy = AnswerPolicy(Settings())
    verdict = policy.verify("Is the library thread safe?", answer, _context(sources))
    assert (verdict.text, verdict.reason) == expected


def test_a_yes_stands_on_the_users_words_not_the_conversations_subject() -> None:
    """MTRAG: "Is it safe to invest in options?" searched with the subject "(prices stock
    value derivative)". A sentence on derivatives covers that standalone query, not the
    question; the "yes" the reader opened with was shown, and was an invented claim."""
    sources = [
        "In this way, the future and option are derivatives in that they derive their value "
        "(in part) based on something else, in this case the stock price as of now.",
        "Is your money safe? If you mean will they take your money and run off with it, then "
        "no they probably won't.",
    ]
    policy = AnswerPolicy(Settings())
    turn = "Is it safe to invest in options?"
    standalone = f"{turn} (prices stock value derivative)"
    verdict = policy.verify(
        standalone, "Yes, it is safe to invest in options. [1]", _context(sources), turn=turn
    )
    assert verdict.reason == "unverified", verdict


def test_verification_reads_the_turn_with_its_pronoun_resolved() -> None:
    """Neither the user's words ("when it expires": no timeout) nor the standalone query (its
    subject words dilute the question) cover the source sentence of a right answer enough;
    the turn as the user meant it does."""
    source = (
        "The connect timeout is the time to wait for a socket connection. If HTTPX is "
        "unable to connect within this time frame, a ConnectTimeout exception is raised."
    )
    policy = AnswerPolicy(Settings())
    standalone = "What exception do I get when the timeout expires? (set client creating async)"
    turn, resolved = "What exception do I get when it expires?", standalone.split(" (")[0]
    answer = "You get a `ConnectTimeout` exception when the connection attempt fails. [1]"

    def reason(**readings: str) -> str | None:
        return policy.verify(standalone, answer, _context([source]), **readings).reason

    assert reason(turn=turn) == "unverified"
    assert reason(turn=turn, resolved=resolved) is None


def test_the_answers_a_server_admits_are_bounded_by_the_readers_queue() -> None:
    """Issue 37: the routes count answers at arrival against the reader's own bound (one
    being read + ``llm_max_waiting``); a reader with no queue (here the fake, as extractive)
    sets none, so fast answers are never shed."""
    from ragserve.generation.llama import LlamaCppGenerator

    p = _pipeline("The default timeout is five seconds [1].")
    list(p.stream("What is the default timeout?"))
    assert p.admission.limit is None
    release = [p.admission.enter() for _ in range(50)]
    for r in release:
        r()
    reader = LlamaCppGenerator(max_waiting=2)
    bounded = RagPipeline(
        Settings(rerank=False), index=_FakeIndex(), embedder=_FakeEmbedder(), generator=reader
    )  # type: ignore[arg-type]
    reader.warm_up = lambda: None  # type: ignore[method-assign]  # no model: only the bound
    bounded._warm_generation()
    assert bounded.admission.limit == 3


def test_a_yes_to_a_resolved_turn_needs_evidence_for_what_it_resolved_to() -> None:
    """MTRAG: "Could it be the Man with No Name?" (unanswerable) was confirmed. A sentence
    that names the character covers the bare words; it says nothing of what "it" stands for."""
    sources = ["The Lone Ranger is a masked former Texas Ranger who fights outlaws."]
    policy = AnswerPolicy(Settings())
    turn = "Could it be the Lone Ranger?"
    answer = "Yes, it could be the Lone Ranger. [1]"
    alone = policy.verify(turn, answer, _context(sources), turn=turn)
    assert alone.accepted, "the bare question is covered: the test would show nothing"
    resolved = "Could the killer of the sheriff in chapter three be the Lone Ranger?"
    verdict = policy.verify(turn, answer, _context(sources), turn=turn, resolved=resolved)
    assert verdict.reason == "unverified", verdict
