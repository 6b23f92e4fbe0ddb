"""Answer-level evaluation on SQuAD-dev: retrieval over all 2,067 paragraphs, then generation.

Reports answer containment (a normalised gold answer appears in the answer), token F1 (the
official SQuAD normalisation), citation accuracy (a cited source is the gold paragraph), the
refusal rate when the gold paragraph is removed from the index, and time to first token.
Questions come from the articles not used to train the re-ranker
(``data/squad_article_split.json``), a fixed seeded sample written to
``data/squad_eval_sample.json``.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.errors import DatasetError

__all__ = ["evaluate_answers", "normalize_answer", "squad_f1"]

REPO = Path(__file__).resolve().parents[3]
SPLIT_FILE = REPO / "data" / "squad_article_split.json"
SAMPLE_FILE = REPO / "data" / "squad_eval_sample.json"


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _load_questions(qa_file: Path, n: int, seed: int) -> list[dict[str, Any]]:
    if not qa_file.is_file():
        raise DatasetError(
            f"QA file not found: {qa_file}", hint="Point --qa at squad-v1.1-dev/qa.jsonl."
        )
    rows = []
    with qa_file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{qa_file}:{lineno}: not JSON ({exc.msg}).") from exc
    if SPLIT_FILE.exists():
        held_out = set(json.loads(SPLIT_FILE.read_text())["eval_articles"])
        rows = [r for r in rows if r["title"] in held_out]
    by_id = {r["id"]: r for r in rows}
    if SAMPLE_FILE.exists():
        sample = json.loads(SAMPLE_FILE.read_text())
        if (
            sample.get("n") == n
            and sample.get("seed") == seed
            and all(i in by_id for i in sample["ids"])
        ):
            return [by_id[i] for i in sample["ids"]]
    ids = sorted(by_id)
    random.Random(seed).shuffle(ids)
    chosen = sorted(ids[:n])
    SAMPLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE_FILE.write_text(
        json.dumps(
            {
                "seed": seed,
                "n": n,
                "source": "eval_articles of squad_article_split.json",
                "ids": chosen,
            },
            indent=1,
        )
        + "\n"
    )
    return [by_id[i] for i in chosen]


def evaluate_answers(
    settings: Settings,
    qa_file: Path,
    *,
    n: int = 300,
    seed: int = 7,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from ragserve.ingest.loaders import iter_beir_corpus
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.pipeline import RagPipeline
    from ragserve.stores.base import IndexWrite

    corpus = qa_file.parent / "corpus.jsonl"
    if not corpus.is_file():
        raise DatasetError(f"Missing {corpus}", hint="The QA file's folder must hold corpus.jsonl.")
    questions = _load_questions(qa_file, n, seed)[: limit or None]
    main = RagPipeline(settings.model_copy(update={"collection": "eval-squad"}))
    main.warm_up()
    Ingestor(main.settings, main.index, main.embedder).ingest_documents(
        iter_beir_corpus(corpus), total=2067, progress=progress
    )
    present = _run(main, questions, progress, "answers")

    gold = {q["context_id"] for q in questions}
    absent = RagPipeline(
        settings.model_copy(update={"collection": "eval-squad-absent"}), embedder=main.embedder
    )
    absent.warm_up(generation=False)
    absent.reranker, absent.generator, absent.assembler = (
        main.reranker,
        main.generator,
        main.assembler,
    )
    _copy_without(main, absent, gold, IndexWrite)
    missing = _run(absent, questions, progress, "answers (gold removed)")
    main.close()
    absent.close()
    return {
        "containment": round(float(np.mean([r["contained"] for r in present])), 4),
        "f1": round(float(np.mean([r["f1"] for r in present])), 4),
        "citation_accuracy": round(float(np.mean([r["cited_gold"] for r in present])), 4),
        "retrieval_recall@k": round(float(np.mean([r["retrieved_gold"] for r in present])), 4),
        "refusal_rate_when_present": round(float(np.mean([r["refused"] for r in present])), 4),
        "refusal_when_absent": round(float(np.mean([r["refused"] for r in missing])), 4),
        "ttft_p50_ms": round(float(np.percentile([r["ttft"] for r in present], 50)), 1),
        "total_p50_ms": round(float(np.percentile([r["total"] for r in present], 50)), 1),
        "questions": len(questions),
        "generator": settings.generator,
    }


def _run(
    pipeline: Any, questions: Sequence[dict[str, Any]], progress: bool, label: str
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    out = []
    for q in tqdm(questions, desc=label, disable=not progress, dynamic_ncols=True):
        answer = pipeline.answer(q["question"])
        text = answer.text
        cited = {
            answer.sources[c.number - 1].chunk.doc_id
            for c in answer.citations
            if 0 < c.number <= len(answer.sources)
        }
        out.append(
            {
                "contained": (not answer.refused)
                and any(normalize_answer(g) in normalize_answer(text) for g in q["answers"]),
                "f1": 0.0 if answer.refused else max(squad_f1(text, g) for g in q["answers"]),
                "cited_gold": q["context_id"] in cited,
                "retrieved_gold": any(h.chunk.doc_id == q["context_id"] for h in answer.sources),
                "refused": answer.refused,
                "ttft": answer.timings.get("ttft", answer.timings.get("total", 0.0)),
                "total": answer.timings.get("total", 0.0),
            }
        )
    return out


def _copy_without(src: Any, dst: Any, exclude: set[str], index_write: Any) -> None:
    """Make ``dst`` hold ``src``'s documents minus the excluded ones (no embedding).

    Compared by document id, not by count, so an index left by a different question sample is
    corrected rather than reused: a gold paragraph left in would count as a wrong refusal.
    """
    from ragserve.types import DocumentRecord

    records = {r.doc_id: r for r in src.index.documents()}
    wanted = set(records) - exclude
    have = {r.doc_id for r in dst.index.documents()}
    if have - wanted:
        dst.index.delete(sorted(have - wanted))
    missing = wanted - have
    if not missing:
        return
    by_doc: dict[str, list[Any]] = {}
    for batch in src.index.iter_chunks(2000):
        for c in batch:
            if c.doc_id in missing:
                by_doc.setdefault(c.doc_id, []).append(c)
    writes = []
    for doc_id, chunks in by_doc.items():
        chunks.sort(key=lambda c: c.chunk_index)
        vectors = src.index.get_vectors([c.id for c in chunks])
        rec = records[doc_id]
        writes.append(
            index_write(
                DocumentRecord(doc_id, rec.source, rec.content_hash, len(chunks), rec.title),
                chunks,
                vectors,
            )
        )
        if len(writes) >= 256:
            dst.index.write(writes)
            writes = []
    dst.index.write(writes)
