"""All configuration in one object.

Precedence, lowest first: defaults < ``ragserve.toml`` (in the working directory, or the file
named by ``RAGSERVE_CONFIG``) < ``RAGSERVE_*`` environment variables < keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings"]

ChunkerName = Literal["recursive", "fixed", "sentence", "semantic"]
GeneratorName = Literal["extractive", "llama", "openai"]
StoreName = Literal["chroma", "postgres"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_",
        extra="ignore",
        validate_default=True,
    )

    # --- where the index lives -------------------------------------------------------------
    data_dir: Path = Field(Path(".ragserve"), description="Directory of the embedded index.")
    collection: str = Field("default", description="Collection (tenant) name.")
    store: StoreName = "chroma"
    postgres_dsn: SecretStr | None = None
    postgres_read_dsn: SecretStr | None = Field(
        None, description="Optional DSN of a read replica; queries go there, writes to the primary."
    )
    hnsw_m: int = 16
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 100

    # --- ingestion -------------------------------------------------------------------------
    chunker: ChunkerName = "recursive"
    chunk_size: int = Field(512, ge=16, description="Tokens; clamped to the embedder's limit.")
    chunk_overlap: int = Field(51, ge=0)
    semantic_percentile: float = Field(90.0, gt=0, lt=100)
    embedding_model: str = Field(
        "builtin:all-MiniLM-L6-v2",
        description="'builtin:all-MiniLM-L6-v2', 'builtin:all-mpnet-base-v2', a local path or a model name.",
    )
    embedding_batch_size: int = Field(64, ge=1)
    embedding_runtime: Literal["auto", "torch", "onnx-fp32", "onnx-int8"] = Field(
        "auto",
        description="Where the embedder runs. 'auto': onnxruntime with int8 weights on CPUs with "
        "int8 dot-product instructions (VNNI/AMX), onnxruntime fp32 elsewhere; the export is "
        "made once into the user cache and checked against PyTorch, which is the fallback. "
        "The index records the runtime: changing it needs `ragserve reindex`.",
    )
    embedding_threads: int | None = Field(
        None, ge=1, description="Threads for one embedding call; default: physical cores."
    )
    ingest_batch_chunks: int = Field(
        512, ge=1, description="Chunks embedded and written per step; bounds ingestion memory."
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024, description="Files larger than this are refused."
    )
    ingest_root: Path | None = Field(
        None, description="If set, only paths under this directory may be ingested."
    )

    # --- query processing ------------------------------------------------------------------
    condense_history: bool = True
    query_expansion: bool = False
    intent_detection: bool = True

    # --- retrieval -------------------------------------------------------------------------
    top_k: int = Field(5, ge=1, description="Chunks given to generation.")
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
        100, ge=1, description="Candidates each side fetches (and normalises scores over)."
    )
    overfetch: int = Field(
        2, ge=1, description="Each side fetches at least overfetch x the fused candidates."
    )
    rrf_k: int = Field(60, ge=1)
    dense_feedback_docs: int = Field(
        2,
        ge=0,
        description="Pseudo-relevance feedback: the query vector moves toward the mean of this "
        "many best fused chunks and dense search runs again (0 turns it off).",
    )
    dense_feedback_weight: float = Field(
        1.0, ge=0.0, description="Weight of the feedback centroid against the query vector."
    )
    bm25_stemming: bool = True
    bm25_stopwords: bool = True

    # --- re-ranking ------------------------------------------------------------------------
    rerank: bool = Field(
        False,
        description="Cross-encoder re-ranking of the fused candidates. Off by default until the "
        "built-in model beats hybrid retrieval (see resources/reranker/MODEL_CARD.md); any "
        "sentence-transformers CrossEncoder can be named in reranker_model.",
    )
    reranker_model: str = Field("builtin", description="'builtin', a local path or a model name.")
    rerank_candidates: int = Field(
        20, ge=1, description="Fused candidates the cross-encoder scores."
    )
    rerank_max_length: int = Field(256, ge=16)
    rerank_batch_size: int = Field(32, ge=1)
    rerank_fusion: Literal["none", "rrf", "interpolate"] = Field(
        "interpolate",
        description="'interpolate' ranks by rerank_alpha * cross-encoder logit + "
        "(1 - rerank_alpha) * retrieval score, min-max normalised over the candidates; 'rrf' "
        "fuses the two rankings; 'none' orders by the cross-encoder alone.",
    )
    rerank_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Cross-encoder weight for rerank_fusion='interpolate'."
    )

    # --- context and generation ------------------------------------------------------------
    generator: GeneratorName = "extractive"
    llm_model_path: str = Field(
        "builtin:gemma-3-270m", description="GGUF path or 'builtin:gemma-3-270m'."
    )
    llm_context_window: int = Field(16384, ge=512)
    llm_prompt_style: Literal["auto", "chat", "completion"] = Field(
        "auto",
        description="'auto' chats with GGUFs that carry a chat template and prompts the rest "
        "(base models such as the shipped Gemma 3 270M) as a completion.",
    )
    llm_completion_sources: int = Field(
        1, ge=1, description="Sources a completion-style prompt shows (the best first)."
    )
    llm_threads: int | None = None
    llm_temperature: float = 0.0
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "local"
    openai_api_key: SecretStr | None = None
    llm_timeout_s: float = 60.0
    budget_system: int = 500
    budget_context: int = 8000
    budget_query: int = 200
    budget_response: int = 2000
    history_turns: int = Field(6, ge=0)
    refusal_threshold: float | None = Field(
        None, description="Minimum best re-rank score to answer; None uses the calibrated default."
    )
    min_support: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Refuse (with any generator) when no source sentence covers at least this "
        "share of the question's IDF-weighted terms; 0 turns the check off (calibrated on "
        "held-out SQuAD, benchmarks/calibrate_refusal.py).",
    )
    dense_refusal_threshold: float = Field(
        0.3,
        description="Without a re-ranker: minimum cosine similarity of the best dense hit to "
        "answer (calibrated on held-out SQuAD, benchmarks/calibrate_refusal.py).",
    )

    # --- API -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    admin_api_key: SecretStr | None = None
    chat_api_key: SecretStr | None = None
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000", "http://localhost:8000"]
    )
    max_query_chars: int = 2000
    max_history_turns: int = 20
    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 100 * 1024 * 1024
    rate_limit_per_minute: int = 60
    workers: int = Field(2, ge=1, description="Threads for CPU-bound stages.")
    sample_corpus: Path | None = None

    @field_validator("collection")
    @classmethod
    def _collection_is_safe(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", value):
            raise ValueError(
                "collection names use letters, digits, '_' and '-' (1-63 chars, starting with a letter or digit)"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("RAGSERVE_CONFIG", "ragserve.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return (init_settings, env_settings, toml, file_secret_settings)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / self.collection
