"""Random computations for the lattice tests: processes that record values and exchange messages.

:func:`windows` draws a small distributed computation (up to 4 processes, up
to 8 recorded events each, messages delivered in any order) and returns the
:class:`Window` the collector would build for it: every process's values at
the bottom and its recorded events with their vector clocks. Sends and
receives are not recorded events; they only order the recorded ones, as in
a real agent.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cutwatch.predicates._window import Event, History, Window

NAMES = ("x", "leader")
"""An integer and a boolean state name."""

_action = st.tuples(
    st.integers(0, 3),  # the process acting (modulo how many there are)
    st.sampled_from(("record", "record", "send", "receive", "receive")),
    st.integers(-3, 3),  # the new value of x, or which pending message to take
    st.integers(0, 3),  # the receiver of a send; whether a record sets leader
)
_actions = st.lists(_action, min_size=6, max_size=80)


def build_window(
    n: int,
    actions: list[tuple[int, str, int, int]],
    starts: list[dict[str, int | bool]],
    *,
    max_events: int = 8,
    service: str = "svc",
) -> Window:
    """Play ``actions`` on ``n`` processes and return the window of their recorded events."""
    procs = [f"p{i}" for i in range(n)]
    clocks: list[dict[str, int]] = [{} for _ in procs]
    pending: list[list[dict[str, int]]] = [[] for _ in procs]
    events: list[list[Event]] = [[] for _ in procs]
    current: list[dict[str, int | bool]] = [dict(s) for s in starts]
    for who, kind, value, other in actions:
        i = who % n
        me = procs[i]
        if kind == "record":
            if len(events[i]) >= max_events:
                continue
            clocks[i][me] = clocks[i].get(me, 0) + 1
            changed: dict[str, int | bool] = {"x": value}
            if other % 2:
                changed["leader"] = not current[i].get("leader", False)
            current[i].update(changed)
            events[i].append(Event(dict(clocks[i]), changed, seq=len(events[i])))
        elif kind == "send":
            clocks[i][me] = clocks[i].get(me, 0) + 1
            pending[other % n].append(dict(clocks[i]))
        elif pending[i]:
            message = pending[i].pop(value % len(pending[i]))
            for pid, seen in message.items():
                clocks[i][pid] = max(clocks[i].get(pid, 0), seen)
            clocks[i][me] = clocks[i].get(me, 0) + 1
    histories = [History(procs[i], service, starts[i], tuple(events[i])) for i in range(n)]
    return Window(histories, bottom_epoch=1, top_epoch=2)


@st.composite
def windows(draw: st.DrawFn, max_processes: int = 4, max_events: int = 8) -> Window:
    """A random window: 1..``max_processes`` processes, each with 0..``max_events`` recorded events."""
    n = draw(st.integers(1, max_processes))
    starts = []
    for _ in range(n):
        present = draw(st.booleans()) or draw(st.booleans())  # most processes hold values at the bottom
        starts.append({"x": draw(st.integers(-3, 3)), "leader": draw(st.booleans())} if present else {})
    # Left to itself a list strategy mostly draws short lists, hence tiny windows; a drawn length
    # gives as many medium-sized windows (most processes recording several events) as small ones,
    # and still shrinks toward small ones.
    length = draw(st.one_of(st.integers(6, 24), st.integers(24, max(24, 3 * n * max_events))))
    actions = draw(st.lists(_action, min_size=length, max_size=length))
    return build_window(n, actions, starts, max_events=max_events)
