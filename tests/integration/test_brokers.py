"""The embedded brokers and the Kafka transport, against real Tansu / Mosquitto / amqtt."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt_client
import pytest

from evfl.brokers import BrokerStartError, EmbeddedKafka, EmbeddedMqtt, free_port
from proto.kafka import (
    InvalidTaskId,
    KafkaSettings,
    KafkaUnavailable,
    Publisher,
    PublishFailed,
    Record,
    Subscriber,
    TopicSpec,
    announce_topic,
    chunks_topic,
    ensure_topics,
    task_topic_specs,
    updates_topic,
)

MiB = 1024 * 1024


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _collect(sub: Subscriber, count: int, timeout: float = 30.0) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        record = sub.poll(0.5)
        if record is not None:
            records.append(record)
    assert len(records) == count, f"got {len(records)} of {count} records in {timeout} s"
    return records


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- Kafka


def test_group_round_trip_and_no_redelivery_after_commit(kafka: EmbeddedKafka) -> None:
    settings = kafka.settings()
    topic = updates_topic(_unique("round-trip"))
    group = _unique("group")
    ensure_topics(settings, [TopicSpec(topic)])

    with Publisher(settings) as pub:
        for i in range(3):
            pub.publish(topic, f"update-{i}".encode(), key=b"station-7", headers={"round": b"1"})

        with Subscriber(settings, group, [topic]) as sub:
            records = _collect(sub, 3)
            sub.commit(records[-1])
        assert [r.value for r in records] == [b"update-0", b"update-1", b"update-2"]
        assert [r.offset for r in records] == [0, 1, 2]
        first = records[0]
        assert (first.topic, first.key, first.header("round")) == (topic, b"station-7", b"1")
        assert first.timestamp_ms is not None and abs(first.timestamp_ms / 1000 - time.time()) < 60

        delivery = pub.publish(topic, b"update-3")
    assert delivery.offset == 3

    with Subscriber(settings, group, [topic]) as sub:
        (record,) = _collect(sub, 1)
    assert (record.offset, record.value) == (3, b"update-3")


def test_five_megabyte_incompressible_record_round_trip(kafka: EmbeddedKafka) -> None:
    settings = kafka.settings()
    topic = chunks_topic(_unique("big"))
    ensure_topics(settings, [TopicSpec(topic)])
    payload = os.urandom(5 * MiB)

    with Publisher(settings) as pub:
        pub.publish(topic, payload, key=b"blob")
    with Subscriber(settings, _unique("reader")) as sub:
        sub.assign_from_beginning([topic])
        (record,) = _collect(sub, 1)
    assert record.value == payload


def test_record_over_the_size_limit_fails_with_the_reason(kafka: EmbeddedKafka) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, message_max_bytes=MiB)
    with Publisher(settings) as pub, pytest.raises(PublishFailed) as caught:
        pub.publish(_unique("too-big"), os.urandom(2 * MiB))
    assert "MSG_SIZE_TOO_LARGE" in caught.value.reason


def test_ensure_topics_is_idempotent(kafka: EmbeddedKafka) -> None:
    settings = kafka.settings()
    specs = task_topic_specs(_unique("task"), partitions=3)

    assert ensure_topics(settings, specs) == [spec.name for spec in specs]
    assert ensure_topics(settings, specs) == []

    with Subscriber(settings, _unique("reader")) as sub:
        sub.assign_from_beginning([specs[1].name])  # all 3 partitions, no error
    with Publisher(settings) as pub:
        partitions = {pub.publish(specs[1].name, b"x", key=bytes([k])).partition for k in range(30)}
    assert partitions <= {0, 1, 2} and len(partitions) > 1


def test_ensure_topics_without_a_broker_raises_kafka_unavailable() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaUnavailable, match=r"no Kafka broker .* within 1 s"):
        ensure_topics(settings, [TopicSpec("evfl.none.updates")], timeout=1.0)


def test_settings_mask_the_password_and_pass_extra_keys_through() -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka-1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="fog-17",
        sasl_password="hunter2-secret",
        ssl_ca_location="/etc/evfl/ca.pem",
        extra=(("linger.ms", "25"), ("ssl.key.password", "also-secret")),
    )
    shown = repr(settings) + str(settings)
    assert "hunter2" not in shown and "also-secret" not in shown
    assert "fog-17" in shown and "***" in shown

    producer = settings.producer_config()
    assert producer["linger.ms"] == "25" and producer["ssl.key.password"] == "also-secret"
    assert producer["sasl.password"] == "hunter2-secret"
    assert producer["compression.type"] == "zstd" and producer["acks"] == "all"
    consumer = settings.consumer_config("fog")
    assert consumer["linger.ms"] == "25" and consumer["enable.auto.commit"] is False
    assert consumer["max.partition.fetch.bytes"] >= settings.message_max_bytes
    assert settings.admin_config()["ssl.ca.location"] == "/etc/evfl/ca.pem"


def test_topic_names_come_from_one_scheme_and_reject_bad_task_ids() -> None:
    assert announce_topic("dundee-2024_v1.0") == "evfl.dundee-2024_v1.0.announce"
    assert updates_topic("t") == "evfl.t.updates"
    assert chunks_topic("t") == "evfl.t.chunks"
    for bad in ("", "a/b", "task id", "x" * 101, "évfl"):
        with pytest.raises(InvalidTaskId, match="letters, digits"):
            updates_topic(bad)


def test_restart_leaves_the_broker_empty_but_usable(tmp_path: Path) -> None:
    with EmbeddedKafka(tmp_path) as broker, Publisher(broker.settings()) as pub:
        settings = broker.settings()
        topic = announce_topic("restart")
        ensure_topics(settings, [TopicSpec(topic)])
        pub.publish(topic, b"before")
        bootstrap, old_pid = broker.bootstrap_servers, broker.pid

        broker.restart()

        assert broker.bootstrap_servers == bootstrap and broker.pid != old_pid
        assert ensure_topics(settings, [TopicSpec(topic)]) == [topic]  # it was gone
        # The publisher that outlived the restart reconnects by itself.
        assert pub.publish(topic, b"after", timeout=15).offset == 0
        with Subscriber(settings, "after-restart") as sub:
            sub.assign_from_beginning([topic])
            (record,) = _collect(sub, 1)
        assert record.value == b"after"


def test_subscriber_survives_a_broker_outage_and_logs_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedKafka(tmp_path) as broker:
        settings = broker.settings()
        topic = updates_topic("outage")
        ensure_topics(settings, [TopicSpec(topic)])
        with Subscriber(settings, "outage") as sub:
            sub.assign_from_beginning([topic])
            broker.stop()
            with caplog.at_level(logging.WARNING, logger="proto.kafka"):
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    assert sub.poll(0.2) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "proto.kafka"]
    assert warnings, "the outage was not logged"
    assert len(warnings) == len(set(warnings)), f"logged more than once: {warnings}"


# ----------------------------------------------------------------------------- MQTT


def _retained_round_trip(host: str, port: int) -> None:
    topic = f"evfl/{_unique('task')}/0/manifest"
    publisher = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    publisher.connect(host, port)
    publisher.loop_start()
    try:
        info = publisher.publish(topic, b"manifest-v1", qos=1, retain=True)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        publisher.disconnect()
        publisher.loop_stop()

    received: list[mqtt_client.MQTTMessage] = []
    arrived = threading.Event()

    def on_connect(client, _userdata, _flags, reason_code, _props) -> None:  # type: ignore[no-untyped-def]
        assert not reason_code.is_failure
        client.subscribe(topic, qos=1)

    def on_message(_client, _userdata, message) -> None:  # type: ignore[no-untyped-def]
        received.append(message)
        arrived.set()

    late_subscriber = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    late_subscriber.on_connect = on_connect
    late_subscriber.on_message = on_message
    late_subscriber.connect(host, port)
    late_subscriber.loop_start()
    try:
        assert arrived.wait(timeout=5), "retained message not delivered"
    finally:
        late_subscriber.disconnect()
        late_subscriber.loop_stop()
    assert (received[0].topic, received[0].payload, received[0].retain) == (
        topic,
        b"manifest-v1",
        True,
    )


def test_mqtt_retained_message_reaches_a_late_subscriber(mqtt: EmbeddedMqtt) -> None:
    _retained_round_trip(mqtt.host, mqtt.port)


def test_amqtt_fallback_serves_retained_messages(tmp_path: Path) -> None:
    with EmbeddedMqtt(tmp_path, prefer="amqtt") as broker:
        assert broker.kind == "amqtt"
        _retained_round_trip(broker.host, broker.port)


# ----------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("which", ["kafka", "mqtt", "amqtt"])
def test_stop_leaves_no_child_process(tmp_path: Path, which: str) -> None:
    if which == "kafka":
        broker: EmbeddedKafka | EmbeddedMqtt = EmbeddedKafka(tmp_path)
    else:
        broker = EmbeddedMqtt(tmp_path, prefer="amqtt" if which == "amqtt" else None)
    broker.start()
    pid = broker.pid
    assert pid is not None and _pid_alive(pid)
    broker.stop()
    assert not _pid_alive(pid)
    assert broker.log_path.read_text()  # its output was captured
    broker.stop()  # twice is fine


def test_a_failing_body_still_stops_the_broker(tmp_path: Path) -> None:
    pid = None
    with pytest.raises(RuntimeError, match="test body failed"), EmbeddedKafka(tmp_path) as broker:
        pid = broker.pid
        raise RuntimeError("test body failed")
    assert pid is not None and not _pid_alive(pid)


def test_a_broker_that_exits_at_once_fails_start_with_its_log(tmp_path: Path) -> None:
    broker = EmbeddedKafka(tmp_path, binary="/bin/false", start_timeout=5)
    with pytest.raises(BrokerStartError, match="exited with code 1"):
        broker.start()
    assert not broker.running()
