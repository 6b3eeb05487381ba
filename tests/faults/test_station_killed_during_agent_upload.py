"""Fault: the station is SIGKILLed while a real agent process streams its session backlog.

The agent (a real ``evfl agent run``) holds the busiest Dundee charge point's real sessions,
queued while it drove; plugged in, its uploader streams them in small batches to a real
station process. The station is killed with SIGKILL once it has committed part of the stream,
and restarted on the same store and port. Nobody tells the agent: its uploader backs off,
retries and re-sends what was never acknowledged.

Nothing lost: every session the station had committed before the kill is still stored, once;
the agent re-sent the rest; the station ends with exactly the agent's total, no duplicates, and
the agent's queue is empty.
"""

from __future__ import annotations

from evfl.brokers import free_port
from evfl.launch import Program, write_toml
from fog_node.session_store import SessionStore
from models.datasets.record import iter_sessions
from proto import agent_pb2, agent_pb2_grpc
from proto.grpc_channel import open_channel
from proto.session_codec import session_to_proto
from tests.faults.conftest import report, wait_for
from tests.integration.processes import station_status

BATCH = 5  # small batches: one committed transaction each, so the stream takes a while
KILL_AFTER = 1000  # sessions committed before the kill


def _station(workdir, station_id, port) -> Program:
    """A station on a fixed port (so the agent finds it again after the restart), no Kafka."""
    config = write_toml(
        workdir / "fog.toml",
        {
            "station_id": station_id,
            "state_dir": str(workdir / "state"),
            "listen": f"127.0.0.1:{port}",
            "tasks": [],
        },
    )
    return Program(workdir, ["fog", "serve", "--config", str(config)], "fog")


def _agent(workdir) -> Program:
    config = write_toml(
        workdir / "agent.toml",
        {
            "vehicle_id": "car-fault-1",
            "state_dir": str(workdir / "state"),
            "listen": f"unix:{workdir / 'agent.sock'}",
            "tasks": [],
            "upload": {"batch_size": BATCH, "max_sessions_per_stream": 100_000},
        },
    )
    return Program(workdir, ["agent", "run", "--config", str(config)], "agent")


def test_station_killed_mid_upload_stream_loses_and_duplicates_nothing(tmp_path, dundee):
    counts = dundee.sessions["station_id"].value_counts()
    station_id = str(counts.idxmax())  # the busiest Dundee charge point
    mine = dundee.sessions[dundee.sessions["station_id"] == station_id].sort_values("start")
    sessions = list(iter_sessions(mine))
    total = len(sessions)
    port = free_port()
    station = _station(tmp_path / "station", station_id, port)
    agent = _agent(tmp_path / "agent")
    programs = [station, agent]
    try:
        station.start(wait_ready=False)
        agent.start()
        socket = tmp_path / "agent" / "agent.sock"
        car = agent_pb2_grpc.VehicleAgentStub(open_channel(f"unix:{socket}"))
        reply = car.RecordSessions(
            agent_pb2.RecordSessionsRequest(sessions=[session_to_proto(s) for s in sessions]),
            timeout=60,
        )
        assert (reply.queued, reply.queue_length) == (total, total)
        station.wait_ready()

        car.SetPlugState(
            agent_pb2.PlugState(plugged=True, station_target=f"127.0.0.1:{port}"), timeout=10
        )
        # Kill as soon as part of the stream is committed (and well before its end).
        stored_seen = wait_for(
            "the station to commit part of the stream",
            lambda: (
                station_status(port).sessions_stored >= KILL_AFTER
                and station_status(port).sessions_stored
            ),
            programs,
            timeout=60,
            every=0.01,
        )
        station.kill()  # SIGKILL of the station's process group, mid-stream
        mid = car.Status(agent_pb2.AgentStatusRequest(), timeout=10)
        with SessionStore(station.workdir / "state" / "sessions.sqlite3") as store:
            committed_at_kill = store.count()
            ids_at_kill = set(store.frame()["session_id"])
        assert stored_seen <= committed_at_kill < total, "the stream ended before the kill"
        assert (mid.uploaded, mid.queue_length) == (0, total)  # the stream was never acked

        station.start()  # same store, same port; the agent retries on its own
        after_restart = station_status(port).sessions_stored
        assert after_restart == committed_at_kill
        done = wait_for(
            "the agent to drain its queue",
            lambda: (
                (s := car.Status(agent_pb2.AgentStatusRequest(), timeout=10)).queue_length == 0
                and s
            ),
            programs,
            timeout=120,
        )
        assert done.uploaded == total
        assert station.terminate() == 0
        with SessionStore(station.workdir / "state" / "sessions.sqlite3") as store:
            ids = list(store.frame()["session_id"])
        assert len(ids) == total and len(set(ids)) == total  # each session exactly once
        assert ids_at_kill <= set(ids) == {s.session_id for s in sessions}
        assert agent.terminate() == 0
    finally:
        for p in programs:
            p.kill()
    report(
        "station SIGKILLed mid agent upload stream",
        "acked sessions kept once; agent re-sent the rest; queue drained",
        {"agent_queued": total, "station_stored": committed_at_kill, "agent_uploaded": 0},
        {
            "agent_queued": 0,
            "station_stored": len(ids),
            "agent_uploaded": done.uploaded,
            "duplicates": len(ids) - len(set(ids)),
        },
    )
