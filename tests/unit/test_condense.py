"""The conversation's subject carried into a follow-up, and small talk told from questions."""

from __future__ import annotations

import pytest

from ragserve.query.intent import classify_intent, is_small_talk
from ragserve.query.processor import RuleBasedQueryProcessor
from ragserve.query.subject import SubjectCondenser
from ragserve.query.term_weights import idf_weights
from ragserve.types import Intent, Message

pytestmark = pytest.mark.fast  # pure logic: no model, no index, no dataset

TIMEOUT_TURNS = [
    Message("user", "How do I set a timeout on an httpx client?"),
    Message("assistant", "Pass timeout=10.0 to httpx.Client, or an httpx.Timeout [1]."),
    Message("user", "And for the async client?"),
    Message("assistant", "httpx.AsyncClient takes the same timeout argument [1]."),
]


def corpus_weight(known: dict[str, float]):  # type: ignore[no-untyped-def]
    """A fake ``term_weight``: the given words' IDF, and 0 for words no document holds."""
    return lambda term: known.get(term.lower(), 0.0)


def test_the_timeout_subject_survives_two_turns() -> None:
    weights = corpus_weight({"timeout": 0.6, "async": 0.7, "client": 0.4, "set": 0.3})
    out = SubjectCondenser(weights).condense(
        "What exception do I get when it expires?", TIMEOUT_TURNS
    )
    assert out.startswith("What exception do I get when the timeout expires? (")
    assert "async" in out
    # The old rule searched "... (async client)": the subject of the first turn was gone.


def test_pronouns_stay_when_resolution_is_off() -> None:
    out = SubjectCondenser(resolve_pronouns=False).condense(
        "What exception do I get when it expires?", TIMEOUT_TURNS
    )
    assert out.startswith("What exception do I get when it expires? (") and "timeout" in out


@pytest.mark.parametrize(
    ("turn", "resolved"),
    [
        ("how do I use it?", "how do I use the timeout?"),
        # The first "it" stands for nothing; the second for the subject.
        ("Is it possible to change it?", "Is it possible to change the timeout?"),
        ("Does its value matter?", "Does the timeout's value matter?"),
        ("It depends on what?", "It depends on what?"),
        ("Are those the only steps?", "Are those the only steps?"),
    ],
)
def test_a_pronoun_is_replaced_by_the_subject(turn: str, resolved: str) -> None:
    weights = corpus_weight({"timeout": 0.6, "async": 0.7, "client": 0.4, "set": 0.3})
    assert SubjectCondenser(weights).resolve(turn, TIMEOUT_TURNS) == resolved


def test_a_person_is_the_name_said_last_and_said_whole() -> None:
    history = [
        Message("user", "Who wrote the novel about the Bennet sisters?"),
        Message("assistant", "Pride and Prejudice was written by Jane Austen [1]."),
    ]
    assert SubjectCondenser().resolve("When was she born?", history) == "When was Jane Austen born?"
    history = [
        Message("user", "Tell me about Andre Gunder Frank."),
        Message("assistant", "Andre Gunder Frank was a German-American economic historian [1]."),
    ]
    condenser = SubjectCondenser()
    assert (
        condenser.resolve("Was he a communist?", history) == "Was Andre Gunder Frank a communist?"
    )
    assert condenser.resolve("what did her books say", history) == (
        "what did Andre Gunder Frank's books say"
    )
    # No name in the conversation: a person pronoun is left alone.
    assert condenser.resolve("Was he right?", TIMEOUT_TURNS) == "Was he right?"


def test_the_timeout_subject_survives_without_assistant_turns() -> None:
    users = [m for m in TIMEOUT_TURNS if m.role == "user"]
    out = SubjectCondenser().condense("What exception do I get when it expires?", users)
    assert "timeout" in out


def test_subject_carried_over_several_turns() -> None:
    history = [
        Message("user", "How do I apply for the Pell grant?"),
        Message("assistant", "You fill in the FAFSA; the Pell grant follows from it [1]."),
        Message("user", "Is there a deadline?"),
        Message("assistant", "The FAFSA deadline is June 30 [2]."),
        Message("user", "Do I need my parents' income?"),
        Message("assistant", "Yes, dependent students report it on the FAFSA [1]."),
    ]
    out = SubjectCondenser(max_terms=3).condense("Are those the only steps?", history)
    assert "FAFSA" in out


def test_an_entity_only_the_assistant_named_is_carried() -> None:
    history = [
        Message("user", "Who wrote the novel about the Bennet sisters?"),
        Message("assistant", "Pride and Prejudice was written by Jane Austen [1]."),
    ]
    weights = corpus_weight(
        {"wrote": 0.3, "novel": 0.5, "bennet": 0.9, "sisters": 0.6, "pride": 0.7}
        | {"prejudice": 0.8, "jane": 0.6, "austen": 0.9, "written": 0.3}
    )
    out = SubjectCondenser(weights).condense("When was she born?", history)
    assert "Austen" in out and "Bennet" in out


def test_chit_chat_words_never_reach_the_query() -> None:
    history = [
        Message("user", "Oh, thank you for informing me, I was not aware."),
        Message("assistant", "You're welcome."),
    ]
    q = "How do I file a response?"
    assert SubjectCondenser().condense(q, history) == q
    # With corpus statistics a word no document holds is dropped too.
    history = [Message("user", "what do you mean by ham radio licences?")]
    weights = corpus_weight({"licences": 0.8, "radio": 0.5})
    out = SubjectCondenser(weights).condense("how long do they last?", history)
    assert "ham" not in out and "licences" in out and "radio" in out


