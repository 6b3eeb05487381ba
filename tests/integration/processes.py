"""Real program processes for the integration tests (see evfl.launch), and station helpers."""

from __future__ import annotations

from pathlib import Path

from evfl import launch
from evfl.brokers import free_port
from evfl.launch import Program
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import open_channel


def fog_program(
    workdir: Path, station: str, bootstrap: str, tasks: list[str], cloud_port: int = 0
) -> Program:
    """A station with a metrics endpoint (``.metrics_port``)."""
    metrics_port = free_port()
    program = launch.fog_program(workdir, station, bootstrap, tasks, cloud_port, metrics_port)
    program.metrics_port = metrics_port  # type: ignore[attr-defined]
    return program


def station_stub(port: int) -> station_pb2_grpc.StationServiceStub:
    return station_pb2_grpc.StationServiceStub(open_channel(f"127.0.0.1:{port}"))


def station_status(port: int) -> station_pb2.StationStatus:
    return station_stub(port).Status(station_pb2.StatusRequest(), timeout=10)
