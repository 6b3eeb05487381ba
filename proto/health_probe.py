"""Ask a server's grpc.health.v1 service whether it is SERVING; exit 0 only if it is.

    python -m proto.health_probe --target 127.0.0.1:50051 [--service evfl.StationService]

For Docker HEALTHCHECK and Kubernetes exec probes: the images ship no grpc_health_probe
binary, and the kubelet's native gRPC probe cannot present a client certificate, so a server
with mutual TLS needs this probe with --ca-file/--cert-file/--key-file.

Exit codes: 0 SERVING, 1 answered but not SERVING (e.g. NOT_SERVING during a graceful
shutdown, or the service name is unknown), 2 no answer (unreachable, deadline, TLS refused).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto.grpc_channel import ClientTls, TlsConfigError, open_channel

SERVING = 0
NOT_SERVING = 1
NO_ANSWER = 2


@dataclass(frozen=True)
class ProbeResult:
    exit_code: int
    detail: str  # one line for the health log: the status name or the RPC error


def probe(
    target: str, service: str = "", timeout_s: float = 3.0, tls: ClientTls | None = None
) -> ProbeResult:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = open_channel(target, tls)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:  # the server answered: no such service
                return ProbeResult(NOT_SERVING, f"service {service!r} unknown")
            return ProbeResult(NO_ANSWER, f"{code.name}: {details}")
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        ok = reply.status == health_pb2.HealthCheckResponse.SERVING
        return ProbeResult(SERVING if ok else NOT_SERVING, name)
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proto.health_probe",
        description="Exit 0 only if the server's grpc.health.v1 service answers SERVING.",
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help="service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds for the RPC")
    parser.add_argument("--tls", action="store_true", help="TLS with the system roots")
    parser.add_argument("--ca-file", type=Path, help="CA that signed the server certificate")
    parser.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--key-file", type=Path, help="client key (mutual TLS)")
    parser.add_argument("--server-name", help="name to check the server certificate against")
    args = parser.parse_args(argv)
    tls = None
    if args.tls or args.ca_file or args.cert_file:
        tls = ClientTls(args.ca_file, args.cert_file, args.key_file, args.server_name)
    try:
        result = probe(args.target, args.service, args.timeout, tls)
    except TlsConfigError as exc:
        result = ProbeResult(NO_ANSWER, str(exc))
    print(f"{args.target} {args.service or '(server)'}: {result.detail}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
