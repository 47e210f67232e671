"""`dpp refilter`: re-apply other keep rules to a generated corpus's stored scores, rendering nothing.

Each shard of the output is the same shard of the source decided again: its candidates' manifest rows
(kept and rejected, with their scores) go through `pipeline.filtering.rules.decide` block by block, exactly as
`dpp generate` decided them, and the first `shard size` that pass are kept. Their tar members are
copied byte for byte, so where the source holds every candidate a fresh run would need, the output's
shards are identical to a fresh `dpp generate` with the new rules. Candidates that pass but whose
image was not stored (the source was generated without --keep-rejected) are recorded as `not_stored`;
a shard that runs out of candidates is short, and the summary says by how many.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.storage.reader import tar_members
from manifests.storage.staged import WriteResult, write_shards
from manifests.storage.writer import ShardWriter
from pipeline.filtering import rules as filters
from pipeline.filtering.rules import FilterRules
from pipeline.filtering.scores import Scores

NOT_STORED = "not_stored"
ROW_FIELDS_REDONE = ("shard", "kept", "reject_reason", "config_hash")


@dataclass(frozen=True)
class RefilterResult:
    result: WriteResult
    summary: str


def refilter(
    corpus: Path, out: Path, rules: FilterRules, overwrite: bool = False, quiet: bool = False
) -> RefilterResult:
    corpus = Path(corpus)
    record = load_corpus(corpus)
    src = record["config"]
    n, shard_size = src["n"], src["shard_size"]
    classes = list(record["classes"])
    keep_rejected = any("rejected" in s for s in record["shards"])
    config = {
        "kind": "refilter",
        "source": record["corpus_id"],
        "source_config_hash": record["config_hash"],
        "n": n,
        "shard_size": shard_size,
        "rules": rules.as_json(),
    }
    stats: Counter = Counter()

    def fill(shard: int, writer: ShardWriter) -> None:
        info = record["shards"][shard]
        stem = Path(info["name"]).stem
        rows = read_manifest(manifest_path(corpus, stem)).to_pylist()
        rows.sort(key=lambda r: r["index_in_shard"])
        members = tar_members(corpus / info["name"])
        if "rejected" in info:
            members.update(tar_members(corpus / info["rejected"]["name"]))
        decisions: list[str | None] = []
        for b in range(0, (rows[-1]["index_in_shard"] + 1) if rows else 0, rules.block):
            group = [r for r in rows if b <= r["index_in_shard"] < b + rules.block]
            decisions += filters.decide(rules, [Scores.from_row(r, classes) for r in group])
        need = min(shard_size, n - shard * shard_size)
        kept = 0
        for row, reason in zip(rows, decisions, strict=True):
            base = {k: v for k, v in row.items() if k not in ROW_FIELDS_REDONE}
            m = members.get(row["key"])
            if reason is None and kept < need:
                if m is None:
                    stats[NOT_STORED] += 1
                    writer.reject_encoded(None, base, NOT_STORED)
                    continue
                writer.add_encoded(m, base)
                kept += 1
            else:
                stats[reason or filters.SURPLUS] += 1
                writer.reject_encoded(m, base, reason or filters.SURPLUS)
        stats["kept"] += kept
        stats["short"] += need - kept
        stats["candidates"] += len(rows)

    res = write_shards(
        out,
        len(record["shards"]),
        fill,
        classes,
        config,
        "refilter",
        overwrite,
        keep_rejected,
        generator=record.get("generator"),
        labeler=record.get("labeler"),
        classifier=record.get("classifier"),
        filter={**(record.get("filter") or {}), "rules": rules.as_json()},
        parents=[record["corpus_id"]],
    )
    if res.already_done:
        return RefilterResult(res, f"{out} already holds this refiltered corpus")
    rejected = {k: v for k, v in stats.items() if k not in ("kept", "short", "candidates")}
    summary = f"refilter: kept {stats['kept']} of {stats['candidates']} stored candidates (planned {n})"
    if rejected:
        summary += f"; rejected {filters.describe_reasons(Counter(rejected))}"
    if stats[NOT_STORED]:
        summary += (
            f"; {stats[NOT_STORED]} pass the new rules but their images were not stored "
            "(generate with --keep-rejected to loosen rules later)"
        )
    if stats["short"]:
        summary += f"; {stats['short']} short of the plan (a fresh dpp generate would render more candidates)"
    return RefilterResult(res, summary)
