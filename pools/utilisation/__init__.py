"""Observed usage of the pools: what the clusters report, as opposed to what the portal granted.

- figures:    pure computations over node and pod dicts, and the one table of pool figures
- collector:  list+watch caches per cluster, feeding the figures (management command collect_utilisation)
- services:   writes of the live figures and their history tiers; selectors: the reads, scoped per user
- prometheus: the optional per-cluster Prometheus data source (DCGM, vLLM)
- charts, views, forms, urls: the dashboard; metrics: /metrics
"""
