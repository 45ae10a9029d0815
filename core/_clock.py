"""Vector clocks: an immutable value type with the happened-before order.

``VectorClock`` is what the agent hands out (``agent.clock``) and what tests
reason about. A process's own running clock is a ``LocalClock``, a
mutable, append-only table whose insertion order is the dictionary order the
stamp codec relies on (index 0 is the owning process).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

__all__ = ["LocalClock", "VectorClock"]


class VectorClock(Mapping[str, int]):
    """An immutable vector clock: process id -> counter; missing ids count 0."""

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        cleaned: dict[str, int] = {}
        for pid, value in items:
            if value < 0:
                raise ValueError(f"clock entry for {pid!r} is negative: {value}")
            if value:
                cleaned[pid] = int(value)
        self._entries = cleaned
        self._hash: int | None = None

    # Mapping protocol -----------------------------------------------------
    def __getitem__(self, pid: str) -> int:
        return self._entries[pid]

    def get(self, pid: str, default: int = 0) -> int:  # type: ignore[override]
        return self._entries.get(pid, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        inner = ", ".join(f"{pid!r}: {v}" for pid, v in sorted(self._entries.items()))
        return f"VectorClock({{{inner}}})"

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._entries.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VectorClock):
            return self._entries == other._entries
        if isinstance(other, Mapping):
            return self._entries == {k: v for k, v in other.items() if v}
        return NotImplemented

    # Algebra ----------------------------------------------------------------
    def tick(self, pid: str) -> VectorClock:
        """The clock after one local event of ``pid``."""
        entries = dict(self._entries)
        entries[pid] = entries.get(pid, 0) + 1
        return VectorClock(entries)

    def merge(self, other: Mapping[str, int]) -> VectorClock:
        """Entry-wise maximum (the least upper bound)."""
        entries = dict(self._entries)
        for pid, value in other.items():
            if value > entries.get(pid, 0):
                entries[pid] = value
        return VectorClock(entries)

    def __le__(self, other: Mapping[str, int]) -> bool:
        """True when every entry is <= the other's (self happened before or equals)."""
        return all(value <= other.get(pid, 0) for pid, value in self._entries.items())

    def __lt__(self, other: Mapping[str, int]) -> bool:
        return self.happened_before(other)

    def __ge__(self, other: Mapping[str, int]) -> bool:
        return VectorClock(other) <= self

    def __gt__(self, other: Mapping[str, int]) -> bool:
        return VectorClock(other).happened_before(self)

    def happened_before(self, other: Mapping[str, int]) -> bool:
        """Lamport's ->: self <= other and self != other."""
        return self <= other and self != VectorClock(other)

    def concurrent(self, other: Mapping[str, int]) -> bool:
        """Neither happened before the other and they differ."""
        other_clock = VectorClock(other)
        return not (self <= other_clock) and not (other_clock <= self)


class LocalClock:
    """A process's own running clock; not thread-safe (the process event core locks it).

    Entries are never removed, so the index of a process id is stable for
    the life of the process: the stamp codec sends values in this order.
    """

    __slots__ = ("_index", "names", "values")

    def __init__(self, owner: str) -> None:
        self.names: list[str] = [owner]
        self.values: list[int] = [0]
        self._index: dict[str, int] = {owner: 0}

    def tick(self) -> None:
        self.values[0] += 1

    def index_of(self, pid: str) -> int:
        index = self._index.get(pid)
        if index is None:
            index = len(self.names)
            self._index[pid] = index
            self.names.append(pid)
            self.values.append(0)
        return index

    def merge(self, entries: Iterable[tuple[str, int]]) -> None:
        values = self.values
        for pid, value in entries:
            index = self.index_of(pid)
            if value > values[index]:
                values[index] = value

    def merge_peer(self, entries: Iterable[tuple[str, int]], max_entries: int) -> int:
        """Merge a peer's entries, ignoring any claim about our own entry.

        A peer cannot know more of this process than it does itself; such a
        claim (a bug or a forged stamp) must not move our counter. New
        process ids past ``max_entries`` are refused, so no peer can grow
        this clock (and every stamp we send) without bound; returns how many
        were refused.
        """
        index, names, values = self._index, self.names, self.values
        refused = 0
        for pid, value in entries:
            i = index.get(pid)
            if i is None:
                if len(names) >= max_entries:
                    refused += 1
                    continue
                index[pid] = len(names)
                names.append(pid)
                values.append(value)
            elif i and value > values[i]:
                values[i] = value
        return refused

    def snapshot(self) -> VectorClock:
        return VectorClock(zip(self.names, self.values, strict=True))

    def __len__(self) -> int:
        return len(self.names)
