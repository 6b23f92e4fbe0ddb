"""Issue 24: is some configuration of the built-in re-ranker worth turning on by default?

The default hybrid retriever (the eval's own, ``evaluation.retrieval.stage_retrievers``: configured
fusion + dense feedback, 100 candidates) runs once per query; the cross-encoder (the runtime
``rerank_runtime`` picks, e.g. int8 ONNX with VNNI) scores its top ``max(--candidates)`` chunks
once per ``--windows`` size; both are cached on disk (``--cache``), so the grid is evaluated
offline: ``rerank_fusion`` in {interpolate (``rerank_alpha`` 0.1-0.6 and 0.8; alpha 0 is
hybrid), rrf, none} x candidates x window, with nDCG@10 and R@10 from the eval's ranx code,
and for SQuAD the share of questions whose gold paragraph is ranked first. ``--offline``
evaluates what is cached; ``--refusal fusion,alpha,N,window`` adds the refusal gate's effect.

Tuning sets (never a test split): SciFact train (``heldout``: the 80 queries the re-ranker's
training held out, rebuilt from training/train_reranker.py's seeded shuffle; ``all``: all 809,
729 of which it was trained on), NFCorpus dev, and a seeded sample of SQuAD-dev questions from
the ``train_articles`` of data/squad_article_split.json (the re-ranker trained on 100 of their
questions, so this is not held out). ``--test`` runs SciFact / NFCorpus test and the SQuAD answer
sample (data/squad_eval_sample.json) once, hybrid vs hybrid+rerank with the settings given.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python research/tune_rerank_default.py \
        --data-dir /tmp/rerank24/data --cache /tmp/rerank24/cache [--sets scifact,nfcorpus,squad]
    ... --test --fusion interpolate --alpha 0.3 --candidates 20 --window 160

Indexes are the eval CLI's collections (``eval-scifact``, ``eval-nfcorpus``,
``eval-squad-v1-1-dev``) under --data-dir, built on first use and reused after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RAGSERVE_DATASETS", "/work/shared/datasets"))
SQUAD = "squad-v1.1-dev"
SPLIT_FILE = REPO / "data" / "squad_article_split.json"
SAMPLE_FILE = REPO / "data" / "squad_eval_sample.json"
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
HOLDOUT = 80  # train_reranker.py --holdout
TRAIN_SEED = 13  # train_reranker.py --seed


def scifact_heldout(qrels_path: Path, queries: dict[str, str]) -> list[str]:
    """The SciFact train queries train_reranker.py held out: its first rng.shuffle."""
    qrels: set[str] = set()
    for line in qrels_path.open(encoding="utf-8"):
        parts = line.rstrip("\r\n").split("\t")
        if parts[0] != "query-id" and len(parts) >= 3 and int(parts[2]) > 0:
            qrels.add(parts[0])
    qids = sorted(q for q in qrels if q in queries)
    random.Random(TRAIN_SEED).shuffle(qids)
    return qids[:HOLDOUT]


def load_set(name: str, test: bool, squad_n: int) -> dict[str, Any]:
    """{"collection", "queries": {qid: text}, "qrels": {qid: {doc: grade}}, "corpus", "beir"}"""
    from ragserve.evaluation.beir import load_beir

    if name == "squad":
        folder = DATASETS / SQUAD
        rows = [json.loads(x) for x in (folder / "qa.jsonl").open(encoding="utf-8") if x.strip()]
        if test:
            ids = set(json.loads(SAMPLE_FILE.read_text())["ids"])
            rows = [r for r in rows if r["id"] in ids]
        else:
            articles = set(json.loads(SPLIT_FILE.read_text())["train_articles"])
            rows = sorted((r for r in rows if r["title"] in articles), key=lambda r: r["id"])
            random.Random(7).shuffle(rows)
            rows = sorted(rows[:squad_n], key=lambda r: r["id"])
        return {
            "collection": "eval-squad-v1-1-dev",
            "queries": {r["id"]: r["question"] for r in rows},
            "qrels": {r["id"]: {r["context_id"]: 1} for r in rows},
            "corpus": folder / "corpus.jsonl",
            "beir": None,
        }
    split = "test" if test else {"scifact": "train", "nfcorpus": "dev"}[name]
    data = load_beir(DATASETS / name, split)
    qids = sorted(data.qrels)
    return {
        "collection": f"eval-{name}",
        "queries": {q: data.queries[q] for q in qids},
        "qrels": {q: data.qrels[q] for q in qids},
        "corpus": data.corpus_path,
        "beir": data,
        "heldout": (
            scifact_heldout(DATASETS / name / "qrels" / "train.tsv", data.queries)
            if name == "scifact" and not test
            else None
        ),
    }


def open_pipeline(settings: Any, spec: dict[str, Any]) -> Any:
    from ragserve.evaluation.answers import index_corpus as index_qa_corpus
    from ragserve.evaluation.retrieval import index_corpus
    from ragserve.pipeline import RagPipeline

    update = {"rerank": False, "collection": spec["collection"]}
    pipeline = RagPipeline(settings.replace(**update))
    pipeline.warm_up(generation=False)
    if spec["beir"] is not None:
        index_corpus(pipeline, spec["beir"], True)
    else:
        index_qa_corpus(pipeline, spec["corpus"], True)
    return pipeline


def retrieve(settings: Any, spec: dict[str, Any], keep: int, path: Path) -> dict[str, Any]:
    """Hybrid's 100 candidates per query: chunk/doc ids and scores, texts of the first ``keep``."""
    if path.is_file():
        return json.loads(path.read_text())
    from ragserve.evaluation.retrieval import DEPTH, stage_retrievers
    from ragserve.query.processor import RuleBasedQueryProcessor

    pipeline = open_pipeline(settings, spec)
    retriever = stage_retrievers(pipeline, pipeline.settings)["hybrid"]
    plain = RuleBasedQueryProcessor(condense_history=False, expansion=False, intent_detection=False)
    out: dict[str, Any] = {}
    for qid, text in spec["queries"].items():
        hits = retriever.retrieve(plain.process(text), DEPTH)
        out[qid] = {
            "query": plain.process(text).text,
            "docs": [h.chunk.doc_id for h in hits],
            "scores": [h.score for h in hits],
            "dense": [h.scores.get("dense") for h in hits[:keep]],
            "texts": [h.chunk.searchable_text for h in hits[:keep]],
            "plain": [h.chunk.text for h in hits[:keep]],
        }
    pipeline.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def reader_settings(window: int | str) -> dict[str, int]:
    """A ``--windows`` entry as settings: a token count (0: the passage's head) or ``sN``, the
    best run of N sentences (``rerank_sentences``, the default pipeline's s2)."""
    if isinstance(window, str):
        return {"rerank_window": 0, "rerank_sentences": int(window[1:])}
    return {"rerank_window": window, "rerank_sentences": 0}


