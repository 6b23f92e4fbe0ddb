"""One reading of a conversation's earlier turns for every face: ``/chat`` (``history``),
``/v1/chat/completions`` (``messages``), MCP ``ask`` (``history``) and so the widget.

The rules, the same everywhere:

* system messages are dropped: a client's instructions never reach the reader as a turn;
* the rest must alternate ``user``, ``assistant``, starting with ``user`` (a history that does
  not is a client bug: two user turns in a row, or an answer to nothing; guessing which turn
  was meant would make the follow-up about the wrong thing), else a typed 400;
* no turn may be empty, nor longer than :data:`MAX_TURN_CHARS` (a 400 naming the limit: a
  cut turn would silently change what was asked, and the reader sees only a budget of it);
* past ``max_history_turns`` exchanges the oldest are dropped, not refused, and it is logged:
  a long chat in the widget must keep working.

Errors name the offending field as the request spelled it (``history[3].content``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ragserve.errors import BadRequestError
from ragserve.types import Message

__all__ = ["MAX_TURN_CHARS", "InvalidHistoryError", "conversation_turns"]

log = logging.getLogger("ragserve.serving.api")

MAX_TURN_CHARS = 20_000
"""The longest earlier turn accepted, in characters (a long answer with code fits)."""


class _Turn(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


class InvalidHistoryError(BadRequestError):
    """A 400 whose body also names the field at fault (``"field": "history[1].role"``)."""

    code = "invalid_history"

    def __init__(self, message: str, *, field: str, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.field = field

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "field": self.field}


_ORDER_HINT = "Send turns oldest first, alternating user and assistant, starting with user."


def conversation_turns(
    turns: Sequence[_Turn],
    max_exchanges: int,
    *,
    field: str = "history",
    ends_with_user: bool = False,
) -> list[Message]:
    """The checked, trimmed turns, system messages left out.

    ``ends_with_user``: the list holds the question too (OpenAI's ``messages``), so it must
    end with a user turn; a ``history`` must end with an answer (the question comes apart).
    """
    kept: list[Message] = []
    for i, turn in enumerate(turns):
        if turn.role == "system":
            continue
        where = f"{field}[{i}]"
        _check_content(turn.content, where)
        expected = "user" if len(kept) % 2 == 0 else "assistant"
        if turn.role != expected:
            after = f"after a turn by '{kept[-1].role}'" if kept else "as the first turn"
            raise InvalidHistoryError(
                f"{where} is by '{turn.role}' {after}; expected '{expected}'.",
                field=f"{where}.role",
                hint=_ORDER_HINT,
            )
        kept.append(Message(turn.role, turn.content))  # type: ignore[arg-type]
    _check_end(kept, field, ends_with_user)
    return _trim(kept, max_exchanges, field, ends_with_user)


def _check_content(content: str, where: str) -> None:
    if not content.strip():
        raise InvalidHistoryError(
            f"{where}.content is empty.",
            field=f"{where}.content",
            hint="Leave out empty turns.",
        )
    if len(content) > MAX_TURN_CHARS:
        raise InvalidHistoryError(
            f"{where}.content is {len(content)} characters; the limit is {MAX_TURN_CHARS}.",
            field=f"{where}.content",
            hint="Shorten the turn; the reader sees only the last part of a long one anyway.",
        )


def _check_end(kept: list[Message], field: str, ends_with_user: bool) -> None:
    last = kept[-1].role if kept else None
    if ends_with_user and last != "user":
        raise InvalidHistoryError(
            "The last message must be from the user.",
            field=field,
            hint=f"End '{field}' with {{'role': 'user', ...}}.",
        )
    if not ends_with_user and last == "user":
        raise InvalidHistoryError(
            f"{field} ends with a 'user' turn; the question goes in the query, and each "
            "earlier question needs its answer.",
            field=f"{field}[{len(kept) - 1}].role",
            hint=_ORDER_HINT,
        )


def _trim(
    kept: list[Message], max_exchanges: int, field: str, ends_with_user: bool
) -> list[Message]:
    # Whole exchanges go, oldest first, so what is kept still starts with a user turn.
    limit = 2 * max_exchanges + (1 if ends_with_user else 0)
    if len(kept) <= limit:
        return kept
    log.info(
        "%s of %d turns trimmed to the most recent %d (max_history_turns=%d)",
        field,
        len(kept),
        limit,
        max_exchanges,
    )
    return kept[len(kept) - limit :] if limit else []
