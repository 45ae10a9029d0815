"""The one base for cutwatch's proxies of gRPC call and context objects.

wrapt's ``ObjectProxy`` is generic for type checkers from wrapt 2, but wrapt
1.x (which OpenTelemetry's instrumentations still require) cannot be
subscripted at run time; so the subscripted form exists for mypy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import wrapt

if TYPE_CHECKING:
    from typing import TypeAlias

    ObjectProxy: TypeAlias = wrapt.ObjectProxy[Any]
else:
    ObjectProxy = wrapt.ObjectProxy

__all__ = ["ObjectProxy"]
