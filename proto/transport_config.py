"""Config-file sections for the wires, shared by every program's config object.

Each section is what an operator writes in TOML (or EVFL_*__ environment variables) and
turns into the typed settings the transport module takes. Secrets are SecretStr: they never
show in a repr or a log line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from proto.grpc_channel import ClientTls, ServerTls
from proto.kafka import KafkaSettings
from proto.mqtt import MqttSettings
from proto.signing import KeyRing, Signer, load_keyring, load_signer, signer_from_env


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTlsSection(Section):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a certificate

    def server(self) -> ServerTls:
        return ServerTls(self.cert_file, self.key_file, self.client_ca_file)


class GrpcClientSection(Section):
    target: str = ""  # host:port; empty: not configured
    timeout_s: float = Field(2.0, gt=0)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None  # this program's client certificate for mutual TLS
    key_file: Path | None = None
    server_name: str | None = None

    def client_tls(self) -> ClientTls | None:
        if not (self.tls or self.ca_file or self.cert_file):
            return None
        return ClientTls(self.ca_file, self.cert_file, self.key_file, self.server_name)


class KafkaSection(Section):
    bootstrap_servers: str = ""  # empty: Kafka off
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    # Off for the embedded broker: its producer ids vanish on a restart and an idempotent
    # producer then retries forever.
    enable_idempotence: bool = True
    extra: dict[str, str] = Field(default_factory=dict)  # passed to librdkafka verbatim

    def settings(self, client_id: str, message_max_bytes: int) -> KafkaSettings | None:
        if not self.bootstrap_servers:
            return None
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id,
            security_protocol=self.security_protocol,  # type: ignore[arg-type]
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password.get_secret_value() if self.sasl_password else None,
            ssl_ca_location=self.ssl_ca_location,
            ssl_certificate_location=self.ssl_certificate_location,
            ssl_key_location=self.ssl_key_location,
            message_max_bytes=message_max_bytes,
            enable_idempotence=self.enable_idempotence,
            extra=tuple(sorted(self.extra.items())),
        )


class SigningSection(Section):
    keyring_dir: Path | None = None  # public keys (<id>.pub.pem) trusted to sign what we read
    require_signed: bool = False
    key_file: Path | None = None  # this program's private key for what it sends
    key_env: str | None = None  # or: an environment variable holding the PEM
    key_id: str = ""

    def load(self, default_key_id: str) -> tuple[KeyRing | None, Signer | None]:

        keyring = load_keyring(self.keyring_dir) if self.keyring_dir else None
        signer = None
        if self.key_file:
            signer = load_signer(self.key_file, self.key_id or default_key_id)
        elif self.key_env:
            signer = signer_from_env(self.key_env, self.key_id or default_key_id)
        return keyring, signer


class MqttSection(Section):
    host: str = ""  # empty: MQTT off
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    max_payload_bytes: int = Field(256 * 1024, ge=1024)

    def settings(self, client_id_prefix: str) -> MqttSettings | None:
        if not self.host:
            return None
        return MqttSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            tls=self.tls,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            client_id_prefix=client_id_prefix,
            max_payload_bytes=self.max_payload_bytes,
        )
