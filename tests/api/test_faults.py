"""Faults a production service meets: a read-only or full disk under the index, and the LLM
server dying mid-answer. Each must be a clear error while the service stays up and nothing
already indexed is lost. The disks are real tmpfs mounts (the tests run as root in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from ragserve.serving.api.app import create_app

ADMIN = {"Authorization": "Bearer k"}


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = Path(f"/tmp/ragserve-fault-{os.getpid()}-{time.monotonic_ns()}")
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        mnt.rmdir()
        pytest.fail(f"cannot mount a tmpfs for the fault test (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
    mnt.rmdir()


def _app(data_dir: Path, **kw: object) -> TestClient:
    settings = Settings(data_dir=data_dir, admin_api_key="k", rate_limit_per_minute=10_000, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def _upload(client: TestClient, name: str, content: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        "/documents", files=[("files", (name, content, "text/markdown"))], headers=ADMIN
    )


def test_read_only_store_directory(tmp_path: Path) -> None:
    with _app(tmp_path) as c:
        assert (
            _upload(c, "a.md", b"# Alpha\n\nAlpacas graze on the high plateau.\n").json()[
                "ingested"
            ]
            == 1
        )
        index_dir = tmp_path / "default"
        # The directory turns read-only under the running server: a read-only filesystem is
        # mounted over it. (Remounting the index's own filesystem read-only is refused by the
        # kernel while SQLite and Chroma hold files open for writing.)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(index_dir)], check=True
        )
        try:
            r = _upload(c, "b.md", b"# Beta\n\nBeavers build dams.\n")
            assert r.status_code == 503, r.text
            assert "read-only" in r.json()["message"]
            assert c.get("/health").status_code == 200
            r = c.post("/chat", json={"query": "Where do alpacas graze?"})
            assert r.status_code == 200, r.text
            assert any("a.md" in s["source"] for s in r.json()["sources"]), r.text
        finally:
            subprocess.run(["umount", "-l", str(index_dir)], check=True)
        docs = c.get("/documents", headers=ADMIN).json()
        assert [d["id"].rsplit("/", 1)[-1] for d in docs] == ["a.md"], (
            "nothing lost, nothing half-added"
        )


def test_disk_full_keeps_what_was_indexed(small_disk: Path) -> None:
    with _app(small_disk) as c:
        assert (
            _upload(c, "keep.md", b"# Keep\n\nLighthouses guide ships at night.\n").json()[
                "ingested"
            ]
            == 1
        )
        filler = small_disk / "filler.bin"
        with filler.open("wb") as fh:  # leave almost no space
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
            except OSError:
                pass
        big = (
            "# Big\n\n" + "Sentences about many different things fill this page. " * 4000
        ).encode()
        r = _upload(c, "big.md", big)
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "insufficient_storage"
        assert "disk" in r.json()["message"] and "full" in r.json()["message"]
        filler.unlink()
        assert c.get("/health").status_code == 200
        docs = c.get("/documents", headers=ADMIN).json()
        assert any(d["id"].endswith("keep.md") for d in docs)
        answer = c.post("/chat", json={"query": "What guides ships at night?"}).json()
        assert any("keep.md" in s["source"] for s in answer["sources"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_llm_server_killed_mid_stream(tmp_path: Path, sample_corpus: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from ragserve.ingest.pipeline import Ingestor
    from ragserve.runtime.models import resolve_gguf_model
    from ragserve.stores.local import LocalIndex

    settings = Settings(data_dir=tmp_path)
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    Ingestor(settings, index, embedder).ingest_paths([sample_corpus / "httpx"], progress=False)
    index.close()
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(resolve_gguf_model("builtin:gemma-3-270m")),
            "--chat_format",
            "gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with _app(
            tmp_path,
            generator="openai",
            openai_base_url=f"http://127.0.0.1:{port}/v1",
            openai_model="gemma",
            refusal_threshold=0.0,
            budget_response=4000,
        ) as c:
            events: list[str] = []
            with c.stream(
                "POST",
                "/chat",
                json={"query": "Explain in detail how timeouts work in httpx.", "stream": True},
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        events.append(line[6:].strip())
                        if events.count("token") == 2:
                            server.kill()
            assert "token" in events and events[-1] == "error", events
            assert c.get("/health").status_code == 200
            after = c.post("/chat", json={"query": "How do I set a timeout?"})
            assert after.status_code == 503 and after.json()["error"] == "llm_unavailable"
            docs = c.get("/documents", headers=ADMIN).json()
            assert len(docs) == 10
    finally:
        server.kill()
        server.wait()
