"""A one-server config for tests that run the worker in this process (fastterm.worker.Serving
on a uvloop loop): www.example.com on a free loopback port, every path to upstream ``app``."""

from __future__ import annotations

import socket

from fastterm.config.model import Certificate, Config, Limits, Route, Server, Upstream, UpstreamTLS


def one_server_config(tmp_path, leaf, intermediate, backend: tuple[str, int],
                      limits: Limits | None = None, upstream_tls: UpstreamTLS | None = None) -> tuple[Config, int]:
    """The config, and the port it listens on."""
    (tmp_path / "c.crt").write_bytes(leaf.cert_pem + intermediate.cert_pem)
    (tmp_path / "c.key").write_bytes(leaf.key_pem)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config(
        servers=[Server(listen=[f"127.0.0.1:{port}"], server_names=["www.example.com"],
                        certificates=[Certificate(cert=str(tmp_path / "c.crt"), key=str(tmp_path / "c.key"))],
                        routes=[Route(path="/", upstream="app")])],
        upstreams=[Upstream(name="app", servers=["{}:{}".format(*backend)], tls=upstream_tls)],
        limits=limits or Limits())
    return config, port
