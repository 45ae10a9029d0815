"""Glue between cutwatch and other frameworks.

``cutwatch.integrations.opentelemetry``: the ids of the active span, which
tasks and stamps carry, and how to stack cutwatch's interceptors with
opentelemetry-instrumentation-grpc's.
"""
