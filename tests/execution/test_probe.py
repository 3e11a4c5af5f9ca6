"""The scheduler probe: worker slots learn that the scheduler ended without connecting to it.

daisy 2.0 declares lost every block it hands to a client whose address an
earlier, closed connection had; a probe that connects leaves such addresses
behind (see ``blockwise/execution/probe.py``). These tests pin that the
polling probe makes no connection at all, and that it still tells a
listening scheduler from one that ended.
"""

from __future__ import annotations

import socket
import sys

import pytest

from blockwise.execution import probe
from blockwise.execution.local import scheduler_gone
from blockwise.execution.slurm import driver_is_listening

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/net/tcp is Linux's"
)


def assert_no_connection(server: socket.socket) -> None:
    """Nothing connected to ``server`` (its accept queue is empty)."""
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()


@linux_only
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["IPv4", "IPv6"])
def test_a_listening_port_is_found_without_a_connection(family: socket.AddressFamily) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        server = socket.create_server((host, 0), family=family)
    except OSError as e:  # a host without IPv6 loopback
        if family == socket.AF_INET6:
            pytest.skip(f"no IPv6 loopback here: {e}")
        raise
    port = server.getsockname()[1]
    assert probe.listening_here(port) is True
    assert probe.scheduler_listening(host, port, 2.0)
    assert not scheduler_gone({"hostname": host, "port": str(port)})
    assert driver_is_listening(host, port)
    assert_no_connection(server)
    server.close()
    assert probe.listening_here(port) is False
    assert not probe.scheduler_listening(host, port, 2.0)
    assert scheduler_gone({"hostname": host, "port": str(port)})
    assert not driver_is_listening(host, port)


@linux_only
def test_a_connected_port_that_does_not_listen_is_not_taken_for_a_scheduler() -> None:
    # the client end of a connection has a local port too: only LISTEN counts
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    port = client.getsockname()[1]
    try:
        assert probe.listening_here(port) is False
    finally:
        for s in (client, accepted, server):
            s.close()


def test_the_one_off_connecting_check_tells_refused_from_accepted() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    assert probe.connection_refused("127.0.0.1", port, 2.0) is False
    server.close()
    assert probe.connection_refused("127.0.0.1", port, 2.0) is True


def test_without_proc_the_probe_connects_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # not Linux: the only way left is a connection (refused = gone)
    monkeypatch.setattr(probe, "_TABLES", ("/nonexistent/tcp",))
    monkeypatch.setattr(probe, "_warned", False)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    assert probe.listening_here(port) is None
    with caplog.at_level("WARNING", logger="blockwise.execution.probe"):
        assert probe.scheduler_listening("127.0.0.1", port, 2.0)
        server.close()
        assert not probe.scheduler_listening("127.0.0.1", port, 2.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "cannot read /nonexistent/tcp" in warnings[0]
    assert f"127.0.0.1:{port}" in warnings[0]
