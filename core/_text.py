"""Text from peers, made safe to show."""

from __future__ import annotations

__all__ = ["shown"]


def shown(text: object, limit: int = 200) -> str:
    """Text from a peer, safe for a log line: control characters escaped, length capped.

    Identifiers are stored exactly as received, but a terminal that shows a
    log must not be steered by escape sequences or fooled by line breaks.
    """
    value = str(text)
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value[:limit])
    return safe + ("..." if len(value) > limit else "")
