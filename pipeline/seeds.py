"""Per-sample seeds: a pure function of (job seed, shard index, index within shard)."""

from __future__ import annotations

import hashlib


def sample_seed(job_seed: int, shard: int, index: int) -> int:
    """A 63-bit seed for one sample; independent of batch size, batch order and worker count."""
    if job_seed < 0 or shard < 0 or index < 0:
        raise ValueError(
            f"seeds need non-negative parts, got job_seed={job_seed} shard={shard} index={index}"
        )
    digest = hashlib.blake2b(f"dpp-sample:{job_seed}:{shard}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
