"""The local cluster's servers, as `make cluster-demo` starts them."""

from __future__ import annotations

from pathlib import Path

from loadgen.local_cluster import ValkeyProcess


def test_valkey_starts_in_a_relative_folder_and_logs_there(tmp_path, monkeypatch):
    # make cluster-demo passes data/cluster, relative to the checkout.
    monkeypatch.chdir(tmp_path)
    Path("data/cluster").mkdir(parents=True)
    server = ValkeyProcess(Path("data/cluster"))
    server.start()
    try:
        assert server.answers()
    finally:
        server.stop()
    assert (tmp_path / "data" / "cluster" / "valkey.log").stat().st_size > 0
