"""`dpp relabel`: new masks for a generated corpus from another labeler, rendering nothing.

A better labeler should not cost a new render. Each shard of the output is the same shard of the source
decided again, the way `dpp generate` would have decided it with the new labeler:
1. the stored candidates (kept, and rejected ones where the source kept them) are read back in the
   batches a fresh run would label them in (shard.py's `next_batches`, so the floats are the same);
2. each is labeled by the new head from its stored image and its recorded seed (one UNet pass), and a
   class-conditional generator's foreground becomes the class the sample was drawn as;
3. the label scores (target pixels, fragments, uncertainty) are recomputed, the image scores
   (classifier confidence, realism) are the stored ones, and the keep rules decide block by block;
4. kept samples are written with their image bytes copied unchanged and the new mask.

So where the source holds every candidate a fresh run would need, the output equals a fresh
`dpp generate` with the new labeler on the same seeds (tests/test_relabel.py). A candidate the new
rules would need but whose image was not stored (the source was generated without --keep-rejected) is
recorded as `not_stored`; a shard that runs out of candidates is short, and the summary says by how many.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.storage.reader import decode_png, tar_members
from manifests.storage.staged import WriteResult, write_shards
from manifests.storage.writer import ShardWriter
from pipeline.filtering import rules as filters
from pipeline.filtering import scores as scoring
from pipeline.filtering.refilter import NOT_STORED
from pipeline.filtering.refilter import ROW_FIELDS_REDONE as PLACE_FIELDS
from pipeline.filtering.rules import FilterRules
from pipeline.filtering.scores import Scores
from pipeline.generate.shard import foreground_as_drawn, next_batches
from pipeline.labeling.fewshot import Labeler, label_images, upsample_masks

# manifest columns the writer computes again from the new mask and KEY.json, or that say where it is now
ROW_FIELDS_REDONE = (
    "key", "shard", "kept", "reject_reason", "config_hash", "classes_present", "class_pixel_fraction",
    "width", "height", "image_sha256", "mask_sha256", "json_sha256", "origin", "generation",
)  # fmt: skip


@dataclass(frozen=True)
class RelabelResult:
    result: WriteResult
    summary: str


@dataclass
class _Stored:
    """One candidate of the source shard as a fresh run would meet it: its row, and its image if stored."""

    index: int
    row: dict
    png: bytes | None
    meta: dict | None
    mask: np.ndarray | None = None
    scores: Scores | None = None


def check_source(record: dict, corpus: Path) -> dict:
    """The generate config a relabel needs, or a one-line refusal naming what is wrong."""
    config = record.get("config") or {}
    if config.get("kind") not in ("generate", "relabel"):
        raise UsageError(
            f"{corpus} was not written by dpp generate (or dpp relabel); relabel needs the seeds and images "
            "a generate job stores"
        )
    if len(record.get("history") or []) > 1:
        raise UsageError(
            f"{corpus} holds {len(record['history'])} appended versions with different settings; relabel "
            "works on a corpus written by one dpp generate job"
        )
    if "prompts" in config or "agreement" in config:
        raise UsageError(
            f"{corpus} was drawn by a text-to-image generator; relabel re-labels pixel-generator corpora "
            "with a few-shot head"
        )
    return config


def relabel(
    corpus: Path,
    gen,
    labeler: Labeler,
    out: Path,
    rules: FilterRules | None = None,
    overwrite: bool = False,
    progress=None,
) -> RelabelResult:
    """Relabel `corpus` (written by `dpp generate` with generator `gen`) with `labeler`, keep rules
    `rules` (default: the source's), into a new corpus at `out`."""
    corpus = Path(corpus)
    record = load_corpus(corpus)
    src = check_source(record, corpus)
    if src["generator"] != gen.id:
        raise UsageError(f"{corpus} was drawn by generator {src['generator']}, not {gen.id}")
    classes = list(record["classes"])
    if labeler.classes != classes:
        raise UsageError(
            f"--labeler {labeler.path} labels {', '.join(labeler.classes)}; {corpus} has {', '.join(classes)}"
        )
    rules = rules or FilterRules(**src["rules"])
    n, shard_size, batch = src["n"], src["shard_size"], src["batch_size"]
    conditional = bool(gen.class_names)
    keep_rejected = any("rejected" in s for s in record["shards"])
    config = {
        "kind": "relabel",
        "source": record["corpus_id"],
        "source_config_hash": record["config_hash"],
        "n": n,
        "shard_size": shard_size,
        "batch_size": batch,
        "generator": gen.id,
        "labeler": labeler.id,
        "rules": rules.as_json(),
    }
    stats: Counter = Counter()

    def label(cands: list[_Stored]) -> None:
        """Stage 2-3 for the stored candidates of one batch: new mask and label scores."""
        have = [c for c in cands if c.png is not None]
        if not have:
            return
        images = np.stack([decode_png(c.png, "RGB") for c in have])
        labels = label_images(gen, labeler, images, [c.row["seed"] for c in have])
        masks = upsample_masks(labels.mask, images.shape[1])
        if conditional:
            foreground_as_drawn(masks, [c.row["target_classes"] for c in have], classes)
        for c, m, u in zip(have, masks, labels.score.tolist(), strict=True):
            old = Scores.from_row(c.row, classes)
            tgt = [classes.index(t) for t in c.row["target_classes"] or []]
            c.mask = m
            c.scores = Scores(
                finite=old.finite,
                target_pixels=scoring.target_pixels(m, tgt),
                min_fragment=scoring.min_fragment(m),
                uncertainty=round(u, 6),
                confidence=old.confidence,
                realism=old.realism,
            )

    def fill(shard: int, writer: ShardWriter) -> None:
        info = record["shards"][shard]
        table = read_manifest(manifest_path(corpus, info["name"]))
        rows = {r["index_in_shard"]: r for r in table.to_pylist()}
        members = tar_members(corpus / info["name"])
        if "rejected" in info:
            members.update(tar_members(corpus / info["rejected"]["name"]))
        end = max(rows) + 1 if rows else 0

        def stored(i: int) -> _Stored:
            row = rows.get(i)
            m = members.get(row["key"]) if row else None
            return _Stored(i, row, m and m["png"], m and json.loads(m["json"]))

        need = min(shard_size, n - shard * shard_size)
        kept, start_at, ahead = 0, 0, []
        while kept < need and start_at < end:
            size, batches = next_batches(rules, batch, need - kept, start_at, len(ahead))
            for idx in batches:
                cands = [stored(i) for i in idx if i < end]
                label(cands)
                ahead += cands
            block, ahead = ahead[:size], ahead[size:]
            scored = [c for c in block if c.scores is not None]
            verdicts = filters.decide(rules, [c.scores for c in scored])
            decisions = {c.index: v for c, v in zip(scored, verdicts, strict=True)}
            for c in block:
                base = {k: v for k, v in c.row.items() if k not in ROW_FIELDS_REDONE}
                if c.scores is None:  # rendered by the source but its image was not stored
                    stats[NOT_STORED] += 1
                    row = {k: v for k, v in c.row.items() if k not in PLACE_FIELDS}  # as stored
                    writer.reject_encoded(None, row, NOT_STORED)
                    continue
                base |= {"labeler_id": labeler.id, **c.scores.as_row()}
                meta = {k: v for k, v in c.meta.items() if k not in ("key", "classes_present")}
                meta |= {"labeler": labeler.id, "scores": c.scores.as_row(), "relabeled_from": src["labeler"]}
                image = decode_png(c.png, "RGB")
                reason = decisions[c.index]
                if reason is None and kept < need:
                    writer.add(c.row["key"], image, c.mask, meta, png=c.png, **base)
                    kept += 1
                    if progress is not None:
                        progress(1)
                else:
                    reason = reason or filters.SURPLUS
                    stats[reason] += 1
                    writer.reject(c.row["key"], reason, image, c.mask, meta, png=c.png, **base)
            start_at += size
        stats["kept"] += kept
        stats["short"] += need - kept
        stats["candidates"] += len(rows)

    res = write_shards(
        out,
        len(record["shards"]),
        fill,
        classes,
        config,
        "relabel",
        overwrite,
        keep_rejected,
        generator=record.get("generator"),
        labeler={
            "id": labeler.id,
            "path": None if labeler.path is None else str(labeler.path),
            "support_corpus": labeler.info["support_corpus"],
            "support_keys": labeler.info["support_keys"],
        },
        relabeled_from={"corpus_id": record["corpus_id"], "labeler": record.get("labeler")},
        classifier=record.get("classifier"),
        filter={**(record.get("filter") or {}), "rules": rules.as_json()},
        parents=sorted({record["corpus_id"], labeler.info["support_corpus"]} - {None}),
    )
    if res.already_done:
        return RelabelResult(res, f"{out} already holds this relabeled corpus")
    rejected = {k: v for k, v in stats.items() if k not in ("kept", "short", "candidates")}
    summary = (
        f"relabel: {stats['kept']} of {stats['candidates']} stored candidates kept (planned {n}), "
        f"masks by {labeler.id} (was {src['labeler']})"
    )
    if rejected:
        summary += f"; rejected {filters.describe_reasons(Counter(rejected))}"
    if stats[NOT_STORED]:
        summary += (
            f"; {stats[NOT_STORED]} would be needed but their images were not stored "
            "(generate with --keep-rejected to relabel or refilter with other rules later)"
        )
    if stats["short"]:
        summary += f"; {stats['short']} short of the plan (a fresh dpp generate would render more candidates)"
    return RelabelResult(res, summary)
