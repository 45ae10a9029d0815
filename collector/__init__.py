"""The collector: snapshot coordination, cut assembly, storage and queries.

Not available yet as a service. What exists is the pure core of cut
assembly (``_assembly``): completion by message counting (requests per
sender, responses per channel) and the vector-clock consistency check, tested by the seeded simulation in
tests/sim. The gRPC service, storage and ``CollectorClient`` come next.
"""
