"""Ship a version's partition files to vehicles and stations as retained MQTT messages.

Per partition the file goes first (its chunks, then the message on its file topic), and the
signed manifest last: a reader that sees a manifest finds its file already on the broker.
Every manifest and file message is built and size-checked before anything is sent, so a
version that cannot be shipped leaves the previous one on the broker untouched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.export import ExportReport
from models.model_config import PARTITIONS
from proto import partitions_pb2
from proto.mqtt import MqttPublisher, MqttSettings, manifest_topic
from proto.partition_messages import build_manifest, file_messages
from proto.signing import Signer
from proto.wire_errors import PayloadTooLarge

__all__ = ["ExportFileMismatch", "PartitionFiles", "files_from_export", "publish_partitions"]

log = logging.getLogger("evfl.coordinator.partitions")

# partition -> (format, variant, file bytes)
PartitionFiles = dict[str, tuple[str, str, bytes]]


class ExportFileMismatch(ValueError):
    """A file in an export directory is missing or differs from what manifest.json recorded."""


def publish_partitions(
    publisher: MqttPublisher,
    settings: MqttSettings,
    task_id: str,
    version: int,
    files: Mapping[str, tuple[str, str, bytes]],
    thresholds: Sequence[float],
    normalization_json: str,
    parity: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    signer: Signer | None,
) -> list[partitions_pb2.PartitionManifest]:
    """Publish every partition's file, then its manifest, retained with QoS 1.

    Returns the manifests in the order of ``files``. Raises PayloadTooLarge (nothing sent)
    when a manifest, with its parity samples, exceeds ``settings.max_payload_bytes``, and
    MqttPublishFailed when the broker does not acknowledge a message.
    """
    batches = []
    for partition, (fmt, variant, data) in files.items():
        manifest = build_manifest(
            task_id,
            version,
            partition,
            fmt,
            variant,
            data,
            thresholds,
            normalization_json,
            parity.get(partition, ()),
            signer,
        )
        encoded = manifest.SerializeToString(deterministic=True)
        if len(encoded) > settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"{task_id} v{version} {partition} manifest is {len(encoded)} bytes, above "
                f"max_payload_bytes {settings.max_payload_bytes}: send fewer parity samples"
            )
        messages = file_messages(manifest, data, settings.max_payload_bytes)
        batches.append((manifest, messages, encoded))
    for manifest, messages, encoded in batches:
        publisher.publish_many(messages, retain=True, qos=1)
        publisher.publish(manifest_topic(task_id, manifest.partition), encoded, True, 1)
        log.info(
            "task %s v%d: published %s (%d bytes in %d message(s), sha256 %s…)",
            task_id,
            version,
            manifest.partition,
            manifest.size,
            len(messages),
            manifest.sha256[:12],
        )
    return [manifest for manifest, _, _ in batches]


def files_from_export(report: ExportReport, out_dir: str | Path | None = None) -> PartitionFiles:
    """The float32 TFLite file of each partition an ``export_partitions`` run wrote.

    ``out_dir`` defaults to the report's own directory. A partition whose TFLite conversion
    was skipped is left out (logged); every file read must match the hash and size the
    export recorded, else ExportFileMismatch.
    """
    root = Path(report.out_dir if out_dir is None else out_dir)
    files: PartitionFiles = {}
    for partition in PARTITIONS:
        try:
            exported = report.file(partition, "tflite", "float32")
        except KeyError:
            log.warning("export in %s has no %s.tflite; not shipping it", root, partition)
            continue
        path = root / exported.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ExportFileMismatch(f"cannot read {path}: {exc.strerror}") from None
        if len(data) != exported.size_bytes or hashlib.sha256(data).hexdigest() != exported.sha256:
            raise ExportFileMismatch(f"{path} differs from the file its export recorded")
        files[partition] = (exported.format, exported.variant, data)
    return files
