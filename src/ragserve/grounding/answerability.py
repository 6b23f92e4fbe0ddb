"""Answerability: does a retrieved passage actually hold the answer to the question?

Retrieval, the re-ranker and the lexical support gate all measure how *related* a passage is.
When the passage that answers a question is missing, retrieval still finds related ones (other
paragraphs of the same article, other sections of the same manual), and every one of those
signals rates them well. The answerability judge is a cross-encoder trained on exactly that
contrast (``training/train_answerability.py``; see ``resources/answerability/MODEL_CARD.md``):
a question with the paragraph that answers it against the same question with paragraphs of
the same article that do not. Its output is a calibrated probability (a Platt scaling fitted on
held-out articles is folded into the model's head), so one threshold serves every question.

``AnswerabilityJudge.score`` gives one probability per passage; ``judge`` (or
``is_answerable`` on probabilities already computed) decides for the top ``top_n`` passages:
answerable iff the best of them reaches ``ANSWERABLE_THRESHOLD``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragserve.errors import EmptyQueryError
from ragserve.runtime.models import resolve_answerability_model

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "ANSWERABLE_THRESHOLD",
    "DEFAULT_TOP_N",
    "AnswerabilityJudge",
    "Verdict",
    "is_answerable",
]

log = logging.getLogger("ragserve.grounding.answerability")

# Chosen on the held-out training articles (Black_Death, Force, Victoria_and_Albert_Museum;
# never the evaluation articles) with research/calibrate_answerability.py: the highest
# threshold on the best probability over the top 3 retrieved passages that still refuses at
# most 5% of answerable questions (200 questions: refused 0.050 with the gold indexed, 0.36
# with it removed). A deliberately low bar: refuse only when the judge is nearly sure none of
# the passages answers. The model card holds the whole trade-off table; e.g. 0.3 refuses 0.65
# of unanswerable questions and 0.135 of answerable ones.
ANSWERABLE_THRESHOLD = 0.08
DEFAULT_TOP_N = 3

# Bounds on what reaches the tokenizer. The model reads 256 tokens (~1,000 characters of
# English) per pair, so longer text only costs tokenizer time; a client can send megabytes.
MAX_QUESTION_CHARS = 1000
MAX_PASSAGE_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Verdict:
    answerable: bool
    best: float
    """The highest probability among the passages judged."""
    probabilities: list[float]
    """One per passage judged (the first ``top_n`` given), in the order given."""


def is_answerable(
    probabilities: Sequence[float],
    *,
    threshold: float = ANSWERABLE_THRESHOLD,
    top_n: int = DEFAULT_TOP_N,
) -> bool:
    """Answerable iff the best of the first ``top_n`` passages' probabilities reaches
    ``threshold`` (passages in retrieval order; none at all is not answerable)."""
    return max(probabilities[: max(top_n, 0)], default=0.0) >= threshold


def _clean(text: str, limit: int) -> str:
    # Lone surrogates (from bytes decoded with surrogateescape, or broken JSON escapes) make
    # the Rust tokenizer raise; replacing them keeps the rest of the text usable.
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


class AnswerabilityJudge:
    """A cross-encoder whose sigmoid output is P(passage answers question); thread-safe."""

    def __init__(
        self,
        model: str = "builtin",
        *,
        max_length: int = 256,
        batch_size: int = 16,
        threshold: float = ANSWERABLE_THRESHOLD,
        top_n: int = DEFAULT_TOP_N,
    ) -> None:
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.threshold = threshold
        self.top_n = top_n
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        # A Hugging Face fast tokenizer is not safe to call from two threads at once ("Already
        # borrowed"); tokenising is cheap next to the model, so it alone is serialised.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerabilityJudge:
        threshold = settings.generation.answerability_threshold
        return cls(
            settings.generation.answerability_model,
            threshold=threshold,
            top_n=settings.generation.answerability_candidates,
        )

    def warm_up(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = resolve_answerability_model(self.model_name)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            # Shipped in fp16 to halve the download; CPUs run fp32 kernels much faster.
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, local_files_only=True
            ).eval()
            config = json.loads((Path(path) / "config.json").read_text())
            self.max_length = min(self.max_length, int(config.get("max_position_embeddings", 512)))
            self._tokenizer, self._model = tokenizer, model
            log.info("loaded answerability model %s (max length %d)", path, self.max_length)

    def score(self, question: str, passages: Sequence[str]) -> list[float]:
        """P(passage holds the answer to ``question``) for each passage, in the order given."""
        if not question.strip():
            raise EmptyQueryError()
        if not passages:
            return []
        if self._model is None:
            self.warm_up()
        q = _clean(question, MAX_QUESTION_CHARS)
        texts = [_clean(p, MAX_PASSAGE_CHARS) for p in passages]
        # Shortest first, so each batch pads to similar lengths; scores go back in place.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [0.0] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, p in zip(batch, self._probabilities(q, [texts[i] for i in batch]), strict=True):
                out[i] = p
        return out

    def judge(self, question: str, passages: Sequence[str]) -> Verdict:
        """Score the first ``top_n`` passages (retrieval order) and decide."""
        probabilities = self.score(question, list(passages[: self.top_n]))
        return Verdict(
            answerable=is_answerable(probabilities, threshold=self.threshold, top_n=self.top_n),
            best=max(probabilities, default=0.0),
            probabilities=probabilities,
        )

    def _probabilities(self, question: str, texts: list[str]) -> list[float]:
        import torch

        with self._tokenizer_lock:
            # Longest-first truncation trims the passage before the question, and still fits
            # a question that alone is longer than max_length.
            enc = self._tokenizer(
                [question] * len(texts),
                texts,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        with torch.inference_mode():
            logits = self._model(**enc).logits.view(-1)
        return torch.sigmoid(logits).tolist()
