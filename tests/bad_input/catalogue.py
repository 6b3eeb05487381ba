"""The bad-input catalogue: every case the tests in this package feed to a real program.

One row per case: which wire and program it reaches, what is wrong with the input, the error
the program must give (exception class, gRPC status or refusal reason, and words its message
must hold), and the Prometheus sample that must count it. The tests are parametrized over
these rows, so the table and the tests cannot drift apart.

Print the table as markdown (no pytest needed)::

    python -m tests.bad_input.catalogue
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CASES", "Case", "by_wire", "case", "markdown"]


@dataclass(frozen=True)
class Case:
    id: str
    wire: str  # grpc | kafka | mqtt
    program: str  # the program object that receives it
    input: str  # what is wrong with the input
    error: str  # exception class, gRPC status code or refusal reason
    words: str  # a phrase the error message must contain
    metric: str  # Prometheus sample name
    labels: dict[str, str] = field(default_factory=dict)  # its labels (task labels added live)
    kept: str = ""  # the good data around it that must survive
    xfail: str = ""  # a known bug, described (the test is xfail(strict=True))

    @property
    def sample(self) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        return f"{self.metric}{{{inner}}}" if inner else self.metric


_SESSION_KEPT = "good sessions before/after it in the same stream committed exactly once"
_INFER_KEPT = "the next good request on the channel gets the same answer as before"
_ROUND_KEPT = "the honest updates of the same round are aggregated (FedAvg, exact)"
_OTA_KEPT = "v2 keeps serving the same answer; a good v9 sent after all of them installs"
_ANNOUNCE_KEPT = "a good announcement after it on the same topic is served"
_AGENT_KEPT = "the agent keeps answering with its installed edge version"


def _upload(id: str, what: str, reason: str, words: str) -> Case:
    return Case(
        id, "grpc", "fog StationServicer.UploadSessions", what, f"rejected: {reason}", words,
        "evfl_fog_sessions_rejected_total", {"reason": reason}, _SESSION_KEPT,
    )  # fmt: skip


def _infer(id: str, what: str, code: str, words: str) -> Case:
    return Case(
        id, "grpc", "fog StationServicer.Infer", what, code, words,
        "evfl_fog_infer_errors_total", {"code": code}, _INFER_KEPT,
    )  # fmt: skip


def _update(id: str, what: str, reason: str, words: str, xfail: str = "") -> Case:
    return Case(
        id, "kafka", "coordinator RoundLoop (updates topic)", what, f"refused: {reason}", words,
        "evfl_coordinator_updates_refused_total", {"reason": reason}, _ROUND_KEPT, xfail,
    )  # fmt: skip


def _announce(id: str, what: str, outcome: str, words: str, xfail: str = "") -> Case:
    return Case(
        id, "kafka", "fog FederationLoop + Participant", what, outcome, words,
        "evfl_fog_announcements_total", {"outcome": outcome}, _ANNOUNCE_KEPT, xfail,
    )  # fmt: skip


def _ota(id: str, what: str, reason: str, words: str) -> Case:
    return Case(
        id, "mqtt", "agent PartitionUpdater", what, f"refused: {reason}", words,
        "evfl_agent_partitions_refused_total", {"reason": reason}, _OTA_KEPT,
    )  # fmt: skip


def _agent(id: str, what: str, code: str, words: str) -> Case:
    return Case(
        id, "grpc", "agent AgentServicer (local API)", what, code, words,
        "evfl_agent_requests_refused_total", {"code": code.lower()}, _AGENT_KEPT,
    )  # fmt: skip


CASES: tuple[Case, ...] = (
    # --- gRPC: sessions uploaded to a station ------------------------------------------------
    _upload("session-nan-energy", "energy_kwh = NaN", "non_finite_energy", "non_finite_energy"),
    _upload("session-inf-energy", "energy_kwh = +Inf", "non_finite_energy", "non_finite_energy"),
    _upload("session-negative-kwh", "energy_kwh = -3.0", "negative_energy", "negative_energy"),
    _upload("session-absurd-energy", "energy_kwh = 1e6", "absurd_energy", "absurd_energy"),
    _upload(
        "session-end-before-start", "end 2 h before start", "end_before_start", "end_before_start"
    ),
    _upload(
        "session-absurd-duration", "plugged in for 60 days", "absurd_duration", "absurd_duration"
    ),
    _upload(
        "session-placeholder-date",
        "start/end in 1970 (epoch 0)",
        "placeholder_date",
        "placeholder_date",
    ),
    _upload("session-nan-coordinates", "latitude NaN", "bad_coordinates", "bad_coordinates"),
    _upload(
        "session-negative-charging-time",
        "charging_time_h = -1",
        "bad_charging_time",
        "bad_charging_time",
    ),
    _upload("session-unknown-timezone", "timezone 'Mars/Olympus_Mons'", "malformed", "malformed"),
    _upload("session-time-out-of-range", "end_unix_ms = 2**62", "malformed", "malformed"),
    _upload(
        "session-zone-is-a-directory",
        "timezone 'Europe' (a folder of the zone database)",
        "malformed",
        "malformed",
    ),
    _upload("session-missing-id", "session_id empty", "malformed", "malformed"),
    _upload(
        "session-unknown-station", "station_id of another site", "other_station", "other_station"
    ),
    Case(
        "upload-garbage-bytes",
        "grpc",
        "fog StationServicer.UploadSessions",
        "a good batch, then a stream message of garbage bytes",
        "INTERNAL",
        "deserializing",
        "evfl_fog_upload_streams_total",
        {"outcome": "malformed"},
        "the batch before the garbage is committed once; a resend adds no duplicate",
    ),
    Case(
        "upload-oversize-stream",
        "grpc",
        "fog StationServicer.UploadSessions",
        "a stream of 120 sessions to a station that takes 100 per stream",
        "RESOURCE_EXHAUSTED",
        "100 sessions",
        "evfl_fog_upload_streams_total",
        {"outcome": "too_large"},
        "the first full batch is committed; the rest fits a new stream",
    ),
    # --- gRPC: hidden tensors sent to a station's fog tier -----------------------------------
    _infer("infer-nan-hidden", "hidden tensor full of NaN", "INVALID_ARGUMENT", "NaN"),
    _infer("infer-inf-hidden", "one +Inf in the hidden tensor", "INVALID_ARGUMENT", "Inf"),
    _infer(
        "infer-wrong-shape", "hidden (1, 7) instead of (1, 64)", "INVALID_ARGUMENT", "input shape"
    ),
    _infer("infer-wrong-dtype", "hidden sent as int32", "INVALID_ARGUMENT", "dtype"),
    _infer(
        "infer-short-data",
        "shape says (1, 64) float32, 255 bytes of data",
        "INVALID_ARGUMENT",
        "expected 256",
    ),
    _infer("infer-unknown-dtype", "dtype enum 99", "INVALID_ARGUMENT", "unknown dtype"),
    _infer("infer-negative-dim", "shape (1, -64)", "INVALID_ARGUMENT", "negative dimension"),
    _infer(
        "infer-oversize-tensor",
        "shape (1, 10**9): a billion elements declared",
        "INVALID_ARGUMENT",
        "exceeds the limit",
    ),
    _infer("infer-missing-hidden", "no hidden tensor", "INVALID_ARGUMENT", "without a hidden"),
    _infer("infer-unknown-task", "task 'no-such-task'", "NOT_FOUND", "no-such-task"),
    _infer(
        "infer-stale-version", "model_version 99 (not served)", "FAILED_PRECONDITION", "version 99"
    ),
    # --- gRPC: the vehicle agent's local API -------------------------------------------------
    _agent("predict-nan-features", "features holding NaN", "INVALID_ARGUMENT", "NaN"),
    _agent(
        "predict-wrong-shape",
        "features (1, 3) instead of the model's input",
        "INVALID_ARGUMENT",
        "do not fit the model's",
    ),
    _agent("predict-unknown-task", "task with no installed model", "UNAVAILABLE", "no model"),
    _agent(
        "record-session-bad-zone",
        "a recorded session with timezone ''",
        "INVALID_ARGUMENT",
        "timezone is missing",
    ),
    # --- Kafka: client updates on the coordinator's updates topic ----------------------------
    _update("update-garbage-bytes", "random bytes", "malformed", "do not parse"),
    _update(
        "update-truncated", "a valid update cut at half its length", "malformed", "do not parse"
    ),
    _update(
        "update-bad-hash",
        "one weight byte flipped, then signed",
        "bad_hash",
        "sha256 does not match",
    ),
    _update("update-nan-weights", "every weight NaN", "non_finite", "NaN or Inf"),
    _update("update-inf-weights", "one weight +Inf", "non_finite", "NaN or Inf"),
    _update("update-wrong-shape", "last weight array missing", "shape_mismatch", "arrays"),
    _update("update-wrong-dtype", "weights sent as int32", "shape_mismatch", "dtype int32"),
    _update("update-stale", "based on version base+7", "stale", "round needs"),
    _update(
        "update-duplicate", "the same honest update sent twice", "duplicate", "already recorded"
    ),
    _update(
        "update-unknown-station",
        "from station 'dd:zz', not in the task",
        "unknown_station",
        "dd:zz",
    ),
    _update("update-unsigned", "no signature (signatures required)", "bad_signature", "unsigned"),
    _update(
        "update-tampered-signature",
        "sample_count raised after signing",
        "bad_signature",
        "does not verify",
    ),
    _update("update-oversize", "blob declares raw_size 1 GiB", "bad_payload", "the limit is"),
    _update(
        "update-missing-chunks",
        "weights as a chunk list whose chunks never come",
        "bad_payload",
        "missing chunks",
    ),
    _update("update-zero-samples", "sample_count 0", "malformed", "must be positive"),
    # --- Kafka: announcements on a station's announce and chunks topics ----------------------
    _announce(
        "announce-garbage-bytes",
        "random bytes on the announce topic",
        "MalformedMessage",
        "do not parse",
    ),
    _announce(
        "announce-garbage-chunk", "random bytes on the chunks topic", "bad_chunk", "do not parse"
    ),
    _announce(
        "announce-nan-weights",
        "a signed announcement whose weights are NaN",
        "NonFiniteWeights",
        "NaN or Inf",
    ),
    _announce(
        "announce-unsigned",
        "an unsigned announcement (signatures required)",
        "BadSignature",
        "unsigned",
    ),
    _announce(
        "announce-absurd-window",
        "a signed round announcement whose data window starts at 2**62 ms",
        "bad_model",
        "out of range",
    ),
    # --- MQTT: edge partitions sent to a vehicle ---------------------------------------------
    _ota(
        "manifest-garbage-bytes",
        "random bytes on the manifest topic",
        "malformed",
        "does not parse",
    ),
    _ota(
        "manifest-replayed-old",
        "the signed v1 manifest replayed after v2",
        "stale",
        "not newer than v2",
    ),
    _ota("manifest-unsigned", "a v4 manifest without a signature", "unsigned", "unsigned"),
    _ota(
        "manifest-tampered",
        "a signed v4 manifest whose thresholds were edited",
        "bad_signature",
        "does not verify",
    ),
    _ota("manifest-oversize", "a 5 MiB manifest", "too_large", "exceeds the limit"),
    _ota(
        "tflite-tampered",
        "file bytes altered in transit, blob claims the signed hash",
        "bad_hash",
        "sha256",
    ),
    _ota(
        "tflite-signed-garbage",
        "a validly signed manifest for bytes that are no .tflite",
        "malformed",
        "not a TFLite model",
    ),
    _ota(
        "chunk-truncated",
        "a chunk whose data was cut (its sha256 no longer matches)",
        "bad_hash",
        "does not match its sha256",
    ),
    _ota(
        "chunk-reordered",
        "chunk 1 published on the topic of chunk 0",
        "malformed",
        "arrived on the topic of",
    ),
    _ota("chunk-garbage-bytes", "random bytes on a chunk topic", "malformed", "does not parse"),
)


def case(case_id: str) -> Case:
    for c in CASES:
        if c.id == case_id:
            return c
    raise KeyError(case_id)


def by_wire(wire: str, prefix: str = "") -> list[Case]:
    return [c for c in CASES if c.wire == wire and c.id.startswith(prefix)]


def markdown(outcomes: dict[str, str] | None = None) -> str:
    """The catalogue as a markdown table (``outcomes``: an observed outcome per case id)."""
    header = "| case | wire | program | input | expected error | counted in | nothing lost |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    for c in CASES:
        error = f'{c.error} ("{c.words}")'
        if outcomes and c.id in outcomes:
            error = outcomes[c.id]
        if c.xfail:
            error += f" — **known bug (xfail)**: {c.xfail}"
        cells = [c.id, c.wire, c.program, c.input, error, f"`{c.sample}`", c.kept]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
    print(f"\n{len(CASES)} cases: " + ", ".join(
        f"{w} {sum(c.wire == w for c in CASES)}" for w in ("grpc", "kafka", "mqtt")
    ))  # fmt: skip
