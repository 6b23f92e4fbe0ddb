"""The fast tier: pure logic, small fakes at the model boundary, no model loads, no servers.

Everything in this folder is marked ``fast``; ``make test-fast`` runs ``pytest -m fast``, which
also picks up the pure tests elsewhere that carry the mark.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ragserve.config import Settings
from ragserve.pipeline import StreamEvent
from ragserve.runtime.admission import AnswerAdmission
from ragserve.stores.base import IndexInfo
from ragserve.types import Answer, Chunk, Citation, DocumentRecord, Hit, Message

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fast)


# --- fakes at the model boundary: the API needs their shape, not models ---------------------

DOC = "docs/timeouts.md"


def make_answer(query: str) -> Answer:
    text = "Pass timeout=5.0 to the client [1]."
    chunk = Chunk(
        id=f"{DOC}#0",
        doc_id=DOC,
        source=DOC,
        text="Set a timeout with httpx.Client(timeout=5.0).",
        chunk_index=0,
        char_start=0,
        char_end=46,
        content_hash="h",
        section="Timeouts",
    )
    citation = Citation(1, chunk.id, DOC, None, "Timeouts", chunk.text)
    return Answer(
        query=query,
        text=text,
        sources=[Hit(chunk, 0.9)],
        citations=[citation],
        timings={"retrieve": 1.5, "generate": 0.5, "total": 2.0},
    )


class FakeIndex:
    def __init__(self) -> None:
        self.docs = {DOC: DocumentRecord(DOC, DOC, "h", 1, "Timeouts", 1.0)}
        self.info_threads: list[int] = []

    def info(self) -> IndexInfo:
        self.info_threads.append(threading.get_ident())
        return IndexInfo("default", "fake", "fake-embedder", 4, len(self.docs), len(self.docs), 1)

    def documents(self) -> list[DocumentRecord]:
        return list(self.docs.values())

    def delete(self, doc_ids: Sequence[str]) -> int:
        return sum(self.docs.pop(d, None) is not None for d in doc_ids)


class FakePipeline:
    """``RagPipeline``'s surface as the API uses it; answers every question the same way."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = FakeIndex()
        self.embedder: Any = None
        self.closed = False
        self.busy = False
        self.admission = AnswerAdmission(1 + settings.generation.llm_max_waiting)
        self.go = threading.Event()  # cleared, answers wait for it: a reader still busy
        self.go.set()

    def warm_up(self) -> None: ...

    def check_capacity(self) -> None:
        if self.busy:
            from ragserve.errors import GenerationBusyError

            raise GenerationBusyError("The local model is busy.", hint="Retry in a few seconds.")

    def close(self) -> None:
        self.closed = True

    def answer(self, query: str, history: Sequence[Message] = ()) -> Answer:
        self.go.wait(10)
        return make_answer(query)

    def stream(self, query: str, history: Sequence[Message] = ()) -> Iterator[StreamEvent]:
        self.go.wait(10)
        answer = make_answer(query)
        for word in answer.text.split(" "):
            yield StreamEvent("token", text=word + " ")
        yield StreamEvent("done", answer=answer)


@pytest.fixture
def fake_pipeline_factory() -> type[FakePipeline]:
    return FakePipeline
