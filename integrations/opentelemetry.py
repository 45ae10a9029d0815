"""OpenTelemetry glue: the ids of the active span, for tasks and stamps.

cutwatch depends only on ``opentelemetry-api``; with no SDK configured every
span is invalid and the ids are empty.

With opentelemetry-instrumentation-grpc's interceptors, either order works
and trace context propagates. Put OpenTelemetry's server interceptor first
so that a handler's task carries the server span from its start (otherwise
it carries the caller's ids from the stamp until its first outbound call).
On sync channels put OpenTelemetry's client interceptor outside cutwatch's:
it hands unary-stream calls back as bare generators, so an outer cutwatch
cannot read those responses' stamps (they are counted as untracked).
"""

from __future__ import annotations

from opentelemetry import trace

_EMPTY = (b"", b"")


def current_span_ids() -> tuple[bytes, bytes]:
    """(trace id, span id) of the active span as 16 and 8 bytes, or empty."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return _EMPTY
    return span_context.trace_id.to_bytes(16, "big"), span_context.span_id.to_bytes(8, "big")
