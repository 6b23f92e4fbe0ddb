"""Load and validate a BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import DatasetError

__all__ = ["BeirDataset", "load_beir"]


@dataclass(slots=True)
class BeirDataset:
    name: str
    folder: Path
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus_size: int


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"Dataset folder not found: {folder}",
            hint="Pass a BEIR folder with corpus.jsonl, queries.jsonl and qrels/.",
        )
    corpus_path = folder / "corpus.jsonl"
    queries_path = folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for p in (corpus_path, queries_path, qrels_path):
        if not p.is_file():
            raise DatasetError(f"Missing file: {p}", hint=_missing_hint(folder, p == qrels_path))
    corpus_ids = {
        str(rec["_id"])
        for rec in _records(corpus_path, ("_id",), '{"_id", "title", "text"}', "corpus")
    }
    queries = {
        str(rec["_id"]): str(rec["text"])
        for rec in _records(queries_path, ("_id", "text"), '{"_id", "text"}', "query")
    }
    qrels = _read_qrels(qrels_path, queries, corpus_ids, queries_path.name, corpus_path.name)
    return BeirDataset(
        name=folder.name,
        folder=folder,
        corpus_path=corpus_path,
        queries=queries,
        qrels=qrels,
        corpus_size=len(corpus_ids),
    )


def _missing_hint(folder: Path, is_qrels: bool) -> str:
    qrels_dir = folder / "qrels"
    available = sorted(x.stem for x in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if is_qrels and available:
        return f"Available splits: {', '.join(available)}."
    return "A BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv."


def _records(
    path: Path, keys: tuple[str, ...], shape: str, what: str
) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                for key in keys:
                    rec[key]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{path}:{lineno}: not a BEIR {what} record ({exc}).",
                    hint=f"Each line must be {shape}.",
                ) from exc
            yield rec


def _read_qrels(
    path: Path,
    queries: dict[str, str],
    corpus_ids: set[str],
    queries_name: str,
    corpus_name: str,
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")  # BEIR qrels are CRLF
            if not line or (lineno == 1 and line.startswith("query-id")):
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                raise DatasetError(
                    f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score'.",
                    hint="Check the qrels file format.",
                )
            qid, did, score = parts[0], parts[1], int(parts[2])
            if qid not in queries:
                raise DatasetError(f"{path}:{lineno}: query id '{qid}' is not in {queries_name}.")
            if did not in corpus_ids:
                raise DatasetError(f"{path}:{lineno}: corpus id '{did}' is not in {corpus_name}.")
            if not queries[qid].strip():
                raise DatasetError(
                    f"{queries_name}: query '{qid}' is empty.", hint="Remove it or give it text."
                )
            if score > 0:
                qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise DatasetError(f"{path}: no relevance judgements.")
    return qrels
