"""Untracked paths, step by step: messages that lost their stamp, through the real event core.

Two processes (:class:`sim.process.SimProcess`, the real :class:`ProcessCore`)
and the real cut assembler, in exactly the orders that once left a COMPLETE
cut that was wrong: a hop drops the stamp of a request (and of its answer),
so that neither side can place it on either side of the cut. Such a cut is
flagged (``untracked``): COMPLETE for its tasks, inconclusive for sums.
"""

from __future__ import annotations

from sim.process import SimProcess

from cutwatch.core import OUTCOME_UNSTAMPED, AssembledCut, CallOutcome, CutAssembler, Inbound, SnapshotEvent


def processes() -> tuple[SimProcess, SimProcess]:
    return SimProcess("a", 100, now=lambda: 0.0), SimProcess("b", 100, now=lambda: 0.0)


def assemble(epoch: int, before: dict[str, int], *procs: SimProcess) -> AssembledCut:
    """Cut ``epoch`` from what ``procs`` emitted, with the flush rounds it asks for answered."""
    assembler = CutAssembler(epoch, [p.pid for p in procs], before)
    pending: list[SnapshotEvent] = [e for p in procs for e in p.drain()]
    while pending:
        for event in pending:
            assembler.add(event)
        due = assembler.next_flush()
        if due is not None:
            for proc in procs:
                proc.core.flush(epoch, due[0], due[1])
        pending = [e for p in procs for e in p.drain()]
    return assembler.finish()


def total(cut: AssembledCut) -> int:
    return sum(int(state["balance"]) for state in cut.states.values())  # type: ignore[index]


def test_a_stripped_request_credited_before_the_receivers_cut_flags_the_cut() -> None:
    """a's cut; a debits and sends; the hop drops the stamp; b credits, then takes its cut. Without
    the count, this cut was COMPLETE, unflagged, with 210 where 200 is right."""
    a, b = processes()
    a.core.take_snapshot(1)
    _, stamp = a.send(("b",), 10)
    assert stamp  # the stamp a sends: the hop drops it
    handler = b.deliver(None, "10")
    b.apply(handler, 10)
    b.core.take_snapshot(1)
    cut = assemble(1, {"a": 0, "b": 0}, a, b)
    assert total(cut) == 210  # what the cut holds is wrong...
    assert (cut.status, cut.untracked) == ("COMPLETE", {"b": 1})  # ...and it says so
    assert b.core.stats().untracked_changes == 1 and a.core.stats().untracked_changes == 0


def test_a_stripped_request_credited_after_the_receivers_cut_asks_for_another_round() -> None:
    """a sends before its cut; b credits after its own: the credit is in transit, and nobody records
    it. a's call is settled by b's answer (without a stamp), which comes after the first flush round:
    the assembler asks for another, whose markers carry b's count after the credit."""
    a, b = processes()
    outbound, _ = a.send(("b",), 10)
    a.core.take_snapshot(1)
    b.core.take_snapshot(1)
    assembler = CutAssembler(1, ["a", "b"], {"a": 0, "b": 0})
    for event in [*a.drain(), *b.drain()]:
        assembler.add(event)
    assert assembler.next_flush() == (1, ())
    for proc in (a, b):
        proc.core.flush(1, 1)
    for event in [*a.drain(), *b.drain()]:
        assembler.add(event)
    assert assembler.status() == "PENDING"  # a's call is open at its cut
    handler = b.deliver(None, "10")
    b.apply(handler, 10)
    assert b.answer(handler, 0)  # b stamps its answer; the hop drops that stamp too
    a.receive(outbound, None, 0)
    events = a.drain()
    assert events == [CallOutcome(1, "a", outbound.call.call_id, OUTCOME_UNSTAMPED, "")]
    assembler.add(events[0])
    assert assembler.status() == "PENDING"  # settled, but b's count must be read again
    assert assembler.next_flush() == (2, ())
    for proc in (a, b):
        proc.core.flush(1, 2)
    for event in [*a.drain(), *b.drain()]:
        assembler.add(event)
    cut = assembler.finish()
    assert total(cut) == 190 and cut.in_transit == ()  # the credit is nowhere in the cut...
    # ...and the cut says so: b's credit and its answer's block (each atomic() block of the handler),
    # and the answer a received without a stamp.
    assert cut.status == "COMPLETE" and cut.untracked == {"a": 1, "b": 2}


