"""Issue 24: do sentence-level signals put the gold paragraph first where v7 does not?

Reads the candidates and v7 probabilities that ``tune_rerank_default.py`` cached (hybrid top
10 per query, window 160) and adds two signals per candidate, cached beside them:

* ``sent``: the best cosine between the query and any one sentence of the candidate (the
  configured embedder), since a SQuAD question is usually answered by one sentence;
* ``maxp``: the v7 cross-encoder's best probability over the candidate's 2-sentence windows
  (BERT-MaxP), instead of its one query window.

Each term is min-max normalised per query and added with its weight (``ce`` and ``maxp`` as
logits); the table gives the gold-first rate on SQuAD and nDCG@10 / R@10 on the BEIR dev sets,
and the signals' extra cost per query. Dev sets choose; ``squad-test`` (the answer eval's
300-question sample) is read only to report.

    HF_HUB_OFFLINE=1 .venv/bin/python research/rerank_signals.py --cache /tmp/rerank24/cache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tune_rerank_default import doc_run, load_set

N = 10
SETS = {  # cache prefix -> (load_set name, test split)
    "squad-dev": ("squad", False),
    "squad-test": ("squad", True),
    "scifact-dev": ("scifact", False),
    "nfcorpus-dev": ("nfcorpus", False),
}
FUSIONS: list[dict[str, float]] = [
    {"hyb": 1},
    {"hyb": 1, "ce": 1.5},
    {"hyb": 1, "sent": 0.5},
    {"hyb": 1, "ce": 1.5, "sent": 0.5},
    {"hyb": 1, "ce": 1, "sent": 1},
    {"hyb": 1, "maxp": 1},
    {"hyb": 1, "ce": 1, "maxp": 1},
    {"hyb": 1, "ce": 1, "maxp": 1.5},
    {"hyb": 1, "ce": 1, "maxp": 2},
    {"maxp": 1},
]


def windows(text: str, size: int = 2) -> list[str]:
    """Every run of ``size`` consecutive sentences (stride 1)."""
    from ragserve.text.sentences import split_sentences

    spans = split_sentences(text) or [(0, len(text))]
    last = max(1, len(spans) - size + 1)
    return [text[spans[j][0] : spans[min(j + size, len(spans)) - 1][1]] for j in range(last)]


def signals(cands: dict[str, Any], qids: list[str], path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    from ragserve.config import Settings
    from ragserve.embedding.embedder import SentenceTransformerEmbedder
    from ragserve.rerank.cross_encoder import CrossEncoderReranker

    settings = Settings()
    embedder = SentenceTransformerEmbedder.from_settings(settings)
    reranker = CrossEncoderReranker.from_settings(settings.replace(rerank_window=0))
    out: dict[str, Any] = {}
    for qid in qids:
        c = cands[qid]
        texts = c["texts"][:N]
        pieces = [(i, w) for i, t in enumerate(texts) for w in windows(t, 1)]
        t0 = time.perf_counter()
        sims = embedder.embed([w for _, w in pieces]) @ embedder.embed_query(c["query"])
        t1 = time.perf_counter()
        pairs = [(i, w) for i, t in enumerate(texts) for w in windows(t, 2)]
        probs = reranker.score(c["query"], [w for _, w in pairs])
        t2 = time.perf_counter()
        sent, maxp = np.full(len(texts), -1.0), np.zeros(len(texts))
        for (i, _), s in zip(pieces, sims, strict=True):
            sent[i] = max(sent[i], s)
        for (i, _), p in zip(pairs, probs, strict=True):
            maxp[i] = max(maxp[i], p)
        out[qid] = {
            "sent": sent.tolist(),
            "maxp": maxp.tolist(),
            "ms": [(t1 - t0) * 1000, (t2 - t1) * 1000],
            "pairs": len(pairs),
        }
    path.write_text(json.dumps(out))
    return out


def unit_scale(x: np.ndarray) -> np.ndarray:
    """Min-max normalised as hybrid fusion and the re-ranker's interpolation do it."""
    from ragserve.retrieval.hybrid import min_max

    scaled = min_max([(str(i), float(v)) for i, v in enumerate(x)])
    return np.array([scaled[str(i)] for i in range(len(x))])


def order(
    c: dict[str, Any], ce: list[float], sig: dict[str, Any], w: dict[str, float]
) -> list[int]:
    n = min(N, len(ce), len(c["docs"]))
    from ragserve.rerank.cross_encoder import probability_logits

    terms = {
        "hyb": np.asarray(c["scores"][:n], dtype=float),
        "ce": probability_logits(ce[:n]),
        "sent": np.asarray(sig["sent"][:n]),
        "maxp": probability_logits(sig["maxp"][:n]),
    }
    total = sum(weight * unit_scale(terms[k]) for k, weight in w.items())
    head = [int(i) for i in np.argsort(-np.asarray(total), kind="stable")]
    return head + list(range(n, len(c["docs"])))


def main() -> None:
    from ragserve.evaluation.retrieval import ranx_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="tune_rerank_default.py's --cache")
    ap.add_argument("--sets", default=",".join(SETS), help=f"of {', '.join(SETS)}")
    args = ap.parse_args()
    table: dict[str, dict[str, str]] = {}
    for name in args.sets.split(","):
        dataset, test = SETS[name]
        spec = load_set(dataset, test, 300)
        cands = json.loads((args.cache / f"{name}-cands.json").read_text())
        ce = json.loads((args.cache / f"{name}-w160.json").read_text())
        qids = [q for q in (spec.get("heldout") or spec["qrels"]) if q in ce]
        sig = signals(cands, qids, args.cache / f"{name}-signals.json")
        ms = np.array([sig[q]["ms"] for q in qids])
        print(
            f"{name}: {len(qids)} queries; p50 extra ms: sent {np.median(ms[:, 0]):.0f}, "
            f"maxp {np.median(ms[:, 1]):.0f} ({np.mean([sig[q]['pairs'] for q in qids]):.0f} pairs)"
        )
        qrels = {q: spec["qrels"][q] for q in qids}
        for w in FUSIONS:
            orders = {q: order(cands[q], ce[q]["p"], sig[q], w) for q in qids}
            first = np.mean([cands[q]["docs"][orders[q][0]] in qrels[q] for q in qids])
            if dataset == "squad":
                cell = f"{first:.3f}"
            else:
                means, _ = ranx_metrics(qrels, {q: doc_run(cands[q], orders[q]) for q in qids})
                cell = f"{means['ndcg@10']:.4f} / {means['recall@10']:.4f}"
            table.setdefault(" + ".join(f"{v:g} {k}" for k, v in w.items()), {})[name] = cell
    print()
    print_table("fusion", table, args.sets.split(","))


def print_table(first: str, table: dict[str, dict[str, str]], names: list[str]) -> None:
    """``table[row label][set name]`` as a Markdown table, one column per name."""
    print(f"| {first} | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(row.get(n, "") for n in names) + " |")


if __name__ == "__main__":
    main()
