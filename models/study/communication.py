"""Bytes on the wire: a federated update versus uploading the raw sessions.

Both sides use the project's real encodings, compressed by the same blob codec (zstd level 3):
an update is ``proto.blob_codec.weights_to_blob`` of the weight arrays (a TensorBundle), the
raw alternative is a ``SessionBatch`` of the station's ``Session`` protos. Codecs, not
transports: nothing here knows about Kafka or MQTT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.datasets.record import iter_sessions


@dataclass(frozen=True)
class CommunicationCost:
    client_id: str
    sessions: int
    raw_bytes: int  # its sessions as one zstd SessionBatch blob, sent once
    update_bytes: int  # one model update as a zstd TensorBundle blob, sent every round
    rounds: int

    @property
    def federated_bytes(self) -> int:
        return self.update_bytes * self.rounds

    @property
    def reduction_per_round(self) -> float:
        """1 - update / raw: the paper's kind of figure (one model upload vs the data)."""
        return 1.0 - self.update_bytes / self.raw_bytes

    @property
    def reduction_total(self) -> float:
        """1 - all rounds' updates / raw: what the station really saves (negative: it pays)."""
        return 1.0 - self.federated_bytes / self.raw_bytes


def update_bytes(weights: Sequence[np.ndarray]) -> int:
    """Size of one update as the wire codec encodes it (blob plus any chunks)."""
    from proto.blob_codec import weights_to_blob

    blob, chunks = weights_to_blob([np.asarray(w, np.float32) for w in weights])
    return blob.ByteSize() + sum(c.ByteSize() for c in chunks)


def raw_upload_bytes(sessions: pd.DataFrame) -> int:
    """Size of the sessions as one SessionBatch, compressed by the same blob codec."""
    from proto import sessions_pb2
    from proto.blob_codec import pack_blob
    from proto.session_codec import session_to_proto

    batch = sessions_pb2.SessionBatch(
        sessions=[session_to_proto(s) for s in iter_sessions(sessions)]
    )
    blob, chunks = pack_blob(batch.SerializeToString())
    return blob.ByteSize() + sum(c.ByteSize() for c in chunks)


def communication_costs(
    sessions: pd.DataFrame,
    groups: dict[str, np.ndarray],
    weights: Sequence[np.ndarray],
    rounds: int,
) -> list[CommunicationCost]:
    """One cost per client; ``groups`` maps client id to its rows of ``sessions``."""
    size = update_bytes(weights)
    return [
        CommunicationCost(cid, len(rows), raw_upload_bytes(sessions.iloc[rows]), size, rounds)
        for cid, rows in groups.items()
        if len(rows) > 0
    ]


def overall(costs: Sequence[CommunicationCost]) -> tuple[float, float]:
    """(per-round, total) reduction summed over clients."""
    raw = sum(c.raw_bytes for c in costs)
    per_round = sum(c.update_bytes for c in costs)
    total = sum(c.federated_bytes for c in costs)
    return 1.0 - per_round / raw, 1.0 - total / raw
