"""TLS and mutual TLS on the station's gRPC port, with certificates made for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fog_node.metrics import FogMetrics
from fog_node.service import StationServicer
from fog_node.session_store import SessionStore
from models.served_partition import ServedVersions
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import ClientTls, ServerTls, TlsConfigError, bind, open_channel


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, key, signer, ca=False, sans=()):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(directory: Path, name: str, cert, key=None) -> tuple[Path, Path | None]:
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = None
    if key is not None:
        key_path = directory / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    out = {}
    for ca_name in ("vehicles-ca", "rogue-ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(ca_name, ca_name, ca_key, ca_key, ca=True)
        out[ca_name] = (_write(d, ca_name, ca)[0], ca, ca_key)
    station_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    _, ca, ca_key = out["vehicles-ca"]
    out["station"] = _write(
        d, "station", _cert("station", "vehicles-ca", station_key, ca_key, sans=sans), station_key
    )
    for who, ca_name in (("vehicle", "vehicles-ca"), ("intruder", "rogue-ca")):
        key = ec.generate_private_key(ec.SECP256R1())
        _, _, signing_key = out[ca_name]
        out[who] = _write(d, who, _cert(who, ca_name, key, signing_key), key)
    return out


@pytest.fixture
def station_port(tmp_path, pki):
    store = SessionStore(tmp_path / "s.sqlite3")
    servicer = StationServicer("dd:1", [], store, ServedVersions(), FogMetrics())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    station_pb2_grpc.add_StationServiceServicer_to_server(servicer, server)
    cert, key = pki["station"]
    port = bind(server, "127.0.0.1:0", ServerTls(cert, key, client_ca_file=pki["vehicles-ca"][0]))
    server.start()
    yield port
    server.stop(0)
    store.close()


def _status(port, tls):
    stub = station_pb2_grpc.StationServiceStub(open_channel(f"localhost:{port}", tls))
    return stub.Status(station_pb2.StatusRequest(), timeout=5)


def test_a_vehicle_with_a_certificate_from_the_trusted_ca_is_served(pki, station_port):
    cert, key = pki["vehicle"]
    assert _status(station_port, ClientTls(pki["vehicles-ca"][0], cert, key)).station_id == "dd:1"


@pytest.mark.parametrize("who", ["no certificate", "intruder"])
def test_a_client_without_a_valid_certificate_is_refused(pki, station_port, who):
    tls = ClientTls(pki["vehicles-ca"][0])
    if who == "intruder":
        cert, key = pki["intruder"]
        tls = ClientTls(pki["vehicles-ca"][0], cert, key)
    with pytest.raises(grpc.RpcError) as err:
        _status(station_port, tls)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_refused(station_port):
    with pytest.raises(grpc.RpcError) as err:
        _status(station_port, None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_incomplete_tls_files_are_a_clear_error(tmp_path, pki):
    cert, _ = pki["vehicle"]
    with pytest.raises(TlsConfigError, match="both cert_file and key_file"):
        ClientTls(pki["vehicles-ca"][0], cert, None).credentials()
    with pytest.raises(TlsConfigError, match=r"no-such\.crt"):
        ServerTls(tmp_path / "no-such.crt", tmp_path / "no-such.key").credentials()
