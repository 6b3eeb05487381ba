"""gRPC transport set-up for every program: TLS / mutual TLS, message limits, health, reflection.

One typed settings object per side. Mutual TLS: the server names a client CA and requires a
certificate signed by it (stations trust vehicles' CA, the cloud trusts stations' CA); the
client presents its own certificate and key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpc_health.v1.health import HealthServicer

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class TlsConfigError(ValueError):
    """A TLS file is missing or the combination of files is incomplete."""


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a certificate

    def credentials(self) -> grpc.ServerCredentials:
        cert = _read(self.cert_file, "server certificate")
        key = _read(self.key_file, "server key")
        ca = _read(self.client_ca_file, "client CA")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True)
class ClientTls:
    ca_file: Path | None = None  # None: the system roots
    cert_file: Path | None = None  # both set: present a client certificate (mutual TLS)
    key_file: Path | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsConfigError("client TLS needs both cert_file and key_file, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA"),
            private_key=_read(self.key_file, "client key"),
            certificate_chain=_read(self.cert_file, "client certificate"),
        )


def message_options(max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


def open_channel(
    target: str, tls: ClientTls | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.Channel:
    options = message_options(max_bytes)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return grpc.secure_channel(target, tls.credentials(), options=options)


def bind(server: grpc.Server, address: str, tls: ServerTls | None = None) -> int:
    """Listen on ``address`` ("host:port", port 0 picks a free one); returns the bound port."""
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def add_health_and_reflection(
    server: grpc.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Standard grpc.health.v1 (every service SERVING) and server reflection; returns the
    health servicer: ``enter_graceful_shutdown()`` flips it to NOT_SERVING on SIGTERM."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    names = list(service_names)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *names]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return servicer



def announce_port(port: int) -> None:
    """Write the bound port to $EVFL_READY_FILE (atomically), if set: how launchers (the demo,
    the tests) learn that a server is up and where, without parsing its logs."""
    import os

    ready = os.environ.get("EVFL_READY_FILE")
    if not ready:
        return
    tmp = f"{ready}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, ready)