def test_more_recent_turns_win() -> None:
    history = [
        Message("user", "Tell me about zlib compression levels."),
        Message("user", "Now tell me about Boost filesystem paths."),
    ]
    terms = SubjectCondenser(max_terms=2).subject("how do I use it?", history)
    assert terms == ["Boost", "filesystem"]


def test_words_already_in_the_turn_are_not_repeated() -> None:
    out = SubjectCondenser().condense("What is the default timeout?", TIMEOUT_TURNS)
    assert out.lower().count("timeout") == 1


def test_follow_ups_only_leaves_a_full_question_alone() -> None:
    q = "How are SSL certificates verified by default in the client library?"
    assert SubjectCondenser(only_follow_ups=True).condense(q, TIMEOUT_TURNS) == q


def test_processor_condenses_questions_not_small_talk() -> None:
    p = RuleBasedQueryProcessor()
    assert "timeout" in p.process("What exception do I get when it expires?", TIMEOUT_TURNS).text
    small = p.process("ok thanks, that helps", TIMEOUT_TURNS)
    assert small.intent is Intent.CHITCHAT and small.text == "ok thanks, that helps"
    assert (
        RuleBasedQueryProcessor(condense_history=False).process("why?", TIMEOUT_TURNS).text
        == "why?"
    )


def test_idf_weights_favour_rare_words() -> None:
    docs = ["timeout error raised", "client sends request", "client timeout", "client pool"]
    weights, n = idf_weights(docs, lambda texts: [t.split() for t in texts])
    assert n == 4 and weights["pool"] == 1.0
    assert weights["client"] < weights["timeout"] < weights["pool"]


@pytest.mark.parametrize(
    "text",
    [
        "This is impressive, right?",
        "amazing!",
        "thought it was old tech but not really so. amazing!",
        "ok thanks, that helps",
        "Very interesting. Thank you!",
        "That is fine.",
    ],
)
def test_small_talk_is_chitchat(text: str) -> None:
    assert is_small_talk(text)
    assert classify_intent(text) is Intent.CHITCHAT


@pytest.mark.parametrize(
    "text",
    [
        "Discover card is a good option.",
        "my friend works at the studio. he said part of it was filmed in new york",
        "Regional differences",
        "Benjamin Denton & Hilary Briss",
        "I heard that they have released a video game as well. Is that true?",
        "I need the form for a tax refund. Thanks!",
        "Great, and how do I cancel it?",
    ],
)
def test_statements_that_need_an_answer_stay_questions(text: str) -> None:
    assert classify_intent(text) is Intent.QUESTION


class _FakeIndex:
    """version() and iter_chunks(), all CorpusTermWeights reads of an index."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.v = texts, 1

    def version(self) -> int:
        return self.v

    def iter_chunks(self, batch_size: int = 1000):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        yield [SimpleNamespace(searchable_text=t) for t in self.texts]


def test_corpus_term_weights_read_the_index_and_follow_its_version() -> None:
    import time

    from ragserve.query.term_weights import CorpusTermWeights

    index = _FakeIndex(["timeouts raise TimeoutException", "clients pool", "clients send"])
    weights = CorpusTermWeights(index, check_every_s=0.0)  # type: ignore[arg-type]
    assert weights("timeout") > weights("client") > 0  # stemmed as BM25 is
    assert weights("informing") == 0.0 and weights("the") == 0.0
    index.texts.append("informing users")
    index.v = 2
    weights("pool")  # starts the rebuild in the background; the old table answers meanwhile
    deadline = time.monotonic() + 5
    while weights("informing") == 0.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert weights("informing") > 0


def test_term_weights_from_settings_build_at_warm_up() -> None:
    from ragserve.config import Settings
    from ragserve.query.term_weights import CorpusTermWeights

    index = _FakeIndex(["deflate compresses", "inflate decompresses"])
    weights = CorpusTermWeights.from_settings(index, Settings())  # type: ignore[arg-type]
    index.texts.clear()  # already read: the first question does not pay the pass
    assert weights("deflate") > 0


def test_term_weights_built_over_an_empty_index_are_rebuilt_at_once_after_the_first_ingest() -> (
    None
):
    """Warm-up before the first ingest builds an empty table; the first follow-up after the
    ingest must not be answered from it (every subject word would weigh 0)."""
    from ragserve.query.term_weights import CorpusTermWeights

    index = _FakeIndex([])
    weights = CorpusTermWeights(index, check_every_s=0.0)  # type: ignore[arg-type]
    assert weights("proxies") == 0.0
    index.texts.extend(["proxies route requests", "clients send requests"])
    index.v = 2
    assert weights("proxies") > 0


def test_the_processed_query_keeps_the_resolved_turn_apart_from_the_subject_words() -> None:
    weights = corpus_weight({"timeout": 0.6, "async": 0.7, "client": 0.4, "set": 0.3})
    processor = RuleBasedQueryProcessor(term_weight=weights)
    processed = processor.process("What exception do I get when it expires?", TIMEOUT_TURNS)
    assert processed.resolved == "What exception do I get when the timeout expires?"
    assert processed.text.startswith(processed.resolved + " (")
    assert processed.focus == processed.resolved
    alone = processor.process("What is a timeout?")
    assert alone.text == alone.resolved == alone.focus == "What is a timeout?"
