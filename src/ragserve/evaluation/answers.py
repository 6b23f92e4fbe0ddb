"""Answer-level evaluation: retrieval over a QA file's whole corpus, then the reader.

Any QA file of the SQuAD-derived shape works: ``qa.jsonl`` rows ``{"id", "question",
"answers": [str], "context_id"}`` with a BEIR ``corpus.jsonl`` beside it whose ``_id`` is the
``context_id``. Reports answer containment (a normalised gold answer appears in the answer),
token F1 (the official SQuAD normalisation), citation accuracy (a cited source is the gold
paragraph), the refusal rate with the gold paragraph in the index and with it removed, and
time to first token and to the whole answer.

For SQuAD-dev only, questions come from the articles not used to train the re-ranker and the
answerability judge (``data/squad_article_split.json``), as a fixed seeded sample kept in
``data/squad_eval_sample.json`` so every run scores the same questions.
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
from ragserve.generation.citations import strip_markers

__all__ = [
    "evaluate_answers",
    "index_corpus",
    "load_questions",
    "normalize_answer",
    "run_questions",
    "squad_f1",
    "subsample",
]

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


def _read_qa(qa_file: Path) -> list[dict[str, Any]]:
    if not qa_file.is_file():
        raise DatasetError(
            f"QA file not found: {qa_file}", hint="Point --qa at squad-v1.1-dev/qa.jsonl."
        )
    rows = []
    with qa_file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{qa_file}:{lineno}: not JSON ({exc.msg}).") from exc
            missing = {"id", "question", "answers", "context_id"} - set(row)
            if missing:
                raise DatasetError(
                    f"{qa_file}:{lineno}: missing {', '.join(sorted(missing))}.",
                    hint='Each line needs "id", "question", "answers" (list) and "context_id".',
                )
            rows.append(row)
    if not rows:
        raise DatasetError(f"{qa_file} holds no questions.")
    return rows


def _is_squad(qa_file: Path) -> bool:
    return qa_file.parent.name.lower().startswith("squad")


def load_questions(
    qa_file: Path, n: int, seed: int, articles: str = "eval"
) -> list[dict[str, Any]]:
    rows = _read_qa(qa_file)
    squad = _is_squad(qa_file)
    if squad and SPLIT_FILE.exists():
        chosen_articles = set(json.loads(SPLIT_FILE.read_text())[f"{articles}_articles"])
        rows = [r for r in rows if r.get("title") in chosen_articles]
    by_id = {r["id"]: r for r in rows}
    # Only the held-out articles' sample is fixed on disk; a tuning sample from the training
    # articles is drawn afresh (same seed, same questions) and never replaces it.
    squad = squad and articles == "eval"
    if squad and SAMPLE_FILE.exists():
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
    if squad:
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
    report: Path | None = None,
    articles: str = "eval",
) -> dict[str, Any]:
    """Score the configured reader on ``n`` seeded questions (``limit`` of them, spread over
    the sample).

    ``articles="train"`` draws SQuAD questions from the training articles instead of the
    held-out ones: for tuning the reader without reading the evaluation sample.
    """
    corpus = qa_file.parent / "corpus.jsonl"
    if not corpus.is_file():
        raise DatasetError(f"Missing {corpus}", hint="The QA file's folder must hold corpus.jsonl.")
    questions = subsample(load_questions(qa_file, n, seed, articles), limit, seed)
    main, absent = paired_pipelines(settings, qa_file, questions, articles, progress)
    present = run_questions(main, questions, progress, "answers")
    missing = run_questions(absent, questions, progress, "answers (gold removed)")
    main.close()
    absent.close()
    result = _summary(present, missing, settings)
    if report is not None:
        _write_report(report, present, missing, result)
    return result


def paired_pipelines(
    settings: Settings,
    qa_file: Path,
    questions: Sequence[dict[str, Any]],
    articles: str = "eval",
    progress: bool = True,
) -> tuple[Any, Any]:
    """Two warmed pipelines sharing their models: one over the QA file's whole corpus, one
    over the same corpus without the questions' gold paragraphs (where the reader should
    refuse). Each is a collection of its own, built once and then reused."""
    from ragserve.pipeline import RagPipeline

    name = re.sub(r"[^A-Za-z0-9_-]", "-", qa_file.parent.name)[:40]
    main = RagPipeline(settings.replace(collection=f"eval-{name}"))
    main.warm_up()
    index_corpus(main, qa_file.parent / "corpus.jsonl", progress)
    suffix = "" if articles == "eval" else f"-{articles}"
    absent = RagPipeline(
        settings.replace(collection=f"eval-{name}-absent{suffix}"),
        embedder=main.embedder,
        reranker=main.reranker,
        judge=main.judge,
        generator=main.generator,
    )
    absent.warm_up()
    _copy_without(main, absent, {q["context_id"] for q in questions})
    return main, absent


def subsample(
    questions: list[dict[str, Any]], limit: int | None, seed: int
) -> list[dict[str, Any]]:
    """``limit`` of the questions, drawn across the whole sample (seeded), in sample order.

    The sample is sorted by id, and SQuAD ids group by article: its first N questions would
    come from two or three articles and say little about the rest.
    """
    if not limit or limit >= len(questions):
        return questions
    keep = set(random.Random(seed).sample(range(len(questions)), limit))
    return [q for i, q in enumerate(questions) if i in keep]


def index_corpus(pipeline: Any, corpus: Path, progress: bool) -> None:
    from ragserve.ingest.loaders import iter_beir_corpus
    from ragserve.ingest.pipeline import Ingestor

    with corpus.open("rb") as fh:
        total = sum(1 for line in fh if line.strip())
    Ingestor(pipeline.settings, pipeline.index, pipeline.embedder).ingest_documents(
        iter_beir_corpus(corpus), total=total, progress=progress
    )


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4) if rows else 0.0


def _p50(rows: Sequence[dict[str, Any]], key: str) -> float:
    return round(float(np.percentile([r[key] for r in rows], 50)), 1) if rows else 0.0


def _summary(
    present: list[dict[str, Any]], missing: list[dict[str, Any]], settings: Settings
) -> dict[str, Any]:
    answered = [r for r in present if not r["refused"]]
    return {
        "containment": _mean(present, "contained"),
        "f1": _mean(present, "f1"),
        "citation_accuracy": _mean(present, "cited_gold"),
        "citation_accuracy_answered": _mean(answered, "cited_gold"),
        "refusal_when_absent": _mean(missing, "refused"),
        "refusal_when_present": _mean(present, "refused"),
        "retrieval_recall@k": _mean(present, "retrieved_gold"),
        "gold_first": _mean(present, "gold_first"),
        "ttft_p50_ms": _p50(present, "ttft"),
        "total_p50_ms": _p50(present, "total"),
        "total_p95_ms": round(float(np.percentile([r["total"] for r in present], 95)), 1),
        "prompt_tokens_p50": _p50(present, "context_tokens"),
        "questions": len(present),
        "generator": settings.generation.generator,
        "model": settings.generation.llm_model_path
        if settings.generation.generator == "llama"
        else None,
    }


def run_questions(
    pipeline: Any, questions: Sequence[dict[str, Any]], progress: bool, label: str
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    out = []
    for q in tqdm(questions, desc=label, disable=not progress, dynamic_ncols=True):
        answer = pipeline.answer(q["question"])
        # Citation markers are not part of the answer a person reads for its content.
        text = strip_markers(answer.text)
        cited = {
            answer.sources[c.number - 1].chunk.doc_id
            for c in answer.citations
            if 0 < c.number <= len(answer.sources)
        }
        out.append(
            {
                "id": q["id"],
                "question": q["question"],
                "gold": q["answers"],
                "answer": answer.text,
                "refusal_reason": answer.refusal_reason,
                "contained": (not answer.refused)
                and any(normalize_answer(g) in normalize_answer(text) for g in q["answers"]),
                "f1": 0.0 if answer.refused else max(squad_f1(text, g) for g in q["answers"]),
                "cited_gold": q["context_id"] in cited,
                "retrieved_gold": any(h.chunk.doc_id == q["context_id"] for h in answer.sources),
                "gold_first": bool(answer.sources)
                and answer.sources[0].chunk.doc_id == q["context_id"],
                "context_tokens": answer.context_tokens,
                "refused": answer.refused,
                "ttft": answer.timings.get("ttft", answer.timings.get("total", 0.0)),
                "total": answer.timings.get("total", 0.0),
            }
        )
    return out


def _copy_without(src: Any, dst: Any, exclude: set[str]) -> None:
    """Make ``dst`` hold ``src``'s documents minus the excluded ones (no embedding).

    Compared by document id, not by count, so an index left by a different question sample is
    corrected rather than reused: a gold paragraph left in would count as a wrong refusal.
    """
    from ragserve.stores.base import IndexWrite as index_write
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


def _write_report(
    out: Path, present: list[dict[str, Any]], missing: list[dict[str, Any]], result: dict[str, Any]
) -> None:
    """A bar per quality figure with its target, and the answer-time distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.json").write_text(json.dumps(result, indent=2) + "\n")
    # Every question's answer, for reading what went wrong rather than only how often.
    with (out / "answers.jsonl").open("w", encoding="utf-8") as fh:
        for gold_indexed, rows in ((True, present), (False, missing)):
            for row in rows:
                fh.write(json.dumps({**row, "gold_in_index": gold_indexed}) + "\n")
    targets = {
        "containment": 0.80,
        "f1": 0.45,
        "citation_accuracy": 0.90,
        "refusal_when_absent": 0.85,
        "refusal_when_present": 0.05,
    }
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(targets)
    ax.barh(names, [result[k] for k in names], color="#2563eb")
    ax.scatter([targets[k] for k in names], names, marker="|", s=400, color="black", label="target")
    for i, k in enumerate(names):
        ax.text(min(result[k] + 0.02, 0.9), i, f"{result[k]:.2f}", va="center")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title(f"{result['questions']} questions, {result['generator']}")
    bx.hist([r["ttft"] / 1000 for r in present], bins=30, alpha=0.7, label="first token")
    bx.hist([r["total"] / 1000 for r in present], bins=30, alpha=0.7, label="whole answer")
    bx.set_xlabel("seconds")
    bx.set_ylabel("questions")
    bx.legend()
    fig.tight_layout()
    fig.savefig(out / "answers.png", dpi=120)
    plt.close(fig)
