"""Sparse (lexical) retrieval: BM25 over chunk text with bm25s.

bm25s has no incremental insert, so the index is derived data: built from the manifest's
chunk texts and stamped with the manifest version it was built from. A stale or missing index
is rebuilt on open, which makes a crash between writing the manifest and saving BM25 harmless.

Concurrency by construction: a built index is an immutable :class:`Bm25Snapshot`. Searches read
the current snapshot reference once and use only it, so they take no lock and never see half a
rebuild; a writer builds the next snapshot off to the side and publishes it with one reference
assignment. Each snapshot keeps its documents' tokens, so the next one re-tokenises only the
chunks that changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.text.stemming import stemmer

__all__ = ["BM25Index", "Bm25Snapshot", "Bm25Tokenizer"]

log = logging.getLogger("ragserve.stores.bm25")

Tokens = tuple[str, ...]


def _bm25s():  # type: ignore[no-untyped-def]
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which floods any configured root handler.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class Bm25Tokenizer:
    """Lower-case word tokens, English stop words removed, Snowball-stemmed (both switchable).

    Safe to share between threads: a Snowball stemmer keeps per-call state in C, so each thread
    stems with its own (``ragserve.text.stemming``, which the sentence-support scorer uses too).
    """

    def __init__(self, *, stemming: bool = True, stopwords: bool = True) -> None:
        self.stemming = stemming
        self.stopwords = stopwords
        if stemming:
            self._stemmer()  # fail at construction, not at the first search, if it is missing

    def _stemmer(self) -> Any:
        return stemmer() if self.stemming else None

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens, as strings (bm25s indexes and queries them directly)."""
        if not texts:
            return []
        return _bm25s().tokenize(
            list(texts),
            stopwords="en" if self.stopwords else None,
            stemmer=self._stemmer(),
            return_ids=False,
            show_progress=False,
        )

    def describe(self) -> dict[str, bool]:
        return {"stemming": self.stemming, "stopwords": self.stopwords}


@dataclass(frozen=True, slots=True, eq=False)
class Bm25Snapshot:
    """One built BM25 index over fixed chunk ids; never modified after construction."""

    version: int | None
    ids: tuple[str, ...]
    retriever: Any
    """A bm25s.BM25, or None when there is nothing lexical to index."""
    tokens: tuple[Tokens, ...] | None = None
    """Per id, for deriving the next snapshot; None for one loaded from disk."""

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query_tokens: list[str], k: int) -> list[tuple[str, float]]:
        if self.retriever is None or not self.ids or not query_tokens:
            return []
        # n_threads=0: bm25s would otherwise start a thread pool for every single query.
        docs, scores = self.retriever.retrieve(
            [query_tokens], k=min(k, len(self.ids)), show_progress=False, n_threads=0
        )
        out = []
        for idx, score in zip(docs[0], scores[0], strict=True):
            if score <= 0:
                break
            out.append((self.ids[int(idx)], float(score)))
        return out


def _build(version: int | None, ids: Sequence[str], tokens: Sequence[Tokens]) -> Bm25Snapshot:
    if not any(tokens):  # empty, or nothing but stop words: no lexical index to build
        return Bm25Snapshot(version, tuple(ids), None, tuple(tokens))
    retriever = _bm25s().BM25()
    retriever.index([list(t) for t in tokens], show_progress=False)
    return Bm25Snapshot(version, tuple(ids), retriever, tuple(tokens))


