"""Secrets never reach a log line, a repr or a str: SASL and MQTT passwords, signing keys.

The password goes in the way an operator puts it in (an EVFL_FOG_* environment variable), is
carried through the station's config into the Kafka settings its transport uses, and every
printable form of each object on the way, and everything logged while a publisher fails to
reach a broker with it, must hold the mask, not the secret.
"""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto.kafka import KafkaSettings, KafkaTransportError, Publisher
from proto.mqtt import MqttSettings
from proto.signing import Signer
from proto.transport_config import KafkaSection, MqttSection

SASL = "s3cr3t-SASL-pa55word"
MQTT = "mqtt-pa55word-xyz"


def _printable(obj) -> list[str]:
    return [repr(obj), str(obj), f"{obj}", f"{obj!r}", "%s" % (obj,)]  # noqa: UP031


def test_the_stations_sasl_password_from_the_environment_is_masked_everywhere(
    monkeypatch, tmp_path, caplog
) -> None:
    from fog_node.config import load_config

    monkeypatch.setenv("EVFL_FOG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("EVFL_FOG_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("EVFL_FOG_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("EVFL_FOG_KAFKA__SASL_USERNAME", "station-7")
    monkeypatch.setenv("EVFL_FOG_KAFKA__SASL_PASSWORD", SASL)
    config = load_config(None, station_id="dd:7", state_dir=tmp_path)
    settings = config.kafka.settings("evfl-fog-dd7", 1 << 20)
    assert settings is not None and settings.sasl_password == SASL  # it does get through
    assert settings.producer_config()["sasl.password"] == SASL  # to librdkafka, and only there
    for obj in (config, config.kafka, settings):
        for text in _printable(obj):
            assert SASL not in text, text
    assert SASL not in config.model_dump_json()

    caplog.set_level(logging.DEBUG)
    logging.getLogger("evfl.test").info("starting with %s / %r", settings, config)
    dead = KafkaSettings(**{**settings.__dict__, "request_timeout_ms": 500})
    publisher = Publisher(dead)
    try:
        with pytest.raises(KafkaTransportError):
            publisher.publish("evfl.secret-test.updates", b"x", timeout=1.0)
    finally:
        publisher.close(timeout=0.2)  # logs the undelivered record, which must not leak either
    assert caplog.records, "something was logged"
    for record in caplog.records:
        assert SASL not in record.getMessage()
        assert SASL not in str(record.args)


def test_extra_librdkafka_secrets_and_mqtt_passwords_are_masked() -> None:
    settings = KafkaSettings(
        bootstrap_servers="127.0.0.1:1", extra=(("ssl.key.password", SASL), ("linger.ms", "5"))
    )
    for text in _printable(settings):
        assert SASL not in text and "linger.ms" in text
    section = MqttSection(host="broker", username="car", password=MQTT)
    mqtt = section.settings("evfl-agent")
    assert mqtt is not None and mqtt.password == MQTT
    for obj in (section, mqtt, MqttSettings(host="b", username="u", password=MQTT)):
        for text in _printable(obj):
            assert MQTT not in text, text
    kafka_section = KafkaSection(bootstrap_servers="b:9092", sasl_password=SASL)
    for text in _printable(kafka_section):
        assert SASL not in text


def test_a_signers_private_key_is_not_in_its_repr() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for text in _printable(Signer("coordinator-1", key)):
        assert raw.hex() not in text and "PRIVATE" not in text and "coordinator-1" in text