def test_unstamped_calls_that_change_no_state_do_not_spoil_cuts() -> None:
    """A health check or a read by a client without an agent: no ``atomic()`` block, nothing counted."""
    a, b = processes()
    b.core.take_snapshot(1)
    for _ in range(3):
        read = b.deliver(None, "{}")
        assert isinstance(read.inbound, Inbound)
        assert b.core.end_handler(read.inbound)  # answered, stamped, without entering atomic()
    a.core.take_snapshot(1)
    assert b.core.stats().untracked_changes == 0 and b.core.stats().requests_received == 3
    cut = assemble(1, {"a": 0, "b": 0}, a, b)
    assert cut.status == "COMPLETE", cut.reasons


def test_every_atomic_block_of_an_unstamped_request_counts() -> None:
    """A handler of a request without a stamp may change state in several blocks (a credit, then a
    refund in its answer): each one is a change no cut can place."""
    _, b = processes()
    handler = b.deliver(None, "10")
    b.apply(handler, 10)
    b.apply(handler, 5)
    b.answer(handler, 3)
    assert b.core.stats().untracked_changes == 3


def test_an_answer_without_a_stamp_is_untracked_unless_no_agent_is_expected() -> None:
    """Nothing in an answer without a stamp tells an uninstrumented server from an agent behind a hop
    that drops stamps: it counts, unless the application said that no agent runs behind the channel,
    and that channel never answered with a stamp (nor with a stamp for another call)."""
    a, b = processes()
    fresh, _ = a.send(("b",), 1)
    a.receive(fresh, None, 0)
    assert a.core.stats().untracked_changes == 1  # no evidence either way: it may have lost a stamp

    external, _ = a.send(("x",), 1, uninstrumented=True)
    a.receive(external, None, 0)
    assert a.core.stats().untracked_changes == 1  # expected: x runs no agent

    agent, stamp = a.send(("b", "x"), 1, uninstrumented=True)  # said to be uninstrumented, wrongly
    handler = b.deliver(stamp, "1")
    a.receive(agent, b.answer(handler, 0), 0)  # a stamped answer: an agent is behind it after all
    later, _ = a.send(("b", "x"), 1, uninstrumented=True)
    a.receive(later, None, 0)
    assert a.core.stats().untracked_changes == 2

    other, _ = a.send(("y",), 1, uninstrumented=True)  # its request loses its stamp on the way
    stripped = b.deliver(None, "1")
    a.receive(other, b.answer(stripped, 0), 0)  # b's answer is stamped, for no call of a's
    assert a.core.stats().untracked_changes == 3
    assert a.core.stats().untracked_malformed == 1


def test_changes_before_the_snapshot_started_do_not_count_against_it() -> None:
    """The collector measures from each agent's count as it last saw it before the snapshot started."""
    a, b = processes()
    handler = b.deliver(None, "10")
    b.apply(handler, 10)
    for proc in (a, b):
        proc.core.take_snapshot(1)
    first = assemble(1, {"a": 0, "b": 0}, a, b)
    assert first.status == "COMPLETE" and first.untracked == {"b": 1}  # it may have been in its window
    for proc in (a, b):
        proc.core.take_snapshot(2)
    second = assemble(2, {"a": 0, "b": 1}, a, b)  # b's count as the first cut reported it
    assert (second.status, second.untracked) == ("COMPLETE", {})
    assert total(second) == 210  # money from outside, received before the cut: the cut is right
