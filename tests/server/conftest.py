"""Fixtures: real server subprocesses and protocol clients (see server_harness.py)."""

from __future__ import annotations

import pytest
import zmq

from server_harness import Client, ServerProcess


@pytest.fixture(scope="session")
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def make_server(tmp_path, context):
    """Start servers with extra flags; all are stopped at the end of the test."""
    started = []

    def make(*extra, curve: dict | None = None, **kwargs) -> ServerProcess:
        server = ServerProcess(tmp_path, *extra, **kwargs).start(context, curve)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, context):
    """One server for the tests of a module that do not need a fresh one."""
    server = ServerProcess(tmp_path_factory.mktemp("server")).start(context)
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{server.log()}"


@pytest.fixture
def make_client(context):
    clients = []

    def make(endpoint: str, curve: dict | None = None) -> Client:
        client = Client(context, endpoint, curve)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
