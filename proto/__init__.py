"""Protocol buffers of cutwatch and their generated code.

``stamp.proto`` is the wire stamp (written and parsed by hand on the RPC
path, see ``cutwatch.agent._wire``); ``collector.proto`` is the collector
service: agents' control streams, snapshots, queries and check results.
Regenerate with ``python scripts/generate_proto.py``.
"""