class BM25Index:
    """The current :class:`Bm25Snapshot` of a collection, and its copy on disk."""

    def __init__(self, tokenizer: Bm25Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer or Bm25Tokenizer()
        self._snapshot = Bm25Snapshot(None, (), None, ())
        self._publish_lock = threading.Lock()  # publishers only; searches never take it
        self._save_lock = threading.Lock()
        self._saved_version: int | None = None

    def __len__(self) -> int:
        return len(self._snapshot)

    @property
    def snapshot(self) -> Bm25Snapshot:
        return self._snapshot

    @property
    def version(self) -> int | None:
        return self._snapshot.version

    def prepare(self, ids: Sequence[str], texts: Sequence[str], version: int) -> Bm25Snapshot:
        """A snapshot over ``texts`` (not yet searchable; see :meth:`publish`)."""
        tokens = [tuple(t) for t in self.tokenizer.tokenize(texts)]
        return _build(version, ids, tokens)

    def derive(
        self,
        base: Bm25Snapshot,
        *,
        remove: Collection[str],
        add_ids: Sequence[str] = (),
        add_texts: Sequence[str] = (),
        version: int,
    ) -> Bm25Snapshot | None:
        """``base`` without ``remove`` and with the added chunks, tokenising only those; None
        when ``base`` kept no tokens (it was loaded from disk) and a full build is needed."""
        if base.tokens is None:
            return None
        drop = set(remove) | set(add_ids)
        kept = [(i, t) for i, t in zip(base.ids, base.tokens, strict=True) if i not in drop]
        added = [tuple(t) for t in self.tokenizer.tokenize(add_texts)]
        ids = [i for i, _ in kept] + list(add_ids)
        return _build(version, ids, [t for _, t in kept] + added)

    def publish(self, snapshot: Bm25Snapshot) -> bool:
        """Make ``snapshot`` the one searches use, unless a newer one is already published."""
        with self._publish_lock:
            current = self._snapshot.version
            if current is not None and snapshot.version is not None and snapshot.version < current:
                return False
            self._snapshot = snapshot  # one reference store: searches see old or new, whole
            return True

    def build(self, ids: Sequence[str], texts: Sequence[str], version: int) -> Bm25Snapshot:
        snapshot = self.prepare(ids, texts, version)
        self.publish(snapshot)
        return snapshot

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        snapshot = self._snapshot  # read once: a concurrent publish cannot mix two indexes
        if snapshot.retriever is None or k <= 0:
            return []
        tokens = self.tokenizer.tokenize([query])
        return snapshot.search(tokens[0] if tokens else [], k)

    def save(self, directory: Path, snapshot: Bm25Snapshot | None = None) -> None:
        """Write a snapshot (default: the current one) to a fresh temporary sibling and swap it
        in, so a crash never leaves half an index and another process saving the same index
        (a CLI ingest beside a running server) never touches this one's files. Older than
        what this process or another one saved already: skipped."""
        snapshot = snapshot or self._snapshot
        with self._save_lock:
            saved = self._saved_version
            if snapshot.version is not None and saved is not None and snapshot.version <= saved:
                return
            if _write_dir(directory, snapshot, self.tokenizer.describe()):
                self._saved_version = snapshot.version

    def load(self, directory: Path, version: int) -> bool:
        """Load and publish the saved index if it was built from manifest ``version`` with this
        tokenizer; False when there is none, it is stale or it was built differently."""
        meta_path = directory / "meta.json"
        if not meta_path.exists():  # nothing saved: no lock file made, no directory created
            return False
        try:
            with _dir_lock(directory):  # not while another process swaps it
                meta = json.loads(meta_path.read_text())
                if meta.get("tokenizer") != self.tokenizer.describe() or meta["version"] != version:
                    return False
                has_index = (directory / "bm25").is_dir()
                retriever = _bm25s().BM25.load(str(directory / "bm25")) if has_index else None
                snapshot = Bm25Snapshot(version, tuple(meta["ids"]), retriever, None)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("BM25 index at %s unreadable (%s); it will be rebuilt", directory, exc)
            return False
        with self._save_lock:
            self._saved_version = version
        self.publish(snapshot)
        return True


# A temporary directory this old was left by a writer that died mid-save.
_STALE_TMP_S = 3600.0


def _dir_lock(directory: Path) -> Any:
    """The cross-process lock of one saved index (``bm25.lock`` beside ``bm25/``): held only
    for the swap and for a load, never for a build or a write."""
    from filelock import FileLock

    return FileLock(str(directory.with_name(directory.name + ".lock")), timeout=120)


def _on_disk_version(directory: Path, tokenizer: dict[str, bool]) -> int | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("tokenizer") != tokenizer or not isinstance(meta.get("version"), int):
        return None
    return int(meta["version"])


def _write_dir(directory: Path, snapshot: Bm25Snapshot, tokenizer: dict[str, bool]) -> bool:
    """Write ``snapshot`` beside ``directory`` under a name no other writer uses, then swap it
    in under the index's file lock. False when another process saved a newer one meanwhile."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        if snapshot.retriever is not None:
            snapshot.retriever.save(str(tmp / "bm25"), show_progress=False)
        meta = {"version": snapshot.version, "ids": list(snapshot.ids), "tokenizer": tokenizer}
        (tmp / "meta.json").write_text(json.dumps(meta))
        with _dir_lock(directory):
            on_disk = _on_disk_version(directory, tokenizer)
            if on_disk is not None and snapshot.version is not None and on_disk > snapshot.version:
                return False
            if directory.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=parent))
                directory.rename(old / directory.name)
            tmp.rename(directory)
            _remove_stale_tmp(directory)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was swapped in
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_stale_tmp(directory: Path) -> None:
    """Temporary directories of writers that died mid-save: an hour old, so not another
    writer's that is still being written (an ``.old-`` one is only live under the lock)."""
    cutoff = time.time() - _STALE_TMP_S
    for pattern in (f".{directory.name}.tmp-*", f".{directory.name}.old-*"):
        for stale in directory.parent.glob(pattern):
            try:
                if stale.stat().st_mtime < cutoff:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                continue
