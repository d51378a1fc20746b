"""The core: the frozen model, the cluster and node files, errors, and the ZooKeeper store.

It imports no engine (director, healthcheck, failover, templates) and no face.
"""