def parse_window(text: str) -> int | str:
    return text if text.startswith("s") else int(text)


def score(
    settings: Any,
    cands: dict[str, Any],
    window: int,
    keep: int,
    path: Path,
    order: list[str],
    offline: bool = False,
) -> dict[str, Any]:
    """Cross-encoder probabilities of each query's first ``keep`` candidates (cached, resumable)."""
    from ragserve.rerank.cross_encoder import CrossEncoderReranker

    done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    todo = [q for q in order if q not in done]
    if offline and not done:
        raise SystemExit(f"--offline: nothing cached in {path}; run once without --offline.")
    if not todo or offline:
        return done
    reranker = CrossEncoderReranker.from_settings(settings.replace(**reader_settings(window)))
    reranker.warm_up()
    print(f"  scoring {len(todo)} queries, window {window or 'off'}, form {reranker.form}")
    for i, qid in enumerate(todo, 1):
        c = cands[qid]
        t0 = time.perf_counter()
        probs = reranker.score(c["query"], c["texts"][:keep])
        done[qid] = {"p": [float(x) for x in probs], "ms": (time.perf_counter() - t0) * 1000}
        if i % 25 == 0 or i == len(todo):
            path.write_text(json.dumps(done))
            load = os.getloadavg()[0]
            print(f"  {i}/{len(todo)} (load {load:.1f})", flush=True)
    return done


