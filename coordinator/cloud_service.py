"""The cloud tier of inference: the last partition, which always answers.

Stations forward here when their fog exit is not confident. The coordinator installs the cloud
partition of every version it publishes (keeping the last few, as the stations do), so a
request is answered by the weights its hidden tensor came from.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from models.served_partition import ServedVersions, UnknownTask, VersionNotServed
from models.tflite_runner import BadPartitionInput
from proto import inference_pb2, station_pb2_grpc
from proto.infer_messages import answer, hidden_of, tier_of
from proto.wire_errors import WireError

log = logging.getLogger("evfl.cloud")

CLOUD = 2


class CloudServicer(station_pb2_grpc.CloudServiceServicer):
    def __init__(self, served: ServedVersions, registry: CollectorRegistry | None = None) -> None:
        self.served = served
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "evfl_cloud_infer_latency_seconds", "Cloud partition latency", registry=self.registry
        )
        self.errors = Counter(
            "evfl_cloud_infer_errors", "Refused requests by gRPC code", ["code"],
            registry=self.registry,
        )

    def Infer(
        self, request: inference_pb2.InferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        started = time.perf_counter()
        try:
            served = self.served.get(request.task_id, request.model_version)
            result = served.step(hidden_of(request))
        except UnknownTask as exc:
            self._refuse(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except VersionNotServed as exc:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (WireError, BadPartitionInput) as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"hidden tensor: {exc}")
        total = (time.perf_counter() - started) * 1e3
        hop = inference_pb2.HopTiming(
            tier=tier_of(CLOUD), compute_ms=result.compute_ms, total_ms=total
        )
        self.latency.observe(total / 1e3)
        return answer(request, CLOUD, result.mean, result.std, [*request.hops, hop])

    def _refuse(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        self.errors.labels(code.name).inc()
        log.warning("cloud infer refused (%s): %s", code.name, message)
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")
