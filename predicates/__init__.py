"""Predicates over consistent cuts: user invariants, conservation, deadlocks.

Not available yet; see the product specification for what will live here.
"""
