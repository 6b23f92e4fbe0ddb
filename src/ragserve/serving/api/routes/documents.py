"""Document management (admin key): list, upload and ingest, delete."""

from __future__ import annotations

import re
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, File, UploadFile

from ragserve.errors import DocumentNotFoundError, StoreError
from ragserve.serving.api.errors import is_disk_full, storage_error
from ragserve.serving.api.schemas import DocumentOut
from ragserve.serving.api.state import AdminDep, AppState, PipelineDep, StateDep

__all__ = ["router"]

router = APIRouter(tags=["documents"])

_CHUNK_BYTES = 1 << 20


@router.get("/documents", response_model=list[DocumentOut])
async def list_docs(_: AdminDep, pipeline: PipelineDep) -> list[DocumentOut]:
    """Indexed documents (admin key)."""
    docs = await anyio.to_thread.run_sync(pipeline.index.documents)
    return [DocumentOut.from_record(d) for d in docs]


@router.post("/documents")
async def upload(
    _: AdminDep, _loaded: PipelineDep, state: StateDep, files: list[UploadFile] = File(...)
) -> dict[str, Any]:
    """Upload and ingest one or many files (admin key). Per-file results; a bad file
    never blocks the others."""
    # (_loaded: the ingestor shares the pipeline's embedder, so uploads wait for it too.)
    index_dir = state.settings.index_dir
    try:
        # Every file-system call runs in a worker thread: a slow disk never stalls the event
        # loop, and with it every other client's chat.
        tmp = Path(await anyio.to_thread.run_sync(_staging_dir, index_dir))
        try:
            staged, refused = await _stage(files, tmp, state.settings.api.max_upload_bytes)
            summary = await state.writer.run(_ingest_staged, state, staged)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
    except OSError as exc:
        raise storage_error(exc, index_dir) from exc
    except StoreError as exc:
        if not is_disk_full(exc):
            raise
        raise storage_error(exc, index_dir) from exc
    body = summary.to_dict()
    body["files"] = refused + body["files"]
    body["failed"] += len(refused)
    return body


@router.delete("/documents/{doc_id:path}")
async def delete_doc(
    doc_id: str, _: AdminDep, state: StateDep, pipeline: PipelineDep
) -> dict[str, Any]:
    """Delete a document and its chunks (admin key)."""

    def delete() -> int:
        with state.write_lock:
            return pipeline.index.delete([doc_id])

    if await state.writer.run(delete) == 0:
        raise DocumentNotFoundError(
            f"No document with id '{doc_id}'.", hint="GET /documents lists the ids."
        )
    return {"deleted": doc_id}


async def _stage(
    files: list[UploadFile], tmp: Path, limit: int
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Write each part to ``tmp`` under a safe, unique name; refuse bad names and big files."""
    staged: list[Path] = []
    refused: list[dict[str, Any]] = []
    used: set[str] = set()
    for f in files:
        name = _safe_filename(f.filename or "")
        if name is None:
            refused.append({"path": f.filename, "status": "failed", "error": "invalid file name"})
            continue
        name = _unique(name, used)
        dest = tmp / name
        if not await _copy_within(f, dest, limit):
            await anyio.to_thread.run_sync(partial(dest.unlink, missing_ok=True))
            refused.append(
                {"path": name, "status": "failed", "error": f"over the {limit} byte limit"}
            )
            continue
        staged.append(dest)
    return staged, refused


async def _copy_within(upload: UploadFile, dest: Path, limit: int) -> bool:
    """Copy ``upload`` to ``dest``; False (and stop reading) once it passes ``limit`` bytes.
    The file is opened, written and closed in worker threads (anyio's async file)."""
    size = 0
    async with await anyio.open_file(dest, "wb") as out:
        while block := await upload.read(_CHUNK_BYTES):
            size += len(block)
            if size > limit:
                return False
            await out.write(block)
    return True


def _staging_dir(index_dir: Path) -> str:
    """A fresh directory for one request's parts, beside the index (so the final move into
    ``uploads/`` is a rename on the same file system)."""
    (index_dir / "uploads").mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=".upload-", dir=index_dir)


def _ingest_staged(state: AppState, staged: list[Path]) -> Any:
    """Move the staged files into ``uploads/`` and ingest them, one writer at a time."""
    upload_dir = state.settings.index_dir / "uploads"
    with state.write_lock:
        finals = []
        for src in staged:
            src.replace(upload_dir / src.name)
            finals.append(upload_dir / src.name)
        return state.ingestor.ingest_paths(finals, progress=False)


def _unique(name: str, used: set[str]) -> str:
    """Two parts with one name in a request: keep both, under distinct names."""
    if name in used:
        stem, dot, ext = name.rpartition(".")
        n = sum(1 for u in used if u.startswith(stem or ext)) + 1
        name = f"{stem}-{n}.{ext}" if dot else f"{ext}-{n}"
    used.add(name)
    return name


def _safe_filename(name: str) -> str | None:
    """A base name with no path parts, control characters or leading dots."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    return base[:200] if base else None
