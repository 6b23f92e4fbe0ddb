"""The API's pure parts: rate limiting, keys, storage errors, upload names, response shapes."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from starlette.requests import Request

from ragserve.errors import StoreError
from ragserve.serving.api import security
from ragserve.serving.api.errors import StorageError, is_disk_full, storage_error
from ragserve.serving.api.routes.documents import _safe_filename, _unique
from ragserve.serving.api.schemas import ChatResponse, completion_response
from ragserve.serving.api.security import AuthError, RateLimitedError, RateLimiter, check_key
from ragserve.types import Answer, Chunk, Hit


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    # The `limits` package reads the wall clock (time.time) for its windows.
    c = _Clock()
    monkeypatch.setattr(security.time, "time", c)
    return c


def test_a_client_gets_per_minute_requests_in_any_minute_then_waits_for_its_oldest(
    clock: _Clock,
) -> None:
    limiter = RateLimiter(per_minute=3)
    for _ in range(3):  # at 0, 10 and 20 s
        limiter.check("a")
        clock.now += 10
    clock.now -= 10
    with pytest.raises(RateLimitedError) as err:
        limiter.check("a")
    assert err.value.retry_after == 40, "until the request of 0 s leaves the window at 60 s"
    limiter.check("b")  # windows are per client
    clock.now += 41  # 61 s: the first request has left the window, the others have not
    limiter.check("a")
    with pytest.raises(RateLimitedError) as err:
        limiter.check("a")
    assert err.value.retry_after == 9, "the request of 10 s leaves at 70 s"


def test_zero_per_minute_means_no_limit(clock: _Clock) -> None:
    limiter = RateLimiter(per_minute=0)
    for _ in range(1000):
        limiter.check("a")


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw})


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer s3cret"},
        {"authorization": "bearer s3cret"},
        {"X-API-Key": "s3cret"},
    ],
)
def test_key_accepted_as_bearer_or_header(headers: dict[str, str]) -> None:
    check_key(_request(headers), "s3cret", "chat")


def test_missing_or_wrong_key_never_echoes_the_key() -> None:
    with pytest.raises(AuthError, match="needs an API key"):
        check_key(_request({}), "s3cret", "admin")
    with pytest.raises(AuthError) as err:
        check_key(_request({"X-API-Key": "guess"}), "s3cret", "admin")
    assert "s3cret" not in str(err.value) and "guess" not in str(err.value)
    check_key(_request({}), None, "chat")  # no key configured: open


def test_disk_full_is_507_wherever_it_struck(tmp_path: Path) -> None:
    staged = storage_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert (staged.status_code, staged.code) == (507, "insufficient_storage")
    store = StoreError("Cannot write to the index: the disk is full.")
    store.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert is_disk_full(store)
    assert storage_error(store, tmp_path).status_code == 507


def test_read_only_is_503_and_other_store_errors_pass_through(tmp_path: Path) -> None:
    ro = storage_error(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert isinstance(ro, StorageError) and ro.status_code == 503 and "read-only" in ro.message
    other = StoreError("the store is locked")
    assert not is_disk_full(other) and storage_error(other, tmp_path) is other


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd-notes.md", "passwd-notes.md"),
        ("C:\\Users\\x\\report.pdf", "report.pdf"),
        (".hidden", "hidden"),
        ("a<b>|c.txt", "a_b__c.txt"),
        ("...", None),
        ("", None),
    ],
)
def test_upload_names_are_reduced_to_a_safe_base_name(raw: str, safe: str | None) -> None:
    assert _safe_filename(raw) == safe


def test_repeated_upload_names_stay_distinct() -> None:
    used: set[str] = set()
    names = [_unique(n, used) for n in ("a.md", "a.md", "a.md", "README", "README")]
    assert names == ["a.md", "a-2.md", "a-3.md", "README", "README-2"]


def _answer() -> Answer:
    chunk = Chunk("c1", "d", "d.md", "Text.", 0, 0, 5, "h", page=3)
    return Answer("q", "It is so [1].", [Hit(chunk, 0.1234567)], timings={"total": 1.0})


def test_chat_response_rounds_scores_and_keeps_positions() -> None:
    body = ChatResponse.from_answer(_answer())
    source = body.sources[0]
    assert source.score == 0.123457 and source.page == 3 and source.char_end == 5


def test_completion_response_is_openai_shaped_with_sources() -> None:
    body = completion_response(_answer(), "ragserve")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is so [1]."}
    assert body["sources"][0]["id"] == "c1" and body["timings"] == {"total": 1.0}