def reorder(c: dict[str, Any], probs: list[float], n: int, fusion: str, alpha: float) -> list[int]:
    """Candidate positions in final order: the first n re-ranked, the rest as hybrid had them."""
    from ragserve.rerank.cross_encoder import rerank_order

    n = min(n, len(probs), len(c["docs"]))
    if fusion == "hybrid" or n == 0:
        return list(range(len(c["docs"])))
    head = rerank_order(
        np.asarray(probs[:n], dtype=np.float32),
        n,
        fusion=fusion,  # type: ignore[arg-type]
        retrieval_scores=c["scores"][:n],
        alpha=alpha,
    )
    return [i for i, _ in head] + list(range(n, len(c["docs"])))


def doc_run(c: dict[str, Any], order: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rank, i in enumerate(order):
        out.setdefault(c["docs"][i], float(1000 - rank))
    return out


def configs(candidates: list[int], windows: list[int]) -> list[tuple[str, float, int, int]]:
    grid: list[tuple[str, float, int, int]] = [("hybrid", 0.0, 0, 0)]
    for w in windows:
        for n in candidates:
            grid += [("interpolate", a, n, w) for a in ALPHAS]
            grid += [("rrf", 0.0, n, w), ("none", 1.0, n, w)]
    return grid


def evaluate(
    cands: dict[str, Any],
    probs: dict[int, dict[str, Any]],
    qrels: dict[str, dict[str, int]],
    cfg: tuple[str, float, int, int],
) -> dict[str, float]:
    from ragserve.evaluation.retrieval import ranx_metrics

    fusion, alpha, n, w = cfg
    run: dict[str, dict[str, float]] = {}
    first = []
    for qid in qrels:
        c = cands[qid]
        p = probs[w][qid]["p"] if fusion != "hybrid" else []
        order = reorder(c, p, n, fusion, alpha)
        run[qid] = doc_run(c, order)
        first.append(bool(order) and c["docs"][order[0]] in qrels[qid])
    means, _ = ranx_metrics(qrels, run)
    return {"ndcg@10": means["ndcg@10"], "recall@10": means["recall@10"], "first": np.mean(first)}


def label(cfg: tuple[str, float, int, int]) -> str:
    fusion, alpha, n, w = cfg
    if fusion == "hybrid":
        return "hybrid alone"
    a = f" a={alpha:.1f}" if fusion == "interpolate" else ""
    return f"{fusion}{a} N={n} win={w or 'off'}"


def refusal_table(
    cands: dict[str, Any],
    probs: dict[str, Any],
    qrels: dict[str, dict[str, int]],
    cfg: tuple[str, float, int, int],
    settings: Any,
) -> None:
    """How the refusal gate would treat SQuAD questions, gold paragraph indexed (present) and
    approximately removed (absent: the same candidates minus the gold one), hybrid alone (dense
    cosine gate) vs re-ranked (re-rank probability gate), each with the min_support gate."""
    from ragserve.text.support import SentenceSupport

    support = SentenceSupport()
    fusion, alpha, n, _ = cfg
    k, m = settings.retrieval.top_k, settings.generation.support_sources
    rows: dict[str, list[tuple[bool, float, float]]] = {"present": [], "absent": []}
    base: dict[str, list[tuple[bool, bool]]] = {"present": [], "absent": []}
    for qid, gold in qrels.items():
        c = cands[qid]
        p = probs[qid]["p"]
        for case in ("present", "absent"):
            keep = [
                i for i in range(len(c["texts"])) if case == "present" or c["docs"][i] not in gold
            ]
            sub = {
                "docs": [c["docs"][i] for i in keep],
                "scores": [c["scores"][i] for i in keep],
            }
            sp = [p[i] for i in keep if i < len(p)]
            hyb = keep[:k]
            dense = [c["dense"][i] for i in hyb if c["dense"][i] is not None]
            low_sup = (
                support.best(c["query"], [c["plain"][i] for i in hyb[:m]])
                < settings.generation.min_support
            )
            base[case].append(
                (bool(dense) and max(dense) < settings.generation.dense_refusal_threshold, low_sup)
            )
            order = reorder(sub, sp, n, fusion, alpha)[:k]
            top = [keep[i] for i in order]
            best_p = max(sp[i] for i in order if i < len(sp))  # the scored ones
            sup = support.best(c["query"], [c["plain"][i] for i in top[:m]])
            rows[case].append((sup < settings.generation.min_support, best_p, sup))
    print("\nrefusal gate on the SQuAD questions (share refused; absent = gold dropped)")
    for case in ("present", "absent"):
        d = np.array(base[case])
        print(
            f"  {case:7} hybrid: dense<{settings.generation.dense_refusal_threshold} {d[:, 0].mean():.3f}, "
            f"support<{settings.generation.min_support} {d[:, 1].mean():.3f}, either {d.any(axis=1).mean():.3f}"
        )
        sup = np.array([r[0] for r in rows[case]])
        best = np.array([r[1] for r in rows[case]])
        for t in (0.01, 0.02, 0.05, 0.1, 0.2):
            gate = best < t
            print(
                f"  {case:7} rerank p<{t:<4}: {gate.mean():.3f} ({int(gate.sum())}/{len(gate)}), "
                f"support {sup.mean():.3f}, either {(gate | sup).mean():.3f}"
            )


def tune(args: argparse.Namespace, settings: Any) -> None:
    keep = max(args.candidates)
    grid = configs(args.candidates, args.windows)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.sets:
        spec = load_set(name, False, args.squad_questions)
        print(f"{name}: {len(spec['queries'])} queries", flush=True)
        cands = retrieve(settings, spec, keep, args.cache / f"{name}-dev-cands.json")
        order = list(spec["queries"])
        if spec.get("heldout"):
            held = spec["heldout"]
            order = held + [q for q in order if q not in set(held)]
        if args.max_queries:
            order = order[: args.max_queries]
        probs = {
            w: score(
                settings, cands, w, keep, args.cache / f"{name}-dev-w{w}.json", order, args.offline
            )
            for w in args.windows
        }
        subsets = {name: order}
        if spec.get("heldout"):
            subsets = {f"{name}-heldout": spec["heldout"], f"{name}-all": order}
        for sub, qids in subsets.items():
            qids = [q for q in qids if all(q in probs[w] for w in args.windows)]
            if sub.endswith("-all") and set(qids) <= set(spec["heldout"] or ()):
                continue
            qrels = {q: spec["qrels"][q] for q in qids}
            results[f"{sub} ({len(qids)})"] = {
                label(c): evaluate(cands, probs, qrels, c) for c in grid
            }
        ms = [v["ms"] for w in args.windows for v in probs[w].values()]
        print(f"  scoring ms/query p50 {np.percentile(ms, 50):.0f} (loaded machine, niced)")
        if name == "squad" and args.refusal:
            cfg = args.refusal_config
            scored = {q: spec["qrels"][q] for q in order if q in probs[cfg[3]]}
            refusal_table(cands, probs[cfg[3]], scored, cfg, settings)
    print_table(results, grid)
    (args.cache / "dev-table.json").write_text(json.dumps(results, indent=1))


def print_table(results: dict[str, dict[str, dict[str, float]]], grid: list) -> None:
    sets = list(results)
    head = "| config | " + " | ".join(
        f"{s} nDCG@10 | R@10" if not s.startswith("squad") else f"{s} gold-first" for s in sets
    )
    print("\n" + head + " |")
    print("|---|" + "---|" * sum(1 if s.startswith("squad") else 2 for s in sets))
    for cfg in grid:
        cells = []
        for s in sets:
            r = results[s][label(cfg)]
            base = results[s]["hybrid alone"]
            if s.startswith("squad"):
                cells.append(f"{r['first']:.3f}")
            else:
                d = r["ndcg@10"] - base["ndcg@10"]
                cells.append(f"{r['ndcg@10']:.4f} ({d:+.4f}) | {r['recall@10']:.4f}")
        print(f"| {label(cfg)} | " + " | ".join(cells) + " |")


def probe_latency(settings: Any, spec: dict[str, Any], n: int, threads: int = 0) -> None:
    """Stage timings of ``RagPipeline.search`` (the default pipeline's stages 1-3) on the first
    ``n`` queries, with the process CPU time the re-rank stage used: on a loaded machine the
    wall time says more about the neighbours than about the stage, the CPU time does not."""
    import ragserve.rerank.cross_encoder
    from ragserve.pipeline import RagPipeline
    from ragserve.pipeline.timing import StageTimer

    if threads:
        # One intra-op thread: no spin-waiting, so CPU time is the work itself (an idle
        # machine's wall time with both cores is about this over 1.6-1.9).
        ragserve.rerank.cross_encoder.physical_cores = lambda: threads  # type: ignore[attr-defined]
    pipeline = RagPipeline(settings.replace(**{"collection": spec["collection"]}))
    pipeline.warm_up(generation=False)
    reranker = pipeline.reranker
    assert reranker is not None
    cpu: list[float] = []
    inner = reranker.rerank

    def timed(query: str, hits: list, k: int) -> list:
        t0 = time.process_time()
        out = inner(query, hits, k)
        cpu.append((time.process_time() - t0) * 1000)
        return out

    reranker.rerank = timed  # type: ignore[method-assign]
    # What the model itself reads: with best runs a candidate is several (query, run) pairs.
    model_pairs: list[int] = []
    model = reranker.model
    assert model is not None
    logits = model.logits

    def counted(query: str, texts: Any, batch_size: int) -> Any:
        model_pairs.append(len(texts))
        return logits(query, texts, batch_size)

    model.logits = counted  # type: ignore[method-assign]
    wall: dict[str, list[float]] = {"retrieve": [], "rerank": []}
    loads = []
    for text in list(spec["queries"].values())[:n]:
        pipeline.embedder.clear_cache()
        timer = StageTimer()
        pipeline.search(pipeline.process(text), timer)
        for k in wall:
            wall[k].append(timer.timings[k])
        loads.append(os.getloadavg()[0])
    pipeline.close()
    pct = {k: (np.percentile(v, 50), np.percentile(v, 95)) for k, v in wall.items()}
    c = settings.rerank.rerank_candidates
    print(
        f"  pipeline probe ({n} q, {threads or 'default'} threads, load {min(loads):.1f}-{max(loads):.1f}): retrieve p50/p95 "
        f"{pct['retrieve'][0]:.0f}/{pct['retrieve'][1]:.0f} ms; rerank p50/p95 "
        f"{pct['rerank'][0]:.0f}/{pct['rerank'][1]:.0f} ms wall, CPU p50/p95 "
        f"{np.percentile(cpu, 50):.0f}/{np.percentile(cpu, 95):.0f} ms ({c} candidates: "
        f"{c * len(cpu) / (sum(cpu) / 1000):.1f} candidates per CPU-second, "
        f"{c * len(cpu) / (sum(wall['rerank']) / 1000):.1f} candidates/s wall; "
        f"{np.mean(model_pairs):.1f} model pairs per query, "
        f"{sum(model_pairs) / (sum(wall['rerank']) / 1000):.1f} model pairs/s wall)",
        flush=True,
    )


def test(args: argparse.Namespace, settings: Any) -> None:
    """The test splits, once: hybrid vs hybrid+rerank through the eval's own stage runner."""
    from ragserve.evaluation.retrieval import evaluate_retrieval
    from ragserve.runtime.cpu import INT8_FLAGS, cpu_flags

    chosen = settings.replace(
        rerank=True,
        rerank_fusion=args.fusion,
        rerank_alpha=args.alpha,
        rerank_candidates=args.candidates[0],
        **reader_settings(args.windows[0]),
    )
    flags = cpu_flags()
    print(f"CPU: {sorted(flags & (INT8_FLAGS | {'avx2', 'avx512f'}))}")
    print(
        f"config: fusion {args.fusion}, alpha {args.alpha}, N {args.candidates[0]}, "
        f"window {args.windows[0]}"
    )
    for name in args.sets:
        spec = load_set(name, True, 0)
        load0 = os.getloadavg()
        if args.probe:
            probe_latency(chosen, spec, args.probe, args.probe_threads)
        if args.probe_only:
            continue
        if spec["beir"] is not None:
            res = evaluate_retrieval(
                chosen.replace(**{"collection": spec["collection"]}),
                spec["beir"],
                stages=("hybrid", "hybrid+rerank"),
                progress=False,
            )
            lat = res["hybrid+rerank"].latency_ms["rerank"]
            n_pairs = len(lat) * args.candidates[0]
            print(
                f"{name} test ({len(lat)} q): hybrid nDCG@10 {res['hybrid'].metrics['ndcg@10']:.4f} "
                f"R@10 {res['hybrid'].metrics['recall@10']:.4f} | +rerank nDCG@10 "
                f"{res['hybrid+rerank'].metrics['ndcg@10']:.4f} R@10 "
                f"{res['hybrid+rerank'].metrics['recall@10']:.4f} | rerank p50 "
                f"{np.percentile(lat, 50):.0f} ms p95 {np.percentile(lat, 95):.0f} ms, "
                f"{n_pairs / (sum(lat) / 1000):.1f} pairs/s (at most; short candidates) | "
                f"retrieve p50 {np.percentile(res['hybrid'].latency_ms['retrieve'], 50):.0f} ms | "
                f"load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        else:
            keep = args.candidates[0]
            cands = retrieve(chosen, spec, keep, args.cache / "squad-test-cands.json")
            order = list(spec["queries"])
            w = args.windows[0]
            probs = {w: score(chosen, cands, w, keep, args.cache / f"squad-test-w{w}.json", order)}
            cfg = (args.fusion, args.alpha, keep, w)
            r = {c: evaluate(cands, probs, spec["qrels"], c) for c in (("hybrid", 0, 0, 0), cfg)}
            print(
                f"squad answer sample ({len(order)} q): gold-first hybrid "
                f"{r[('hybrid', 0, 0, 0)]['first']:.3f}, +rerank {r[cfg]['first']:.3f} | "
                f"load {load0[0]:.2f}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(".ragserve"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ragserve-tune-rerank"))
    ap.add_argument("--sets", default="scifact,nfcorpus,squad")
    ap.add_argument("--candidates", default="10,20", help="with --test: the one to run")
    ap.add_argument(
        "--windows",
        default="160,0",
        help="tokens per candidate (0: its head) or sN (its best run of N sentences, the "
        "default pipeline's s2); with --test: the one to run",
    )
    ap.add_argument("--squad-questions", type=int, default=300)
    ap.add_argument("--max-queries", type=int, default=0, help="score at most this many per set")
    ap.add_argument(
        "--refusal", default="", help="fusion,alpha,N,window: print the refusal gate's effect"
    )
    ap.add_argument("--offline", action="store_true", help="evaluate only what is cached")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--probe", type=int, default=0, help="--test: time N pipeline searches first")
    ap.add_argument("--probe-only", action="store_true")
    ap.add_argument("--probe-threads", type=int, default=0, help="onnxruntime threads in --probe")
    ap.add_argument("--fusion", default="interpolate")
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()
    args.sets = args.sets.split(",")
    args.candidates = [int(x) for x in args.candidates.split(",")]
    args.windows = [parse_window(x) for x in args.windows.split(",")]
    if args.refusal:
        f, a, n, w = args.refusal.split(",")
        args.refusal_config = (f, float(a), int(n), parse_window(w))
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ragserve.config import load_settings

    settings = load_settings(data_dir=args.data_dir)
    (test if args.test else tune)(args, settings)


if __name__ == "__main__":
    main()
