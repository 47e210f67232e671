"""Fault injection for the reliability tests (docs/reliability.md): crash or fill the disk at a named point.

    DPP_FAULT="<point>:<action>[@<n>[+]]"   e.g. DPP_FAULT=shard.tar_renamed:kill@2

makes this process fail the n-th time (default: the first) it passes `<point>`, or every time from the
n-th on with `+` (a disk that stays full):
  kill     SIGKILL to itself: a crash, no clean-up code runs (what a power cut or the OOM killer does)
  enospc   raise OSError(ENOSPC), as a write to a full disk would

Points (each placed exactly where the reliability promise is at stake):
  shard.sample        before a kept sample is written into a shard's temporary tar
  shard.tar_renamed   after a shard's tar got its final name, before its manifest (the shard's commit)
  atomic:<file name>  after the temporary copy of a whole-file write (corpus.json, job.json, ...) is
                      fsynced, before it is renamed over the old file

Without DPP_FAULT (always, outside tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "DPP_FAULT"
ACTIONS = ("kill", "enospc")
_hits: Counter = Counter()


def point(name: str) -> None:
    """Pass the fault point `name`; fail here if DPP_FAULT asks for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, rest = spec.rpartition(":")
    if where != name:
        return
    action, _, nth = rest.partition("@")
    if action not in ACTIONS:
        raise ValueError(f"{ENV}={spec!r}: action {action!r} is not one of {', '.join(ACTIONS)}")
    _hits[name] += 1
    n, onwards = int(nth.rstrip("+") or 1), nth.endswith("+")
    if _hits[name] < n or (_hits[name] > n and not onwards):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
