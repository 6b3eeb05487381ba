"""What happens to every committed version: the cloud serves it, MQTT ships its partitions.

Each partition is converted to TFLite once (parity-checked against Keras), the cloud partition
is installed in the cloud's gRPC service, and — with MQTT configured — every partition is
published, signed, with the calibrated exit thresholds, the normalisation, and parity samples
(inputs and the outputs this very file gave) so a receiver can self-test before swapping.

The latest version stays on the broker: an MQTT broker that restarted empty has lost every
retained message, so :meth:`VersionServing.keep_shipped` (called periodically) publishes the
latest version again whenever the publisher connected afresh or the last publish failed. A
failed publish is logged, not raised: the round loop carries on and the next call retries.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
        self._lock = threading.Lock()  # one publish at a time: never an old version last
        self._latest: tuple[int, dict[str, Any]] | None = None  # version, publish arguments
        self._shipped_on = -1  # the publisher's connection count at the last good publish

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
        arguments = {
            "files": {name: ("tflite", "float32", data) for name, data in files.items()},
            "thresholds": thresholds,
            "normalization_json": json.dumps(normalization.to_dict()),
            "parity": parity_samples(files, self.data.parity_inputs),
        }
        with self._lock:
            self._latest = (record.version, arguments)
            self._ship()

    def keep_shipped(self) -> bool:
        """Publish the latest version again if the broker may have lost it (the publisher
        connected afresh since, or the last publish failed); True if it is shipped now."""
        if self.mqtt is None:
            return True
        with self._lock:
            if self._latest is None or self._shipped_on == self.mqtt.connections:
                return True
            log.info(
                "task %s version %d: publishing again (MQTT reconnected or failed)",
                self.task_id,
                self._latest[0],
            )
            return self._ship()

    def _ship(self) -> bool:
        from coordinator.partitions import publish_partitions
        from proto.mqtt import MqttTransportError

        assert self._latest is not None and self.mqtt is not None
        assert self.mqtt_settings is not None
        version, arguments = self._latest
        # A reconnect while publishing may have lost what went before it: count from here.
        connection = self.mqtt.connections if self.mqtt.connected else None
        try:
            manifests = publish_partitions(
                self.mqtt,
                self.mqtt_settings,
                self.task_id,
                version,
                signer=self.signer,
                **arguments,
            )
        except MqttTransportError as exc:
            self._shipped_on = -1
            log.warning(
                "task %s version %d: partitions not on MQTT yet (%s); will retry",
                self.task_id,
                version,
                exc,
            )
            return False
        self._shipped_on = self.mqtt.connections if connection is None else connection
        if self.on_published is not None:
            self.on_published(sum(m.size for m in manifests) + sum(m.ByteSize() for m in manifests))
        log.info(
            "task %s version %d: partitions on MQTT (%s)",
            self.task_id,
            version,
            ", ".join(f"{m.partition} {m.size} B" for m in manifests),
        )
        return True
