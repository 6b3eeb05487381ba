"""Sending the edge's hidden tensor on to the station when the edge exit is not confident.

Within the request's deadline: a bounded number of retries with jittered exponential backoff,
only for errors a retry can fix (unavailable, deadline, resource exhausted). Anything else
(the station does not serve this version, the tensor was refused) is final. The caller answers
locally, flagged degraded, whenever this returns None: a vehicle never goes without an answer
because the network did.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import grpc

from proto import inference_pb2, station_pb2_grpc
from proto.grpc_channel import ClientTls, open_channel

log = logging.getLogger("evfl.agent.forwarder")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class Forwarder:
    def __init__(
        self,
        target: Callable[[], str | None],
        tls: ClientTls | None = None,
        retries: int = 2,
        backoff_s: float = 0.02,
    ) -> None:
        self._target = target
        self._tls = tls
        self.retries = retries
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, station_pb2_grpc.StationServiceStub]] = {}
        self.failures: dict[str, int] = {}

    def _stub(self, target: str) -> station_pb2_grpc.StationServiceStub:
        with self._lock:
            if target not in self._channels:
                channel = open_channel(target, self._tls)
                self._channels[target] = (channel, station_pb2_grpc.StationServiceStub(channel))
            return self._channels[target][1]

    def forward(
        self, request: inference_pb2.InferRequest, timeout_s: float
    ) -> inference_pb2.InferResponse | None:
        target = self._target()
        if not target:
            self._count("no_station")
            return None
        deadline = time.monotonic() + timeout_s
        stub = self._stub(target)
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return stub.Infer(request, timeout=remaining)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == self.retries:
                    self._count(code.name.lower())
                    log.warning(
                        "station %s: %s for %s (%s)",
                        target,
                        code.name,
                        request.request_id,
                        exc.details(),
                    )
                    return None
                pause = self.backoff_s * (2**attempt) * (0.5 + random.random())
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        self._count("deadline")
        return None

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._channels.values():
                channel.close()
            self._channels.clear()
