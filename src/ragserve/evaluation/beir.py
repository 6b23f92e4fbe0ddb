"""Load and validate a BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import json
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
            available = (
                sorted(x.stem for x in (folder / "qrels").glob("*.tsv"))
                if (folder / "qrels").is_dir()
                else []
            )
            hint = (
                f"Available splits: {', '.join(available)}."
                if p == qrels_path and available
                else "A BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
            )
            raise DatasetError(f"Missing file: {p}", hint=hint)
    corpus_ids: set[str] = set()
    with corpus_path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                corpus_ids.add(str(json.loads(line)["_id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{corpus_path}:{lineno}: not a BEIR corpus record ({exc}).",
                    hint='Each line must be {"_id", "title", "text"}.',
                ) from exc
    queries: dict[str, str] = {}
    with queries_path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                queries[str(rec["_id"])] = str(rec["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{queries_path}:{lineno}: not a BEIR query record ({exc}).",
                    hint='Each line must be {"_id", "text"}.',
                ) from exc
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")  # BEIR qrels are CRLF
            if not line or (lineno == 1 and line.startswith("query-id")):
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                raise DatasetError(
                    f"{qrels_path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score'.",
                    hint="Check the qrels file format.",
                )
            qid, did, score = parts[0], parts[1], int(parts[2])
            if qid not in queries:
                raise DatasetError(
                    f"{qrels_path}:{lineno}: query id '{qid}' is not in {queries_path.name}."
                )
            if did not in corpus_ids:
                raise DatasetError(
                    f"{qrels_path}:{lineno}: corpus id '{did}' is not in {corpus_path.name}."
                )
            if not queries[qid].strip():
                raise DatasetError(
                    f"{queries_path}: query '{qid}' is empty.", hint="Remove it or give it text."
                )
            if score > 0:
                qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise DatasetError(f"{qrels_path}: no relevance judgements.")
    return BeirDataset(
        name=folder.name,
        folder=folder,
        corpus_path=corpus_path,
        queries=queries,
        qrels=qrels,
        corpus_size=len(corpus_ids),
    )
