"""Fault tests: real programs, real brokers, and a fault injected in the middle of a run.

Every test here starts the brokers it breaks (a restarted broker must not disturb other
tests), kills or restarts something while work is in flight, and then checks, with counts
taken before and after, that nothing acknowledged was lost and nothing was done twice. Each
test prints one ``FAULT |`` summary line (fault | observed outcome | counts before -> after);
``pytest tests/faults -s`` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from evfl.brokers import EmbeddedKafka, EmbeddedMqtt
from evfl.launch import Program


@pytest.fixture
def kafka(tmp_path) -> Iterator[EmbeddedKafka]:
    """A Kafka broker of the test's own (memory-only: a restart empties it)."""
    with EmbeddedKafka(tmp_path / "kafka") as broker:
        yield broker


@pytest.fixture
def mqtt(tmp_path) -> Iterator[EmbeddedMqtt]:
    """An MQTT broker of the test's own (no persistence: a restart empties it)."""
    with EmbeddedMqtt(tmp_path / "mqtt") as broker:
        yield broker


def wait_for(
    what: str,
    condition: Callable[[], object],
    programs: Sequence[Program] = (),
    timeout: float = 180.0,
    every: float = 0.2,
) -> object:
    """Poll ``condition`` until it is truthy; fail with the programs' log tails on a timeout
    or when one of them exits with an error meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for p in programs:
            code = p.exit_code()
            if code not in (None, 0):
                tail = p.log_tail()
                pytest.fail(f"{p.name} exited with {code} while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            logs = "\n\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in programs)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
        time.sleep(every)


def report(fault: str, outcome: str, before: dict[str, int], after: dict[str, int]) -> str:
    """The one-line summary a fault test prints: fault | outcome | counts before -> after."""
    counts = ", ".join(f"{k} {before.get(k, '-')}->{after.get(k, '-')}" for k in after)
    line = f"FAULT | {fault} | {outcome} | {counts}"
    print(line)
    return line
