"""``cutwatch demo``: a collector, a bank and a shop as real OS processes over gRPC on loopback.

``cutwatch.demo.bank`` and ``cutwatch.demo.shop`` are the services (each one
process, run with ``python -m``); ``cutwatch.demo.run`` starts and watches them.
"""
