"""What happens to every committed version: the cloud serves it, MQTT ships its partitions.

Each partition is converted to TFLite once (parity-checked against Keras), the cloud partition
is installed in the cloud's gRPC service, and — with MQTT configured — every partition is
published, signed, with the calibrated exit thresholds, the normalisation, and parity samples
(inputs and the outputs this very file gave) so a receiver can self-test before swapping.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from coordinator.task_data import TaskData
from models.exit_policy import ExitPolicy
from models.model_config import PARTITIONS
from models.served_partition import ServedPartition, ServedVersions
from models.tflite_runner import TfliteRunner

if TYPE_CHECKING:
    from coordinator.registry import VersionRecord
    from proto.mqtt import MqttPublisher, MqttSettings
    from proto.signing import Signer

log = logging.getLogger("evfl.coordinator.serving")

CLOUD = len(PARTITIONS) - 1


def parity_samples(
    files: dict[str, bytes], inputs: np.ndarray
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per partition: its inputs along the chain and the outputs its own file gives on them."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    feed = np.asarray(inputs, np.float32)
    for name in PARTITIONS:
        runner = TfliteRunner(files[name], workers=1)
        results = [runner.run(feed[i : i + 1]) for i in range(len(feed))]
        named = [("input", feed)]
        for key in runner.output_names:
            named.append((key, np.concatenate([r[key] for r in results], axis=0)))
        out[name] = named
        hidden = f"{name}_hidden"
        if hidden in runner.output_names:
            feed = np.concatenate([r[hidden] for r in results], axis=0)
    return out


class VersionServing:
    def __init__(
        self,
        task_id: str,
        data: TaskData,
        cloud: ServedVersions,
        mqtt: MqttPublisher | None = None,
        mqtt_settings: MqttSettings | None = None,
        signer: Signer | None = None,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self.task_id = task_id
        self.data = data
        self.cloud = cloud
        self.mqtt = mqtt
        self.mqtt_settings = mqtt_settings
        self.signer = signer
        self.on_published = on_published  # told the bytes published per version

    def __call__(self, record: VersionRecord, weights: list[np.ndarray]) -> None:
        from models.export import serving_partitions

        files = serving_partitions(self.data.config, weights, PARTITIONS)
        thresholds = tuple(float(t) for t in record.exit_policy.get("thresholds", ()))
        normalization = self.data.preprocessing.normalization
        self.cloud.install(
            ServedPartition(
                self.task_id,
                record.version,
                CLOUD,
                TfliteRunner(files["cloud"]),
                normalization,
                ExitPolicy(thresholds),
            )
        )
        if self.mqtt is None or self.mqtt_settings is None or record.version < 1:
            return  # version 0 is the untrained starting point: nothing worth shipping
        from coordinator.partitions import publish_partitions

        manifests = publish_partitions(
            self.mqtt,
            self.mqtt_settings,
            self.task_id,
            record.version,
            {name: ("tflite", "float32", data) for name, data in files.items()},
            thresholds,
            json.dumps(normalization.to_dict()),
            parity_samples(files, self.data.parity_inputs),
            self.signer,
        )
        if self.on_published is not None:
            self.on_published(
                sum(m.size for m in manifests) + sum(m.ByteSize() for m in manifests)
            )
        log.info(
            "task %s version %d: partitions on MQTT (%s)",
            self.task_id,
            record.version,
            ", ".join(f"{m.partition} {m.size} B" for m in manifests),
        )
