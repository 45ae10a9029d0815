"""Errors raised by the agent.

    CutwatchError
    ├── StampError          a stamp could not be decoded or breaks a limit
    └── AgentStateError     the agent was used in a state that does not allow it

None of these ever reaches an application RPC: interceptors catch them,
count them and let the call through.
"""

from __future__ import annotations


class CutwatchError(Exception):
    """Base class of every error cutwatch raises."""


class StampError(CutwatchError):
    """A stamp is malformed, from an unsupported version, or over a limit."""


class AgentStateError(CutwatchError):
    """The agent was asked for something its current state does not allow."""
