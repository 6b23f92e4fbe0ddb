"""Re-ranker figures: nDCG@10 of BM25 top-100 alone vs re-ranked by the shipped model (alone,
RRF-fused with the BM25 order, and interpolated with the BM25 scores), on SciFact test and
NFCorpus test; throughput in pairs/s at max length 256 and 512; latency of
re-ranking 20 candidates.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_rerank.py [--datasets scifact,nfcorpus]

``--forms`` instead compares the forms the model can run in (PyTorch fp32 / fp16, ONNX fp32 /
int8), each reading the first 256 tokens or a ~128-token query-focused window, on BM25 top-20
candidates of SciFact train and NFCorpus dev queries: pairs/s, 20-candidate latency p50 / p95
and agreement (Spearman per query) with PyTorch fp32 at 256. Variants take turns query by
query in one process, so load from other processes falls on all alike; ``--quality N`` adds
nDCG@10 of BM25 top-20 re-ranked (CE alone) on the first N SciFact train queries.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_rerank.py --forms [--queries 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from ranx import Qrels, Run, evaluate
from tqdm import tqdm

from ragserve.config import Settings
from ragserve.rerank.cross_encoder import CrossEncoderReranker, rerank_order
from ragserve.rerank.onnx_export import RerankRuntime

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load(
    name: str, split: str = "test"
) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    folder = DATASETS / name
    corpus = [json.loads(x) for x in (folder / "corpus.jsonl").open()]
    queries = {
        json.loads(x)["_id"]: json.loads(x)["text"] for x in (folder / "queries.jsonl").open()
    }
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / f"{split}.tsv").open():
        q, d, s = line.rstrip("\r\n").split("\t")
        if q != "query-id" and int(s) > 0:
            qrels.setdefault(q, {})[d] = int(s)
    return corpus, queries, qrels


def passage(d: dict) -> str:
    return f"{d['title']}\n{d['text']}" if d.get("title") else d["text"]


FORMS = ("torch-fp32", "torch-fp16", "onnx-fp32", "onnx-int8")
WINDOWS = (0, 128)  # 0: the first 256 tokens


def bm25_top(name: str, split: str, n: int, depth: int = 20) -> list[tuple[str, list[str]]]:
    """(query, its BM25 top-``depth`` passages) for the first ``n`` judged queries."""
    corpus, queries, qrels = load(name, split)
    texts = [passage(d) for d in corpus]
    stemmer = Stemmer.Stemmer("english")
    bm25 = bm25s.BM25()
    bm25.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    qids = sorted(qrels)[:n]
    tokens = bm25s.tokenize(
        [queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False
    )
    docs, _ = bm25.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
    return [(queries[q], [texts[int(c)] for c in docs[i]]) for i, q in enumerate(qids)]


def _runtime(form: str) -> RerankRuntime:
    return "torch" if form == "torch-fp32" else form  # type: ignore[return-value]


def compare_forms(cases: list[tuple[str, list[str]]], forms: tuple[str, ...]) -> None:
    from scipy.stats import spearmanr

    from ragserve.runtime.cpu import cpu_flags

    variants = {
        (f, w): CrossEncoderReranker(runtime=_runtime(f), max_length=256, window=w, batch_size=32)
        for f in forms
        for w in WINDOWS
    }
    for r in variants.values():
        r.warm_up()
        r.score("warm up", cases[0][1][:4])
    lat: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    rho: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    for query, texts in tqdm(cases, desc="forms", unit="query"):
        ref = None
        for v, r in variants.items():  # take turns: load spikes hit every variant alike
            t0 = time.perf_counter()
            s = r.score(query, texts)
            lat[v].append((time.perf_counter() - t0) * 1000)
            ref = s if v == ("torch-fp32", 0) else ref
            rho[v].append(float(spearmanr(ref, s).statistic) if ref is not None else 1.0)
    flags = cpu_flags()
    print(f"CPU: {sorted(flags & {'avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'amx_int8'})}")
    print(f"{len(cases)} queries x {len(cases[0][1])} candidates, variants interleaved")
    print("| form | input | pairs/s | p50 ms | p95 ms | Spearman vs torch-fp32@256 |")
    print("|---|---|---|---|---|---|")
    pairs = sum(len(t) for _, t in cases)
    for (f, w), ms in lat.items():
        label = variants[(f, w)].form
        print(
            f"| {label} | {'window ' + str(w) if w else 'first 256'} | "
            f"{pairs / (sum(ms) / 1000):.1f} | {np.percentile(ms, 50):.0f} | "
            f"{np.percentile(ms, 95):.0f} | {np.mean(rho[(f, w)]):.3f} |"
        )


def quality(n: int, forms: tuple[str, ...], dataset: str = "scifact:train") -> None:
    """nDCG@10 on a dev/train split: BM25 top-20 alone, and re-ranked by each form (CE alone)."""
    name, _, split = dataset.partition(":")
    corpus, _, qrels = load(name, split)
    ids = {passage(d): d["_id"] for d in corpus}
    qids = sorted(qrels)[:n]
    cases = bm25_top(name, split, n)
    qrels = {q: qrels[q] for q in qids}
    runs: dict[str, dict] = {"bm25 top-20": {}}
    for q, (_, texts) in zip(qids, cases, strict=True):
        runs["bm25 top-20"][q] = {ids[t]: 20.0 - i for i, t in enumerate(texts)}
    for variant in forms:
        f, _, w_text = variant.partition(":")
        for w in [int(w_text)] if w_text else WINDOWS:
            r = CrossEncoderReranker(runtime=_runtime(f), max_length=256, window=w)
            run = {}
            for q, (query, texts) in zip(qids, cases, strict=True):
                run[q] = {
                    ids[t]: float(s) for t, s in zip(texts, r.score(query, texts), strict=True)
                }
            runs[f"{f} {'window ' + str(w) if w else 'first 256'}"] = run
    print(f"nDCG@10, {name} {split}, first {n} queries, BM25 top-20 re-ranked by the CE alone")
    for name, run in runs.items():
        print(f"  {name:28} {evaluate(Qrels(qrels), Run(run), 'ndcg@10'):.4f}")


def ort_sweep(cases: list[tuple[str, list[str]]]) -> None:
    """onnxruntime session settings for the auto form, each at 256 tokens, taking turns."""
    import onnxruntime as ort

    from ragserve.rerank.cross_encoder import session_options

    levels = ort.GraphOptimizationLevel
    settings = {
        "ALL, spin, batch 32": (levels.ORT_ENABLE_ALL, "1", 32),
        "EXTENDED, spin, batch 32": (levels.ORT_ENABLE_EXTENDED, "1", 32),
        "BASIC, spin, batch 32": (levels.ORT_ENABLE_BASIC, "1", 32),
        "ALL, no spin, batch 32": (levels.ORT_ENABLE_ALL, "0", 32),
        "ALL, spin, batch 8": (levels.ORT_ENABLE_ALL, "1", 8),
    }
    runners = {}
    for name, (level, spin, batch) in settings.items():
        r = CrossEncoderReranker(max_length=256, batch_size=batch)
        r.warm_up()
        model = r.model
        options = session_options()
        options.graph_optimization_level = level
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        model.session = ort.InferenceSession(  # type: ignore[union-attr]
            str(model.model_file),
            options,
            providers=["CPUExecutionProvider"],  # type: ignore[union-attr]
        )
        r.score("warm up", cases[0][1][:4])
        runners[name] = r
    lat: dict[str, list[float]] = {n: [] for n in runners}
    for query, texts in tqdm(cases, desc="ort settings", unit="query"):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.score(query, texts)
            lat[name].append((time.perf_counter() - t0) * 1000)
    print(f"{next(iter(runners.values())).form}, {len(cases)} queries x 20, interleaved")
    for name, ms in lat.items():
        print(f"  {name:26} p50 {np.percentile(ms, 50):6.0f} ms  mean {np.mean(ms):6.0f} ms")


def forms_main(args: argparse.Namespace) -> None:
    forms = tuple(args.form_list.split(","))
    if args.ort_sweep:
        ort_sweep(bm25_top("scifact", "train", args.queries))
        return
    if args.queries:
        cases = bm25_top("scifact", "train", args.queries)
        compare_forms(cases + bm25_top("nfcorpus", "dev", args.queries), forms)
    if args.quality:
        quality(args.quality, tuple(args.quality_forms.split(",")), args.quality_dataset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--model", default="builtin", help="'builtin' or a CrossEncoder path")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--split", default="test", help="qrels split (dev/train to check a model)")
    ap.add_argument("--depth", type=int, default=100, help="BM25 candidates re-ranked")
    ap.add_argument("--max-queries", type=int, default=0, help="first N queries only (0 = all)")
    ap.add_argument(
        "--alpha",
        type=float,
        default=Settings().rerank.rerank_alpha,
        help="cross-encoder weight of the interpolation (default: the pipeline's)",
    )
    ap.add_argument("--save-scores", type=Path, default=None, help="write per-query scores (JSON)")
    ap.add_argument("--forms", action="store_true", help="compare runtimes and input lengths")
    ap.add_argument("--form-list", default=",".join(FORMS))
    ap.add_argument(
        "--queries", type=int, default=10, help="--forms: queries per dataset (0: quality only)"
    )
    ap.add_argument("--quality", type=int, default=0, help="--forms: nDCG@10 on N queries")
    ap.add_argument("--quality-dataset", default="scifact:train", help="name:split (not test)")
    ap.add_argument("--ort-sweep", action="store_true", help="--forms: onnxruntime settings")
    ap.add_argument(
        "--quality-forms",
        default="torch-fp32:0,onnx-int8:0,onnx-int8:128",
        help="form[:window] (no window: both 256 and 128)",
    )
    args = ap.parse_args()
    if args.forms:
        forms_main(args)
        return
    reranker = CrossEncoderReranker(args.model, max_length=args.max_length, batch_size=32)
    reranker.warm_up()
    stemmer = Stemmer.Stemmer("english")
    print(
        f"{'dataset':10} {'BM25 nDCG@10':>13} {'BM25+CE nDCG@10':>16} {'RRF(BM25,CE)':>13} "
        f"{f'interp a={args.alpha:g}':>14} {'queries':>8} {'time s':>7}"
    )
    saved: dict[str, dict] = {}
    for name in filter(None, args.datasets.split(",")):  # --datasets "" = throughput only
        corpus, queries, qrels = load(name, args.split)
        texts = [passage(d) for d in corpus]
        ids = [d["_id"] for d in corpus]
        bm25 = bm25s.BM25()
        bm25.index(
            bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
            show_progress=False,
        )
        qids = sorted(qrels)[: args.max_queries or None]
        qrels = {q: qrels[q] for q in qids}
        tokens = bm25s.tokenize(
            [queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False
        )
        docs, scores = bm25.retrieve(tokens, k=args.depth, show_progress=False, n_threads=2)
        run_bm25, run_ce, run_fused, run_interp = {}, {}, {}, {}
        per_query: dict[str, dict] = {}
        t0 = time.time()
        for i, q in enumerate(tqdm(qids, desc=f"re-ranking {name}", unit="query")):
            cand = [int(x) for x in docs[i]]
            run_bm25[q] = {ids[c]: float(s) for c, s in zip(cand, scores[i], strict=True)}
            ce = reranker.score(queries[q], [texts[c] for c in cand])
            run_ce[q] = {ids[c]: float(s) for c, s in zip(cand, ce, strict=True)}
            # the fusion `RAGSERVE_RERANK_FUSION=rrf` applies in the pipeline
            fused = rerank_order(ce, len(cand), fusion="rrf")
            run_fused[q] = {ids[cand[j]]: s for j, s in fused}
            interp = rerank_order(
                ce, len(cand), fusion="interpolate", retrieval_scores=scores[i], alpha=args.alpha
            )
            run_interp[q] = {ids[cand[j]]: s for j, s in interp}
            per_query[q] = {
                "docs": [ids[c] for c in cand],
                "bm25": [float(x) for x in scores[i]],
                "ce": [float(x) for x in ce],
            }
        elapsed = time.time() - t0
        a = evaluate(Qrels(qrels), Run(run_bm25), "ndcg@10")
        b = evaluate(Qrels(qrels), Run(run_ce), "ndcg@10")
        c = evaluate(Qrels(qrels), Run(run_fused), "ndcg@10")
        d = evaluate(Qrels(qrels), Run(run_interp), "ndcg@10")
        print(f"{name:10} {a:13.4f} {b:16.4f} {c:13.4f} {d:14.4f} {len(qids):8d} {elapsed:7.0f}")
        saved[name] = {"split": args.split, "model": args.model, "queries": per_query}
    if args.save_scores:
        args.save_scores.write_text(json.dumps(saved))
    if args.skip_throughput:
        return

    corpus, queries, _ = load("scifact")
    texts = [passage(d) for d in corpus[:256]]
    for max_length in (256, 512):
        r = CrossEncoderReranker(args.model, max_length=max_length, batch_size=32)
        r.warm_up()
        r.score("warm up", texts[:8])
        t0 = time.perf_counter()
        r.score("What causes antibiotic resistance in bacteria?", texts)
        rate = len(texts) / (time.perf_counter() - t0)
        print(f"throughput at max length {max_length}: {rate:.1f} pairs/s")
    lat = []
    for i in range(15):
        t0 = time.perf_counter()
        reranker.score(f"query {i} about cancer treatment outcomes", texts[i * 10 : i * 10 + 20])
        lat.append((time.perf_counter() - t0) * 1000)
    print(
        f"re-rank 20 candidates (max length {args.max_length}): p50 {statistics.median(lat):.0f} ms, "
        f"p95 {float(np.percentile(lat, 95)):.0f} ms"
    )


if __name__ == "__main__":
    main()
