"""The ShiViz/GoVector event log: its format, what real calls write, and its bounds."""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import echo_service
import pytest

from cutwatch.agent import SHIVIZ_REGEX, VectorClock
from cutwatch.agent._eventlog import EventLog, format_event

# ShiViz takes JavaScript syntax; Python spells named groups (?P<name>...).
PARSER = re.compile(SHIVIZ_REGEX.replace("(?<", "(?P<"))
WAIT = 30.0

Event = tuple[str, VectorClock, str]


def parse_log(text: str) -> list[Event]:
    """Every event of a ShiViz log; the whole text must be events."""
    events: list[Event] = []
    position = 0
    for match in PARSER.finditer(text):
        assert match.start() == position, f"unparsed text before {match.group(0)!r}"
        raw_clock = json.loads(match.group("clock"))
        assert all(isinstance(v, int) and v > 0 for v in raw_clock.values()), raw_clock
        events.append((match.group("host"), VectorClock(raw_clock), match.group("event")))
        position = match.end() + 1  # the event line's newline
    assert position == len(text), f"unparsed tail {text[position:]!r}"
    return events


def check_process_order(events: list[Event]) -> dict[str, list[Event]]:
    """Each event's clock names its process; a process's clocks strictly increase."""
    by_host: dict[str, list[Event]] = {}
    for host, clock, description in events:
        assert clock.get(host) >= 1, (host, clock, description)
        earlier = by_host.setdefault(host, [])
        if earlier:
            assert earlier[-1][1].happened_before(clock), (earlier[-1], clock, description)
        earlier.append((host, clock, description))
    return by_host


def the_event(events: list[Event], host: str, description: str) -> VectorClock:
    found = [clock for h, clock, d in events if h == host and d == description]
    assert len(found) == 1, (host, description, [d for h, _, d in events if h == host])
    return found[0]


def test_format_is_two_lines_per_event() -> None:
    line = format_event("bank:1", {"bank:1": 3, "shop:2": 1}, "send  request\n/x/Y\tcall=4")
    assert line == 'bank:1 {"bank:1":3,"shop:2":1}\nsend request /x/Y call=4\n'
    [(host, clock, description)] = parse_log(line)
    assert (host, clock, description) == (
        "bank:1",
        VectorClock({"bank:1": 3, "shop:2": 1}),
        "send request /x/Y call=4",
    )


def test_two_agents_log_matching_sends_and_receives(
    tmp_path: Path, make_agent: Any, serve: Any, open_channel: Any
) -> None:
    client_log, server_log = tmp_path / "client.log", tmp_path / "server.log"
    client = make_agent("client", event_log=client_log)
    server = make_agent("server", event_log=server_log)
    address = serve(echo_service.EchoServicer(), agent=server)
    stub = echo_service.EchoStub(open_channel(address, agent=client))
    assert stub.unary_unary(b"first", timeout=WAIT) == b"first"
    assert list(stub.unary_stream(b"s", timeout=WAIT)) == [b"s"] * 3
    # Concurrent calls: the log order of each process must still follow its clock.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: stub.unary_unary(b"%d" % i, timeout=WAIT), range(12)))
    assert results == [b"%d" % i for i in range(12)]
    client.close(WAIT)
    server.close(WAIT)

    events = parse_log(client_log.read_text("utf-8") + server_log.read_text("utf-8"))
    by_host = check_process_order(events)
    assert set(by_host) == {client.process_id, server.process_id}
    for host, own in by_host.items():
        assert own[0][2] == "Initialization Complete" and own[0][1] == VectorClock({host: 1})
    assert all(set(clock) <= set(by_host) for _, clock, _ in events)

    sends = [
        m.groups()
        for h, _, d in events
        if h == client.process_id and (m := re.fullmatch(r"send request (\S+) call=(\d+)", d))
    ]
    assert len(sends) == 14
    assert {method for method, _ in sends} == {echo_service.UNARY_UNARY, echo_service.UNARY_STREAM}
    for method, call in sends:
        sent = the_event(events, client.process_id, f"send request {method} call={call}")
        received = the_event(
            events, server.process_id, f"receive request {method} call={call} from {client.process_id}"
        )
        assert sent.happened_before(received), (sent, received)
        replied = the_event(events, server.process_id, f"send response {method} call={call}")
        answered = the_event(
            events, client.process_id, f"receive response {method} call={call} from {server.process_id}"
        )
        assert received.happened_before(replied)
        assert replied.happened_before(answered) and sent.happened_before(answered)


def _writer_stuck_on_a_pipe(tmp_path: Path) -> tuple[EventLog, int]:
    """An event log writing into a FIFO nobody reads yet: its writer blocks once the pipe is full."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    return EventLog(fifo, max_queue=2), reader


def _read_until_eof(fd: int) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError("the event log writer never closed its end of the pipe")


def _in_thread(fn: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(WAIT)
    return thread


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_full_queue_drops_and_counts_and_close_is_bounded(tmp_path: Path) -> None:
    log, reader = _writer_stuck_on_a_pipe(tmp_path)
    try:
        # One event larger than any pipe buffer: the writer takes it and blocks.
        log.write("p:1", {"p:1": 1}, "x" * (4 << 20))
        deadline = time.monotonic() + WAIT
        while log._queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log._queue.qsize() == 0 and log._thread.is_alive()
        more = 50

        def write_more() -> None:
            for i in range(more):
                log.write("p:1", {"p:1": i + 2}, f"small {i}")

        assert not _in_thread(write_more).is_alive(), "write() blocked on a full queue"
        assert log.dropped == more - 2, "all but the two the queue holds are dropped and counted"

        assert not _in_thread(log.close, 0.5).is_alive(), "close() did not return"
        assert log._thread.is_alive(), "the writer is still stuck in its write"
        log.write("p:1", {"p:1": 999}, "after close")
        assert log.dropped == more - 2 + 1, "events after close are dropped and counted"

        # Unblocking the pipe lets the abandoned writer finish its write, drop the rest and exit.
        data = _read_until_eof(reader)
        log._thread.join(WAIT)
        assert not log._thread.is_alive()
        events = parse_log(data.decode("utf-8"))
        assert len(events) == 1 and events[0][1] == VectorClock({"p:1": 1})
        assert log.dropped == more + 1
    finally:
        os.close(reader)


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    log = EventLog(path, max_queue=100_000)
    for i in range(20_000):
        log.write("p:1", {"p:1": i + 1}, f"event {i}")
    log.close(WAIT)
    assert not log._thread.is_alive()
    assert log.dropped == 0
    events = parse_log(path.read_text("utf-8"))
    assert [d for _, _, d in events] == [f"event {i}" for i in range(20_000)]
    check_process_order(events)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_write_failures_are_counted_and_never_raise(make_agent: Any) -> None:
    agent = make_agent("diskfull", event_log="/dev/full")
    deadline = time.monotonic() + WAIT
    while agent.stats().event_log_dropped < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert agent.stats().event_log_dropped == 1, "the start event failed to write and was counted"
    agent.close(WAIT)  # must not raise the disk error into the application

    log = EventLog("/dev/full")
    for i in range(5):
        log.write("p:1", {"p:1": i + 1}, "lost")
    log.close(WAIT)
    assert not log._thread.is_alive()
    assert log.dropped == 5
