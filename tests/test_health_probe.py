"""The container health probe asks a real server's health service, as the programs set it up."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fog_node.main import STATION_SERVICE
from proto import health_probe
from proto.grpc_channel import ServerTls, add_health_and_reflection, bind

ROOT = Path(__file__).parents[1]


def _server(tls: ServerTls | None = None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health = add_health_and_reflection(server, [STATION_SERVICE])
    port = bind(server, "127.0.0.1:0", tls)
    server.start()
    return server, health, port


@pytest.fixture
def station():
    server, health, port = _server()
    yield health, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_serving_server_passes(station):
    _, target = station
    assert health_probe.main(["--target", target]) == health_probe.SERVING
    assert health_probe.main(["--target", target, "--service", STATION_SERVICE]) == 0


def test_an_unknown_service_fails(station):
    _, target = station
    result = health_probe.probe(target, "evfl.v1.NoSuchService")
    assert result.exit_code == health_probe.NOT_SERVING and "unknown" in result.detail


def test_a_server_shutting_down_fails(station):
    health, target = station
    health.enter_graceful_shutdown()  # what the programs do on SIGTERM
    result = health_probe.probe(target, STATION_SERVICE)
    assert (result.exit_code, result.detail) == (health_probe.NOT_SERVING, "NOT_SERVING")


def test_no_server_fails():
    server, _, port = _server()
    server.stop(0).wait()
    result = health_probe.probe(f"127.0.0.1:{port}", timeout_s=1.0)
    assert result.exit_code == health_probe.NO_ANSWER and "UNAVAILABLE" in result.detail


def test_runs_as_a_module_like_the_image_healthcheck(station):
    _, target = station
    cmd = [sys.executable, "-m", "proto.health_probe", "--target", target]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "SERVING" in ok.stderr
    bad = subprocess.run(
        [*cmd, "--service", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1


def _cert(cn, issuer, key, signer, ca=False, sans=()):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert, key) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


def test_mutual_tls_needs_the_client_certificate(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_crt, _ = _write(tmp_path / "ca", _cert("ca", "ca", ca_key, ca_key, ca=True), ca_key)
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_key = ec.generate_private_key(ec.SECP256R1())
    probe_key = ec.generate_private_key(ec.SECP256R1())
    srv_crt, srv_key = _write(
        tmp_path / "server", _cert("server", "ca", server_key, ca_key, sans=sans), server_key
    )
    probe_cert = _cert("probe", "ca", probe_key, ca_key)
    cli_crt, cli_key = _write(tmp_path / "probe", probe_cert, probe_key)
    server, _, port = _server(ServerTls(srv_crt, srv_key, client_ca_file=ca_crt))
    target = f"127.0.0.1:{port}"
    try:
        with_cert = ["--ca-file", str(ca_crt), "--cert-file", str(cli_crt)]
        assert health_probe.main(["--target", target, *with_cert, "--key-file", str(cli_key)]) == 0
        assert health_probe.main(["--target", target, "--ca-file", str(ca_crt)]) == 2
        assert health_probe.main(["--target", target]) == 2  # plaintext to a TLS port
        assert health_probe.main(["--target", target, *with_cert]) == 2  # no key: a clear error
    finally:
        server.stop(0)
