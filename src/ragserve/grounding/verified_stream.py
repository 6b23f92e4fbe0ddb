"""Verified streaming: a client is shown only text the final answer holds.

Grounding and verification judge whole sentences, so a streamed answer is held back a
sentence at a time: each time the reader completes a sentence (or a fenced code block), the
answer so far goes through the same :meth:`AnswerPolicy.verify` as a finished one, and only if
it passes is its new text released. What fails is held; if a later sentence makes the answer
pass as a whole, the held text goes out with it. The final answer is the longest prefix that
passed, so nothing released is ever taken back, and a refused answer releases nothing.

Released text carries no ``[n]`` markers: grounding may correct which source a sentence
cites, and a marker already shown could not be corrected. The final answer is the released
text followed by its markers (and the code its source shows, ``show_code``), so it extends
what the client has rather than replacing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragserve.context.assembler import AssembledContext
from ragserve.generation.citations import strip_markers, validate_citations
from ragserve.grounding.evidence import answer_units
from ragserve.grounding.policy import AnswerPolicy, Verdict, cite_at_end
from ragserve.text.sentences import CODE_FENCES

__all__ = ["VerifiedStream"]


@dataclass(slots=True)
class _Released:
    verdict: Verdict
    bare: str


class VerifiedStream:
    """Feed the reader's pieces; get back what may be shown now. ``finish`` gives the answer."""

    def __init__(
        self,
        policy: AnswerPolicy,
        question: str,
        context: AssembledContext,
        *,
        quoted: bool = False,
        turn: str | None = None,
        resolved: str | None = None,
    ) -> None:
        self.policy, self.question, self.context, self.quoted = policy, question, context, quoted
        self.turn, self.resolved = turn, resolved
        self._raw = ""
        self._checked = 0
        self._released: _Released | None = None
        self._first: Verdict | None = None
        self._last: Verdict | None = None

    @property
    def shown(self) -> str:
        """Everything released so far."""
        return self._released.bare if self._released else ""

    @property
    def invalid_citations(self) -> list[int]:
        """Source numbers the reader cited that it was not given."""
        return validate_citations(self._raw, self.context)[2] if self._raw.strip() else []

    @property
    def refused_at_once(self) -> bool:
        """The reader's first sentence is a refusal ("I don't know."): stop reading it."""
        return self._released is None and self._first is not None and self._first.reason == "model"

    def feed(self, piece: str) -> str:
        self._raw += piece
        end = self._complete_end()
        if end <= self._checked:
            return ""
        self._checked = end
        return self._try(self._raw[:end])

    def finish(self) -> tuple[Verdict, str]:
        """The final verdict (its text extends :attr:`shown`) and the text still to send."""
        if self.refused_at_once:
            return Verdict("", reason="model"), ""
        released = self._try(self._raw) if self._checked < len(self._raw.rstrip()) else ""
        if self._released is None:
            # The whole answer's reason: its opening may fail for one reason and the rest for
            # another (prose unverified, then code no source shows).
            reason = self._last.reason if self._last else "model"
            return Verdict("", reason=reason or "model"), ""
        verdict, bare = self._released.verdict, self._released.bare
        cited = [c.number for c in verdict.citations]
        text = cite_at_end(bare, cited) if cited else bare
        text = self.policy.show_code(self.question, Verdict(text, verdict.citations), self.context)
        final_text, citations, _ = validate_citations(text, self.context)
        return Verdict(final_text, citations), released + final_text[len(bare) :]

    def _try(self, prefix: str) -> str:
        verdict = self.policy.verify(
            self.question,
            prefix,
            self.context,
            quoted=self.quoted,
            turn=self.turn,
            resolved=self.resolved,
        )
        if self._first is None:
            self._first = verdict
        self._last = verdict
        if not verdict.accepted:
            return ""
        bare = strip_markers(verdict.text)
        shown = self.shown
        if not bare.startswith(shown):
            return ""  # grounding cut back into released text: keep what was shown
        # Equal text still updates the verdict: the marker that closes an answer comes last.
        self._released = _Released(verdict, bare)
        return bare[len(shown) :]

    def _complete_end(self) -> int:
        """End of the last unit the reader has finished: every sentence but the one being
        written, never inside an open code fence."""
        raw = self._raw
        open_fence = _open_fence_start(raw)
        if open_fence is not None:
            raw = raw[:open_fence]
        units = answer_units(raw)
        if open_fence is not None:
            return units[-1][1] if units else 0
        return units[-2][1] if len(units) >= 2 else 0


def _open_fence_start(text: str) -> int | None:
    """Where a fenced code block that has not closed yet starts, if one has not."""
    start: int | None = None
    fence = ""
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if start is None:
            kind = next((f for f in CODE_FENCES if stripped.startswith(f)), "")
            if kind:
                start, fence = offset, kind
        elif stripped.startswith(fence) and line.endswith("\n"):
            start = None
        offset += len(line)
    return start
