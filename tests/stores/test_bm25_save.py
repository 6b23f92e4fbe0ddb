"""Two processes saving one collection's BM25 index at once: a CLI ingest beside a running
server. Each writes through a temporary directory of its own and swaps it in under the index's
file lock, so neither removes the other's files (issue 35, bug 5)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ragserve.stores.bm25 import BM25Index

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ragserve.stores.bm25 import BM25Index

    directory, offset, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ids = [f"c{i}" for i in range(200)]
    (directory.parent / f"ready-{offset}").touch()
    while len(list(directory.parent.glob("ready-*"))) < 2:  # start together
        time.sleep(0.005)
    for i in range(rounds):
        texts = [f"zebra {i} crosses the savanna number {n}" for n in range(200)]
        index = BM25Index()
        index.save(directory, index.prepare(ids, texts, 2 * i + offset))
    """
)


def test_two_processes_saving_bm25_at_once_never_remove_each_others_files(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "bm25"
    rounds = 10
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(directory), str(offset), str(rounds)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for offset in (1, 2)
    ]
    errors = [w.communicate(timeout=180)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], "\n".join(errors)
    assert BM25Index().load(directory, 2 * (rounds - 1) + 2), "the newest save is on disk"
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ready-"))
    assert left == ["bm25", "bm25.lock"], left
