"""Admission of a validated cluster file: everything the worker would do with it, tried before
it replaces the running config, so that a file the director cannot apply is refused like an
invalid one (the running config stays, /status says why, nothing is cached).

Validation (lvsctl.core.config) answers "is this a well-formed cluster file"; admission answers
"can this director run it": it names this director's cluster and this director, the keeper
accepts the leadership settings drawn from it (the channel's own checks), and the reconcile
plan can be made from it (model to plan, with no kernel involved).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lvsctl.core.config import Loaded
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster
from lvsctl.core.records import clip_reason
from lvsctl.director.channel import ChannelError, LeaderConfig, decode, encode
from lvsctl.director.reconcile import desired_table, plan


class Refused(LvsctlError):
    """A validated cluster file this director cannot apply; the message says why (one line,
    at most the records' reason cap)."""

    def __init__(self, reason: str) -> None:
        super().__init__(clip_reason(reason))


def admit(loaded: Loaded, *, cluster: str, director: str,
          leader_config: Callable[[Cluster, str, str], LeaderConfig]) -> LeaderConfig:
    """What the keeper will be sent for ``loaded`` (``leader_config(cluster, director,
    version)``: director/worker.py's), once every step after validation has been tried on
    it. Raises Refused."""
    file = loaded.cluster
    if file.name != cluster:
        raise Refused(f"cluster: the file is for cluster {file.name!r}, this director belongs "
                      f"to {cluster!r} (the node file's cluster)")
    try:
        file.director(director)
    except KeyError:
        raise Refused(f"director {director} is not one of the cluster's directors") from None
    try:
        config = leader_config(file, director, loaded.source)
        # The keeper decodes with the channel's checks: what it would refuse is refused here.
        decode(encode(config)[4:])
        plan(desired_table(file, {}), None, {}, time.monotonic())
    except ChannelError as exc:
        raise Refused(f"the keeper would refuse this file's VIP set: {exc}") from None
    except Exception as exc:  # a file validation let through but the model cannot carry
        raise Refused(f"cannot apply: {type(exc).__name__}: {exc}") from None
    return config
