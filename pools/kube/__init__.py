"""The cluster layer: the only code in the portal that talks to Kubernetes.

- client:  a cached API connection per Cluster, from its encrypted credentials
- errors:  typed errors (temporary vs permanent) carrying the apiserver's own reason
- ops:     server-side apply with one field manager, get, list, delete
- discovery, conformance: pure functions over node and pod dicts (inventory, contract report)
Manifest builders elsewhere are pure functions that return dicts; they never import this package.
"""
