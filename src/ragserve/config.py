"""All configuration in one object, in one group per stage.

``Settings`` holds six groups: ``index``, ``ingest``, ``retrieval``, ``rerank``, ``generation``
and ``api`` (``settings.retrieval.top_k``). Every setting also has a flat name, unique across
the groups, which is its name inside the group (``rerank.enabled`` is ``rerank``): the
``RAGSERVE_*`` environment variables use it (``RAGSERVE_TOP_K``), and so may keyword arguments
(``Settings(top_k=3)``), :meth:`Settings.replace` and ``ragserve.toml`` (``top_k = 3`` as well
as ``[retrieval]`` / ``top_k = 3``). The flat names were the whole interface before the groups
and are what operators and scripts already use, so they stay.

Precedence, lowest first: defaults < ``ragserve.toml`` (in the working directory, or the file
named by ``RAGSERVE_CONFIG``) < ``RAGSERVE_*`` environment variables < keyword arguments.

The TOML file is strict: a key or table that is not a setting is an error naming the closest
one, since a misspelled key silently dropped is a setting the operator believes in and does
not have. So are keyword arguments. The environment is not: other ``RAGSERVE_*`` variables
(``RAGSERVE_CONFIG``, ``RAGSERVE_NO_PROGRESS``) live there too. Values are bounded, so a bad
one fails at start (:func:`load_settings` says which and why in one paragraph) rather than at
first use.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ragserve.errors import ConfigError

__all__ = [
    "ApiSettings",
    "GenerationSettings",
    "IndexSettings",
    "IngestSettings",
    "RerankSettings",
    "RetrievalSettings",
    "Settings",
    "SettingsError",
    "config_path",
    "load_settings",
    "setting_default",
]

ChunkerName = Literal["recursive", "fixed", "sentence", "semantic"]
GeneratorName = Literal["extractive", "llama", "openai"]
StoreName = Literal["chroma", "postgres"]

_MiB = 1024 * 1024
# Token budgets and windows: generous ceilings that still catch a units mistake (bytes, chars).
_MAX_TOKENS = 1_048_576
_ENV_PREFIX = "RAGSERVE_"

log = logging.getLogger("ragserve.config")


class SettingsError(ConfigError):
    """The settings cannot be used: which value, from where, and why."""

    status_code = 400
    code = "invalid_settings"


class _Group(BaseModel):
    # Mutable like the settings object always was (tests adjust one value in place); a
    # misspelled field is an error here too.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class IndexSettings(_Group):
    """Where the index lives."""

    data_dir: Path = Field(Path(".ragserve"), description="Directory of the embedded index.")
    collection: str = Field("default", description="Collection (tenant) name.")
    store: StoreName = "chroma"
    postgres_dsn: SecretStr | None = None
    postgres_read_dsn: SecretStr | None = Field(
        None, description="Optional DSN of a read replica; queries go there, writes to the primary."
    )
    # pgvector's own limits; ef_construction must also be at least 2 x m (checked below).
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int = Field(128, ge=4, le=1000)
    hnsw_ef_search: int = Field(100, ge=1, le=1000)

    @field_validator("collection")
    @classmethod
    def _collection_is_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", value):
            raise ValueError(
                "collection names use letters, digits, '_' and '-' (1-63 chars, starting with "
                "a letter or digit)"
            )
        return value

    # A field validator (hnsw_m is validated first), so the error names this setting.
    @field_validator("hnsw_ef_construction")
    @classmethod
    def _hnsw_build_covers_links(cls, value: int, info: ValidationInfo) -> int:
        m = info.data.get("hnsw_m")
        if m is not None and value < 2 * m:
            raise ValueError(f"hnsw_ef_construction ({value}) must be at least twice hnsw_m ({m})")
        return value


class IngestSettings(_Group):
    """Reading, chunking and embedding documents."""

    chunker: ChunkerName = "recursive"
    chunk_size: int = Field(
        512, ge=16, le=_MAX_TOKENS, description="Tokens; clamped to the embedder's limit."
    )
    chunk_overlap: int = Field(
        51,
        ge=0,
        le=_MAX_TOKENS,
        description="Tokens repeated between chunks; at most half a chunk.",
    )
    semantic_percentile: float = Field(90.0, gt=0, lt=100)
    embedding_model: str = Field(
        "builtin:all-MiniLM-L6-v2",
        description="'builtin:all-MiniLM-L6-v2', 'builtin:all-mpnet-base-v2', a local path or a model name.",
    )
    embedding_batch_size: int = Field(
        16,
        ge=1,
        le=4096,
        description="Texts per model call. 16 encodes as fast as 64 on 2 cores and halves the "
        "peak memory of a large ingest (benchmarks/bench_ingest.py --batch-size).",
    )
    embedding_runtime: Literal["auto", "torch", "onnx-fp32", "onnx-int8", "openvino-bf16"] = Field(
        "auto",
        description="Where the embedder runs. 'auto': OpenVINO in bf16 on CPUs with native bf16 "
        "(AVX-512 BF16/AMX; 1.4x int8's ingest speed), onnxruntime with int8 weights on CPUs with "
        "int8 dot-product instructions (VNNI), onnxruntime fp32 elsewhere, exported once "
        "into the user cache and checked against PyTorch, which is the fallback; an existing "
        "index keeps the runtime it was built with. An explicit runtime must match the index's "
        "(`ragserve reindex` moves an index to the configured runtime).",
    )
    embedding_threads: int | None = Field(
        None, ge=1, le=1024, description="Threads for one embedding call; default: physical cores."
    )
    ingest_batch_chunks: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Chunks embedded and written per step; bounds ingestion memory.",
    )
    ingest_yield_seconds: float = Field(
        0.25,
        ge=0.0,
        le=60.0,
        description="Server: before each small embedding batch, an upload waits up to this "
        "long for answers in flight to finish, so uploads slow chat down less; 0: no waiting. "
        "Longer waits slow uploads under steady chat (1.0 s cost a third of 0.25 s's uploads "
        "in the soak test) for little gain in chat latency.",
    )
    ingest_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Server: added to the nice value of the thread that runs uploads and "
        "deletes (Linux, per thread; at most 19), so chat gets the CPU first; 0: the server's "
        "own priority.",
    )
    max_file_bytes: int = Field(
        100 * _MiB,
        ge=1,
        description="Each file ingested (CLI, library or upload) larger than this is skipped "
        "with an error. Not max_upload_bytes, the size of one upload request.",
    )
    ingest_root: Path | None = Field(
        None, description="If set, only paths under this directory may be ingested."
    )

    # The chunkers cut a longer overlap to half a chunk; an error here, not a silent change.
    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_within_half(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_size")
        if size is not None and value > size // 2:
            raise ValueError(f"chunk_overlap ({value}) must be at most half of chunk_size ({size})")
        return value


class RetrievalSettings(_Group):
    """What is searched (the query processing before it) and how the two searches fuse."""

    # --- query processing ------------------------------------------------------------------
    condense_history: bool = True
    resolve_pronouns: bool = Field(
        True,
        description="In a condensed follow-up, replace 'it', 'they', 'she' ... by the "
        "conversation's subject ('when the timeout expires'), as the re-ranker and the "
        "answerability judge read it.",
    )
    query_expansion: bool = False
    intent_detection: bool = True
    # --- search and fusion -----------------------------------------------------------------
    top_k: int = Field(5, ge=1, le=1000, description="Chunks given to generation.")
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="How dense and sparse results combine: 'convex' (min-max normalised scores, "
        "weighted by fusion_alpha; measured best) or 'rrf' (reciprocal rank fusion).",
    )
    fusion_alpha: float = Field(
        0.55,
        ge=0.0,
        le=1.0,
        description="Weight of the dense side (tuned with dense feedback on SciFact train + "
        "NFCorpus dev).",
    )
    fusion_depth: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Candidates each side fetches (and normalises scores over).",
    )
    overfetch: int = Field(
        2, ge=1, le=100, description="Each side fetches at least overfetch x the fused candidates."
    )
    rrf_k: int = Field(60, ge=1, le=10_000)
    dense_feedback_docs: int = Field(
        2,
        ge=0,
        le=100,
        description="Pseudo-relevance feedback: the query vector moves toward the mean of this "
        "many best fused chunks and dense search runs again (0 turns it off).",
    )
    dense_feedback_weight: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Weight of the feedback centroid against the query vector.",
    )
    bm25_stemming: bool = True
    bm25_stopwords: bool = True


class RerankSettings(_Group):
    """The cross-encoder over the fused candidates (stage 3, on by default)."""

    # Flat name `rerank` (RAGSERVE_RERANK): inside the group the name is taken by the group.
    enabled: bool = Field(
        True,
        description="Cross-encoder re-ranking of the fused candidates (on: with the defaults "
        "below it puts the answering passage first more often and ranks no test set lower "
        "than hybrid retrieval, see resources/reranker/MODEL_CARD.md); any "
        "sentence-transformers CrossEncoder can be named in reranker_model.",
    )
    reranker_model: str = Field("builtin", description="'builtin', a local path or a model name.")
    rerank_candidates: int = Field(
        5,
        ge=1,
        le=1000,
        description="Fused candidates the cross-encoder scores (5: where the answering passage "
        "sits when it is not first, within the stage's 200 ms on 2 cores).",
    )
    rerank_max_length: int = Field(256, ge=16, le=8192)
    rerank_batch_size: int = Field(
        4,
        ge=1,
        le=4096,
        description="Pairs per cross-encoder call. Small: a batch pads to its longest pair, and "
        "the sentence runs of code-heavy chunks vary a lot in length (32 took the stage from "
        "~100 to ~300 ms on the sample corpus's retries question).",
    )
    rerank_fusion: Literal["none", "rrf", "interpolate", "probability"] = Field(
        "probability",
        description="'probability' ranks by rerank_alpha * cross-encoder probability + "
        "(1 - rerank_alpha) * retrieval score (min-max normalised over the candidates), so a "
        "cross-encoder that rates every candidate alike leaves retrieval's order; 'interpolate' "
        "uses the cross-encoder's min-max normalised logit instead; 'rrf' fuses the two "
        "rankings; 'none' orders by the cross-encoder alone.",
    )
    rerank_alpha: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Cross-encoder weight for rerank_fusion 'probability' and 'interpolate'.",
    )
    rerank_runtime: Literal["auto", "torch", "onnx-fp32", "onnx-int8"] = Field(
        "auto",
        description="'auto' runs the cross-encoder on onnxruntime, int8 where the CPU has VNNI "
        "and fp32 elsewhere (exported once into the user cache, checked against the original; "
        "PyTorch if that fails); 'torch' runs the checkpoint on PyTorch.",
    )
    rerank_window: int = Field(
        0,
        ge=0,
        description="Tokens (query + passage) the cross-encoder reads per pair when > 0: each "
        "candidate is cut to the sentences around its best match with the query. 0 reads the "
        "first rerank_max_length tokens. Used only when rerank_sentences is 0.",
    )
    rerank_sentences: int = Field(
        2,
        ge=0,
        le=64,
        description="When > 0, each candidate is scored as runs of this many sentences and "
        "takes its best run's score, so a passage that answers in one place outranks one that "
        "is only about the subject; 0 scores it as one passage (rerank_window).",
    )


class GenerationSettings(_Group):
    """The reader: its context, its model, and the gates that make it refuse."""

    generator: GeneratorName = "llama"
    llm_model_path: str = Field(
        "builtin:qwen2.5-coder-1.5b-instruct",
        description="'builtin:qwen2.5-coder-1.5b-instruct' (default reader), "
        "'builtin:qwen2.5-coder-0.5b-instruct', 'builtin:gemma-3-270m' or a GGUF path.",
    )
    llm_max_waiting: int = Field(
        4, ge=0, le=1000, description="Questions that may wait for the local model; more get 503."
    )
    verify_grounding: bool = Field(
        True,
        description="Refuse an answer whose own words no source holds, and cite the source "
        "that does hold them when the model cited another.",
    )
    min_answer_coverage: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Refuse a generated answer when the source sentence it came from (with "
        "one sentence either side) covers less than this share of the question's terms: an "
        "answer to a different question from an on-topic source. 0 turns the check off. "
        "0.4 is the strictest point that cost at most 0.02 containment on two samples of 100 "
        "SQuAD training-article questions (research/answer_verification.py).",
    )
    show_code: bool = Field(
        True,
        description="Append to a generated how-to answer that shows no code the code block its "
        "cited source introduces right after the sentence the answer paraphrases, quoted as the "
        "source has it (at most 2 blocks of 15 lines).",
    )
    context_style: Literal["auto", "focused", "compact", "full"] = Field(
        "auto",
        description="'focused': the context_sentences best-supported sentences across the best "
        "few sources (with the code a sentence introduces); 'compact': those sources cut to "
        "sentence windows around what the question asks; 'full': whole chunks up to "
        "budget_context. 'auto': compact for the local model (its latency is its prompt), "
        "full for the others.",
    )
    context_budget: int = Field(
        240,
        ge=32,
        le=8000,
        description="context_style 'focused' and 'compact' only: most tokens of source text "
        "in the prompt (the local reader's latency is its prompt). Not budget_context, which is "
        "the 'full' style's share of the window.",
    )
    context_sources: int = Field(
        3, ge=1, le=20, description="Sources a focused or compact context draws from."
    )
    context_pick_floor: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Compact context: a source below the top two may take the last slot for "
        "covering the question best only if its re-rank probability is at least this share "
        "of the best such source's. Relative, as measured (research/pick_floor.py, 300 SQuAD "
        "questions each): at 0.1 the gold paragraph is read as often (training articles "
        "0.897 -> 0.900, held-out 0.947 both) and 14 of 300 picks change; the absolute floor "
        "0.05 changed 103 and lost 3 of 150 held-out answers (2026-12-08). It keeps ssl.md's "
        "expired certificate (0.02) out of the timeout follow-up beside a 0.68 source.",
    )
    context_sentences: int = Field(
        2, ge=1, le=20, description="Sentences (with what they introduce) in a focused context."
    )
    context_grow: int = Field(
        80,
        ge=0,
        le=2000,
        description="Tokens each sentence of a focused context may grow to with its neighbours "
        "(next first); 0 keeps the sentence and what it introduces only.",
    )
    llm_context_window: int = Field(4096, ge=512, le=_MAX_TOKENS)
    llm_prompt_style: Literal["auto", "chat", "completion"] = Field(
        "auto",
        description="'auto' chats with GGUFs that carry a chat template and prompts the rest "
        "(base models such as the shipped Gemma 3 270M) as a completion.",
    )
    llm_completion_sources: int = Field(
        1, ge=1, le=100, description="Sources a completion-style prompt shows (the best first)."
    )
    llm_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="None: the physical cores (llama.cpp slows on hyper-threads).",
    )
    llm_max_tokens: int = Field(
        160, ge=8, le=4096, description="Longest answer the local model may write."
    )
    llm_temperature: float = Field(0.0, ge=0.0, le=2.0)
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "local"
    openai_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    # context_style 'full' only: token budgets of the prompt's parts, set for a 16k window and
    # scaled down together to fit llm_context_window; the context gets at most what is left.
    budget_system: int = Field(500, ge=0, le=_MAX_TOKENS)
    budget_context: int = Field(
        8000,
        ge=1,
        le=_MAX_TOKENS,
        description="context_style 'full' only: most tokens of whole chunks in the prompt, "
        "within what llm_context_window leaves. Not context_budget (focused and compact).",
    )
    budget_query: int = Field(200, ge=1, le=_MAX_TOKENS)
    budget_response: int = Field(2000, ge=1, le=_MAX_TOKENS)
    history_turns: int = Field(
        6,
        ge=0,
        le=1000,
        description="Earlier turns (question and answer) put in the reader's context; older "
        "ones are left out. Not max_history_turns, the most a request may send.",
    )
    history_budget: int = Field(
        200,
        ge=0,
        le=8000,
        description="Most tokens of the conversation's earlier turns the reader sees, apart "
        "from the sources' context_budget; 0 shows none. Long turns are cut to their opening "
        "sentences rather than dropped.",
    )
    clarify: bool = Field(
        True,
        description="Ask back ('Do you mean X or Y?') when a turn names something it never "
        "says which of, and the best sources are about several such things.",
    )
    # --- refusal gates (whether the reader answers at all) ----------------------------------
    refusal_threshold: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="With the re-ranker: minimum best cross-encoder probability to answer; 0 "
        "turns the gate off. 0.1: with the lexical support gate it refuses about as many "
        "answerable questions as the cosine gate does without a re-ranker (0.120-0.127) and more "
        "unanswerable ones (0.573-0.577 against 0.493), on 300 SQuAD training-article questions "
        "(docs/eval/rerank-default). None (Python only) means this default.",
    )
    min_support: float = Field(
        0.32,
        ge=0.0,
        le=1.0,
        description="Refuse (with any generator) when no sentence of the best support_sources "
        "sources covers at least this share of the question's IDF-weighted terms; 0 turns the "
        "check off. 0.32 over 3 sources is the strictest point that refuses at most 5% of "
        "answerable questions on held-out SQuAD training articles "
        "(research/calibrate_answerability.py --compare).",
    )
    support_sources: int = Field(
        3, ge=1, le=50, description="Best sources the lexical support gate reads."
    )
    dense_refusal_threshold: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description="Without a re-ranker: minimum cosine similarity of the best dense hit to "
        "answer (calibrated on held-out SQuAD, research/calibrate_refusal.py).",
    )
    # --- answerability (the reader's refusal signal) ----------------------------------------
    answerability: bool = Field(
        False,
        description="Score whether each of the best sources answers the question with a "
        "cross-encoder trained for that contrast (resources/answerability) and refuse when "
        "none does. Off by default: on held-out SQuAD it refuses no more unanswerable "
        "questions than the lexical support gate at the same cost (see its MODEL_CARD.md).",
    )
    answerability_model: str = Field("builtin", description="'builtin' or a local path.")
    answerability_candidates: int = Field(
        3, ge=1, le=50, description="Best sources judged (the calibration judged 3)."
    )
    answerability_threshold: float = Field(
        0.08,
        ge=0.0,
        le=1.0,
        description="Refuse when the judge's best probability is below this. 0.08: the highest "
        "that refuses at most 5% of answerable held-out SQuAD questions "
        "(research/calibrate_answerability.py). None (Python only) means this default.",
    )

    # --- the gate in a conversation (a turn with history) -----------------------------------
    conversation_gate: bool = Field(
        True,
        description="Judge a turn with history by three signals, any one of which admits it: "
        "the answerability judge on either reading of the turn (the standalone question or the "
        "user's words), the best re-ranker probability, or the lexical support. On MTRAG's "
        "conversations the SQuAD-calibrated gates refused 0.33 of answerable turns before the "
        "reader ran; the lexical support separates answerable from unanswerable turns there at "
        "ROC AUC 0.75, the judge at 0.89 (docs/eval/conversations/gates.md). Loads the judge.",
    )
    conversation_judge_threshold: float = Field(
        0.2, ge=0.0, le=1.0, description="Judge probability that alone admits a turn."
    )
    conversation_rerank_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="Re-ranker probability that alone admits a turn."
    )
    conversation_support_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Lexical support that alone admits a turn."
    )
    conversation_min_support: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Lexical support below which a turn is refused whatever else vouches.",
    )

    # Both thresholds were once None for "the calibrated default"; that still means it.
    @field_validator("refusal_threshold", "answerability_threshold", mode="before")
    @classmethod
    def _none_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return cls.model_fields[info.field_name].default if value is None else value


class ApiSettings(_Group):
    """The HTTP server and its limits (the MCP tools included)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_api_key: SecretStr | None = None
    chat_api_key: SecretStr | None = None
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000", "http://localhost:8000"]
    )
    max_query_chars: int = Field(2000, ge=1, le=1_000_000)
    max_history_turns: int = Field(
        20,
        ge=0,
        le=1000,
        description="A request (HTTP or MCP) with more earlier turns than this is refused "
        "(400). Not history_turns, how many of them the reader sees.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, le=1024 * _MiB)
    max_upload_bytes: int = Field(
        100 * _MiB,
        ge=1024,
        le=64 * 1024 * _MiB,
        description="Largest /documents request body (all its files together; 413 past it). "
        "Each file must also be within max_file_bytes to be ingested.",
    )
    rate_limit_per_minute: int = Field(
        60, ge=0, le=1_000_000, description="Chat requests per client per minute; 0 = no limit."
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where the rate limiter counts: 'memory://' (this process), or a store "
        "every process behind one load balancer shares, such as 'redis://127.0.0.1:6379' "
        "(pip install 'ragserve[redis]').",
    )
    workers: int = Field(2, ge=1, le=256, description="Threads for CPU-bound stages.")
    mcp_enabled: bool = Field(
        False,
        description="Also serve the MCP tools at /mcp (streamable HTTP), behind chat_api_key.",
    )
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Extra Host names /mcp answers on (besides 'host'; loopback names when it "
        "is a loopback address). Needed when binding 0.0.0.0.",
    )


# A setting's flat name is its field name, except for the re-ranker's switch: its flat name
# `rerank` (RAGSERVE_RERANK) is taken by the group inside Settings, so the field is `enabled`.
_RENAMED = {("rerank", "enabled"): "rerank"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    index: IndexSettings = Field(default_factory=IndexSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="before")
    @classmethod
    def _route_flat_names(cls, data: Any) -> Any:
        """``model_validate({"top_k": 3})`` too; the sources below are grouped already."""
        return _grouped(data) if isinstance(data, dict) else data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Every source hands over grouped values, so pydantic-settings' deep merge keeps the
        # precedence per setting: a keyword `top_k` overrides the environment's top_k and
        # nothing else of the retrieval group.
        assert isinstance(init_settings, InitSettingsSource)
        keywords = InitSettingsSource(settings_cls, _grouped(init_settings.init_kwargs))
        toml = InitSettingsSource(settings_cls, _read_toml(config_path()))
        return (keywords, _FlatEnvSource(settings_cls), toml)

    @property
    def index_dir(self) -> Path:
        return self.index.data_dir / self.index.collection

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (flat names or groups) applied and validated.

        ``model_copy(update=...)`` would neither route flat names to their group nor check
        the values.
        """
        updates: dict[str, _Group] = {}
        for group, values in _grouped(changes).items():
            model = _GROUPS[group]
            if isinstance(values, BaseModel):
                updates[group] = model.model_validate(values)
            else:
                updates[group] = model.model_validate(getattr(self, group).model_dump() | values)
        return self.model_copy(update=updates)


_GROUPS: dict[str, type[_Group]] = {
    name: typing.cast("type[_Group]", field.annotation)
    for name, field in Settings.model_fields.items()
}


def _flat_names() -> dict[str, tuple[str, str]]:
    flat: dict[str, tuple[str, str]] = {}
    for group, model in _GROUPS.items():
        for field in model.model_fields:
            name = _RENAMED.get((group, field), field)
            if name in flat:  # the environment could not tell the two apart
                raise TypeError(f"settings {flat[name]} and {(group, field)} share a flat name")
            flat[name] = (group, field)
    return flat


_FLAT = _flat_names()
_FLAT_OF = {where: name for name, where in _FLAT.items()}


def _grouped(data: dict[str, Any], file: Path | None = None) -> dict[str, Any]:
    """``data`` with each flat name moved into its group: keyword arguments, or the settings
    of the ragserve.toml ``file``, which the errors then name. One router for both, so the
    file and the keywords accept the same names; an unknown, misplaced or repeated setting
    is an error naming the closest one."""
    at, table, spell = (f"{file}: ", "[{}]", "[{}] {}") if file else ("", "'{}'", "{}.{}")
    out: dict[str, Any] = {}
    models: dict[str, BaseModel] = {}  # Settings(rerank=RerankSettings(...)) stays a model
    spelled: dict[tuple[str, str], str] = {}  # (group, field) -> how it was given

    def put(group: str, field: str, value: Any, how: str, keep: bool = True) -> None:
        if (group, field) in spelled:
            raise SettingsError(
                f"{at}'{_FLAT_OF[group, field]}' is set twice ({spelled[group, field]} and {how}).",
                hint="Give each setting once.",
            )
        spelled[group, field] = how
        if keep:
            out.setdefault(group, {})[field] = value

    for key, value in data.items():
        if key in _GROUPS and isinstance(value, BaseModel) and not file:
            models[key] = value
            for field in value.model_fields_set:
                put(key, field, None, f"{key}={type(value).__name__}(...)", keep=False)
        elif key in _GROUPS and isinstance(value, dict):
            for name, item in value.items():
                put(key, _in_group(key, name, at, table), item, spell.format(key, name))
        elif key in _FLAT:
            put(*_FLAT[key], value, key)
        else:
            raise _unknown(f"{at}'{key}' is not a ragserve setting", key, [*_FLAT, *_GROUPS])
    for group, model in models.items():  # merged with flat names given beside it
        out[group] = (
            {**model.model_dump(exclude_unset=True), **out[group]} if group in out else model
        )
    return out


def _in_group(group: str, name: str, at: str, table: str) -> str:
    """The field ``name`` is in ``group``: a field's name, or the flat name of one of the
    group's fields (``rerank`` in the rerank group is its field ``enabled``)."""
    if name in _GROUPS[group].model_fields:
        return name
    home, field = _FLAT.get(name, ("", ""))
    if home == group:
        return field
    if home:
        raise SettingsError(
            f"{at}'{name}' is not in {table.format(group)}; it belongs in {table.format(home)}.",
            hint=f"Move it to {table.format(home)}, or give it by its flat name.",
        )
    what = f"{at}'{name}' in {table.format(group)} is not a ragserve setting"
    raise _unknown(what, name, list(_GROUPS[group].model_fields))


def setting_default(name: str) -> Any:
    """The default of the setting with flat name ``name``, for components' constructors, so
    a component built by hand behaves as the configured one does."""
    group, field = _FLAT[name]
    return _GROUPS[group].model_fields[field].get_default(call_default_factory=True)


def _unknown(what: str, key: str, known: list[str]) -> SettingsError:
    close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    return SettingsError(
        f"{what}.{suggestion}",
        hint="The settings and their defaults are the fields of ragserve/config.py.",
    )


class _FlatEnvSource(PydanticBaseSettingsSource):
    """``RAGSERVE_<FLAT NAME>`` (any case) for each setting, grouped."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the environment itself

    def __call__(self) -> dict[str, Any]:
        env = {name.upper(): value for name, value in os.environ.items()}
        out: dict[str, dict[str, Any]] = {}
        for name, (group, field) in _FLAT.items():
            var = f"{_ENV_PREFIX}{name.upper()}"
            if var not in env:
                continue
            value: Any = env[var]
            if _is_structured(_GROUPS[group].model_fields[field].annotation):
                try:  # lists are JSON, as pydantic-settings reads them
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise SettingsError(
                        f"{var} is not JSON: {value!r}.",
                        hint=f'Write a list as JSON, e.g. {var}=\'["a", "b"]\'.',
                    ) from None
            out.setdefault(group, {})[field] = value
        _warn_near_misses(env)
        return out


# RAGSERVE_* variables that other code reads; not settings, and not misspellings of one.
_NOT_SETTINGS = frozenset({"CONFIG", "NO_PROGRESS", "DATASETS"})


def _warn_near_misses(env: dict[str, str]) -> None:
    """The environment stays lenient (other tools' variables live there), but a variable one
    edit away from a setting is most likely that setting misspelled: say so in the log."""
    for var in env:
        name = var.removeprefix(_ENV_PREFIX)
        if name == var or name in _NOT_SETTINGS or name.lower() in _FLAT:
            continue
        close = difflib.get_close_matches(name.lower(), list(_FLAT), n=1, cutoff=0.85)
        if close:
            log.warning(
                "environment variable %s is not a ragserve setting (ignored); did you mean %s%s?",
                var,
                _ENV_PREFIX,
                close[0].upper(),
            )


def _is_structured(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, dict)


def config_path() -> Path:
    return Path(os.environ.get("RAGSERVE_CONFIG", "ragserve.toml"))


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's settings, grouped; a missing default file is none, anything else wrong is
    an error."""
    if not path.is_file():
        if "RAGSERVE_CONFIG" in os.environ:
            raise SettingsError(
                f"RAGSERVE_CONFIG names {path}, which is not a file.",
                hint="Point RAGSERVE_CONFIG at your ragserve.toml, or unset it.",
            )
        return {}
    path = path.absolute()  # a service's working directory is not obvious from its log
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{path} is not valid TOML{_where(exc)}: {_reason(exc)}.",
            hint='Each setting is one line, key = value, e.g. port = 8000 or data_dir = "x".',
        ) from None
    except OSError as exc:
        raise SettingsError(f"Cannot read {path}: {exc.strerror}.") from None
    return _grouped(data, path)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _where(exc: ValueError) -> str:
    match = _TOML_POSITION.search(str(exc))
    return f" at line {match.group(1)}, column {match.group(2)}" if match else ""


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return _TOML_POSITION.sub("", str(exc)).rstrip(".")


def load_settings(**overrides: Any) -> Settings:
    """``Settings(**overrides)`` (``None`` values left out), with every problem as one
    :class:`SettingsError` that names the setting, the bad value, where it was set and the
    sources to fix."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{_describe(e)} ({_source(e['loc'], given)})" for e in exc.errors())
        names = sorted({_flat_name(e["loc"]).upper() for e in exc.errors() if e["loc"]})
        sources = [f"{_ENV_PREFIX}{n}" for n in names] + [str(config_path())]
        raise SettingsError(
            f"Invalid settings: {problems}.",
            hint=f"Fix it where it is set: {', '.join(sources)} or the command's options.",
        ) from None


def _source(loc: tuple[int | str, ...], keywords: dict[str, Any]) -> str:
    """Where the value at ``loc`` came from: the highest-precedence source that sets it."""
    if len(loc) < 2:
        return "keyword arguments"
    group, field = str(loc[0]), str(loc[1])
    flat = _FLAT_OF.get((group, field), field)
    if (group, field) in _set_by(_grouped(keywords)):
        return "keyword argument or command option"
    var = f"{_ENV_PREFIX}{flat.upper()}"
    if any(name.upper() == var for name in os.environ):
        return f"environment variable {var}"
    if (group, field) in _set_by(_read_toml(config_path())):
        return f"in {config_path().absolute()}"
    return "its default; check the settings it depends on"


def _set_by(grouped: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (group, field)
        for group, values in grouped.items()
        for field in (values.model_fields_set if isinstance(values, BaseModel) else values)
    }


def _flat_name(loc: tuple[int | str, ...]) -> str:
    """The flat name of the setting at ``loc`` (``('retrieval', 'top_k')`` -> top_k)."""
    return _FLAT_OF.get((str(loc[0]), str(loc[1])), str(loc[-1])) if len(loc) > 1 else str(loc[0])


def _describe(error: Any) -> str:
    loc = error["loc"]
    name = ".".join(str(p) for p in loc) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    leaf = str(loc[-1]) if loc else ""
    if any(word in leaf for word in ("key", "dsn")) or len(loc) < 2:
        return f"{name}: {message}"  # never echo a secret, nor a whole-group input
    return f"{name} = {error['input']}: {message}"
