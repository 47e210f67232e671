"""`dpp reproduce`: one generated sample rendered again from its recorded seed, models and settings,
labeled again, and compared byte for byte with what the corpus stores.

A sample is a function of its seed (pipeline/seeds.py) and of the job that drew it: the job is rebuilt
from the config of the corpus version that wrote the sample (an appended sample has its own), and that
rebuilt job must hash as recorded before anything is drawn. Its pixels do not depend on the other
samples of its batch, but float results do, a little (one level of one pixel, now and then), so the
sample is rendered again in the batch it was rendered in: shard.py's schedule replayed from the
manifest's decisions (`shard_batches`).
The models are found where corpus.json says (or where the caller points) and must still carry the
recorded ids; a model that cannot be found is refused, never replaced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from labelers import cross_attention
from labelers.cross_attention import AttentionLabelerConfig, CrossAttentionLabeler
from manifests.errors import DppError, UsageError, first_line
from manifests.format.layout import manifest_path, shard_name
from manifests.format.record import first_history, load_corpus, read_manifest
from manifests.format.schema import KEY_RE
from manifests.storage.reader import decode_png, tar_members
from manifests.storage.writer import class_stats, encode_png, sha256_bytes
from pipeline.generate.job import Job, config_from_record
from pipeline.generate.settings import ShardPlan
from pipeline.generate.shard import render_batch, sample_record, shard_batches

SYNTHETIC_KEY = re.compile(r"^syn-(\d{6})-(\d{6})$")  # shard.py:sample_record's keys
ROW_FIELDS = (  # manifest columns a re-render recomputes (the rest say where and whether it was kept)
    "index_in_shard", "origin", "generation", "source", "classes_present", "class_pixel_fraction", "width",
    "height", "image_sha256", "mask_sha256", "json_sha256", "seed", "generator_id", "labeler_id",
    "target_classes", "label_uncertainty", "classifier_confidence", "realism_distance", "min_fragment_pixels",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ReproduceRequest:
    """What to re-render and where to find its models when corpus.json does not say (or they moved)."""

    corpus: Path
    key: str
    device: str = "auto"
    dtype: str = "float32"
    allow_pickle: bool = False
    allow_device_change: bool = False  # compare even where the corpus records another device or dtype
    generator: str | None = None  # where the recorded generator is now (its id must match)
    labeler: Path | None = None  # the recorded labeler's folder
    classifier: Path | None = None  # the recorded classifier's folder (corpus.json keeps only its id)
    real: Path | None = None  # the recorded realism reference corpus (corpus.json keeps only its id)


@dataclass(frozen=True)
class Part:
    """One compared part of the sample: `same` is None where nothing stored could be compared."""

    name: str
    same: bool | None
    detail: str


@dataclass
class Reproduction:
    """A re-rendered sample beside what the corpus stores, part by part."""

    key: str
    corpus: Path
    classes: list[str]
    version: int  # the corpus version whose job drew the sample
    status: str  # "kept" or "rejected (REASON)"
    shard: int
    index: int
    seed: int
    models: list[tuple[str, str]]  # (what, where it was found or why it is absent)
    device: str  # what was recorded about the device against what was used
    image: np.ndarray
    mask: np.ndarray
    stored_image: np.ndarray | None = None
    stored_mask: np.ndarray | None = None
    parts: list[Part] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what was not recomputed, and why

    @property
    def differs(self) -> list[str]:
        return [p.name for p in self.parts if p.same is False]

    @property
    def identical(self) -> bool:
        return not self.differs


def reproduce(req: ReproduceRequest) -> Reproduction:
    """Render `req.key` of `req.corpus` again and compare it with the stored sample. Refuses (UsageError)
    a key that is not a generated sample of this corpus, and a model that cannot be found or no longer
    has its recorded id; a difference in bytes is a result, not an error."""
    # 1. check inputs: the corpus and the sample's manifest row
    if not KEY_RE.fullmatch(req.key):
        raise UsageError(f"key {req.key!r} is not allowed; sample keys match [A-Za-z0-9_-]+")
    corpus = Path(req.corpus)
    record = load_corpus(corpus)
    info, row, rows = _find_row(corpus, record, req.key)
    if row["origin"] != "synthetic" or row["source"] != "generate" or row["source_corpus"]:
        where = f" from {row['source_corpus']} (as {row['source_key']})" if row["source_corpus"] else ""
        raise UsageError(
            f"{req.key} in {corpus} is a {row['origin']} sample written by {row['source']}{where}; only "
            "samples rendered by dpp generate into this corpus can be rendered again"
        )
    # 2. the job that drew it: the config of the version that wrote it, and that version's provenance
    version, config, prov = _job_record(record, row, corpus)
    # 3. its models, found and checked against the recorded ids
    models: list[tuple[str, str]] = []
    gen = _generator(req, config, prov, models)
    device = _check_device(req, _rendered_on(corpus, info, prov), gen)
    labeler = _labeler(req, config, prov, gen, record, models)
    guide = _guide(req, config, prov, gen, models)
    realism = _realism(req, config, prov, gen, models)
    # 4. the job rebuilt from the config; it must hash as recorded
    job = _rebuild(config, corpus, gen, labeler, guide, realism, row["config_hash"])
    shard, index = int(row["shard"].removeprefix("shard-")), int(row["index_in_shard"])
    plan = ShardPlan(shard, 1, index + 1, int(config["seed"]))
    if plan.seed(index) != row["seed"]:
        raise DppError(
            f"{req.key}: the manifest records seed {row['seed']}, but sample_seed({config['seed']}, {shard}, "
            f"{index}) is {plan.seed(index)}; the manifest row does not belong to this job"
        )
    # 5. render, label and score it again, in the batch it was rendered in
    kept = [r["kept"] for r in sorted(rows, key=lambda r: r["index_in_shard"])]
    batch = next(
        (b for b in shard_batches(job.cfg.rules, job.cfg.batch_size, sum(kept), kept) if index in b), None
    )
    if batch is None:
        raise DppError(f"{req.key}: candidate {index} is not in the batches its shard's decisions give")
    cand = next(c for c in render_batch(job, plan, batch) if c.index == index)
    unchecked = []
    if realism is None and config.get("realism_reference"):  # not recomputed: the stored value stands
        cand.scores = replace(cand.scores, realism=row["realism_distance"])
        unchecked.append("the realism score (taken as stored; --real FOLDER recomputes it)")
    key, meta, fields = sample_record(job, shard, cand)
    png, seg = encode_png(np.ascontiguousarray(cand.image)), encode_png(cand.mask)
    present, fractions = class_stats(cand.mask, job.classes)
    meta = {"key": key, "classes_present": present, **meta}
    js = (json.dumps(meta, sort_keys=True) + "\n").encode()  # as manifests/storage/writer.py encodes it
    # 6. compare with what the corpus stores
    members = _stored_members(corpus, info, row)
    status = "kept" if row["kept"] else f"rejected ({row['reject_reason']})"
    rep = Reproduction(
        req.key, corpus, list(record["classes"]), version, status, shard, index, row["seed"], models, device,
        cand.image, cand.mask, unchecked=unchecked,
    )  # fmt: skip
    if members is None:
        why = "not stored (rejected without --keep-rejected)"
        rep.parts += [Part("image", None, why), Part("mask", None, why), Part("KEY.json", None, why)]
    else:
        rep.stored_image = decode_png(members["png"], "RGB")
        rep.stored_mask = decode_png(members["seg.png"], "L")
        rep.parts.append(_compare_image(png, members["png"], cand.image, rep.stored_image))
        rep.parts.append(_compare_mask(seg, members["seg.png"], cand.mask, rep.stored_mask))
        rep.parts.append(_compare_json(js, members["json"]))
    stored = row["image_sha256"] is not None  # the row holds the members' hashes where they were stored
    hashes = (sha256_bytes(png), sha256_bytes(seg), sha256_bytes(js)) if stored else (None, None, None)
    mine = {
        **fields,
        **dict(zip(("image_sha256", "mask_sha256", "json_sha256"), hashes, strict=True)),
        "classes_present": present,
        "class_pixel_fraction": fractions,
        "width": int(cand.mask.shape[1]),
        "height": int(cand.mask.shape[0]),
        "origin": meta["origin"],
        "generation": meta["generation"],
    }
    rep.parts.append(_compare_row(mine, row))
    return rep


# --- the sample and the job that drew it -------------------------------------------------------


def _find_row(corpus: Path, record: dict, key: str) -> tuple[dict, dict, list[dict]]:
    """The shard record, manifest row and all manifest rows of the shard of `key` (the shard its name
    gives is read first, then every shard)."""
    shards = list(record["shards"])
    m = SYNTHETIC_KEY.fullmatch(key)
    if m:
        named = f"{shard_name(int(m.group(1)))}.tar"
        shards.sort(key=lambda s: Path(s["name"]).name != named)
    candidates, first = 0, None
    for info in shards:
        rows = read_manifest(manifest_path(corpus, info["name"]), record["classes"]).to_pylist()
        for r in rows:
            if r["key"] == key:
                return info, r, rows
        candidates += len(rows)
        first = first or (rows[0]["key"] if rows else None)
    listed = f", e.g. {first}" if first else ""
    tar = corpus / (record["shards"][0]["name"] if record["shards"] else "shards/shard-000000.tar")
    raise UsageError(
        f"no sample {key!r} in {corpus} ({candidates} keys{listed}); `tar tf {tar}` lists a shard's kept "
        f"samples, the key column of {corpus}/manifest/*.parquet every candidate"
    )


def _job_record(record: dict, row: dict, corpus: Path) -> tuple[int, dict, dict]:
    """(version, config, provenance) of the corpus version whose job wrote `row`. An appended version's
    config is in its history entry; provenance it does not record itself is the first version's when
    that names the same model ids."""
    chash = row["config_hash"]
    for entry in record.get("history") or [first_history(record)]:
        if entry.get("config_hash") != chash:
            continue
        config = entry.get("config") or (record["config"] if record["config_hash"] == chash else None)
        if config is None:
            break
        prov = {"rendered_on": entry.get("rendered_on")}
        for what in ("generator", "labeler", "classifier", "filter"):
            mine = entry.get(what)
            prov[what] = mine if isinstance(mine, dict) else record.get(what)
        return int(entry.get("version", 1)), config, prov
    kind = (record.get("config") or {}).get("kind", "unknown")
    parents = ", ".join(record.get("parents") or []) or "none recorded"
    raise UsageError(
        f"{row['key']} was written by a job (config hash {chash}) that {corpus}/corpus.json does not record; "
        f"the corpus was written by dpp {kind} (parents: {parents}); reproduce it in the corpus that "
        "generated it"
    )


# --- its models --------------------------------------------------------------------------------


def _recorded(prov: dict, what: str, model_id: str) -> dict:
    """The provenance entry of `what` when it describes the model with this id, else {}."""
    entry = prov.get(what) or {}
    return entry if entry.get("id") == model_id else {}


def _generator(req: ReproduceRequest, config: dict, prov: dict, models: list):
    from pipeline.diffusion.load import load_generator
    from pipeline.models import SHIPPED_GENERATORS

    gid = config["generator"]
    spec = req.generator or _recorded(prov, "generator", gid).get("source")
    hint = "pass --generator FOLDER (or a shipped name, or a hub id) that holds it"
    if spec is None:
        raise UsageError(
            f"generator {gid} cannot be found: the corpus does not record where it came from; {hint}"
        )
    spec = str(spec)
    hub_like = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if spec not in SHIPPED_GENERATORS and not Path(spec).expanduser().exists() and not hub_like:
        raise UsageError(f"generator {gid} cannot be found: {spec} does not exist; {hint}")
    try:
        gen = load_generator(spec, req.device, req.dtype, req.allow_pickle)
    except UsageError as e:
        if str(e).startswith("--device") or str(e).startswith("--dtype"):
            raise
        raise UsageError(f"generator {gid} cannot be loaded from {spec}: {first_line(e)}") from None
    if gen.id != gid:
        raise UsageError(
            f"generator {gid} cannot be found: {spec} now holds {gen.id} (other weights); {hint}"
        )
    models.append(("generator", f"{gid} from {spec}"))
    return gen


def _rendered_on(corpus: Path, info: dict, prov: dict) -> dict | None:
    """Where the sample's shard was rendered: its manifest's footer says (the generate job records the
    device type and dtype of every shard), else its version's history entry when that names one place;
    None for corpora written before either was recorded."""
    import pyarrow.parquet as pq

    try:
        meta = json.loads(pq.read_schema(manifest_path(corpus, info["name"])).metadata[b"dpp"])
        if isinstance(meta.get("rendered_on"), dict):
            return meta["rendered_on"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    places = prov.get("rendered_on") or []
    return places[0] if len(places) == 1 and isinstance(places[0], dict) else None


def _check_device(req: ReproduceRequest, recorded: dict | None, gen) -> str:
    """The device line. Where the corpus records the device and dtype, re-rendering elsewhere is refused
    unless asked for: the bytes are promised on the same device and dtype only."""
    from pipeline.diffusion.common import DTYPES

    now = {"device": gen.device.type, "dtype": next(k for k, v in DTYPES.items() if v == gen.dtype)}
    used = f"{now['device']}, {now['dtype']}"
    if recorded is None:
        return f"not recorded; re-rendered on {used}"
    then = {"device": recorded.get("device"), "dtype": recorded.get("dtype")}
    if then == now:
        return f"{used}, as recorded"
    if not req.allow_device_change:
        raise UsageError(
            f"{req.key} was rendered on {then['device']}, {then['dtype']}; here it would be rendered on "
            f"{used}, whose floats differ a little; pass --device {then['device']} --dtype "
            f"{then['dtype']}, or --allow-device-change to compare anyway"
        )
    return f"rendered on {then['device']}, {then['dtype']}; re-rendered on {used} (--allow-device-change)"


def _labeler(req: ReproduceRequest, config: dict, prov: dict, gen, record: dict, models: list):
    from pipeline.labeling.fewshot import load_labeler

    lid = config["labeler"]
    if lid.startswith(f"{cross_attention.NAME}@"):  # zero-shot: rebuilt from the classes and its rules
        tried = [AttentionLabelerConfig()]
        if config.get("agreement"):
            tried.append(AttentionLabelerConfig(**config["agreement"]))
        for rules in tried:
            lab = CrossAttentionLabeler(list(record["classes"]), rules)
            if lab.id == lid:
                models.append(("labeler", f"{lid} (zero-shot, thresholds {rules.low}/{rules.high})"))
                return lab
        raise UsageError(
            f"labeler {lid} cannot be rebuilt: the corpus does not record its attention thresholds, and the "
            "default ones give another labeler"
        )
    folder = req.labeler or _recorded(prov, "labeler", lid).get("path")
    hint = "pass --labeler FOLDER that holds it"
    if folder is None:
        raise UsageError(f"labeler {lid} cannot be found: the corpus does not record its folder; {hint}")
    if not Path(folder).is_dir():
        raise UsageError(f"labeler {lid} cannot be found: {folder} does not exist; {hint}")
    try:
        lab = load_labeler(Path(folder), gen)
    except UsageError as e:
        raise UsageError(f"labeler {lid} cannot be loaded from {folder}: {first_line(e)}") from None
    if lab.id != lid:
        raise UsageError(
            f"labeler {lid} cannot be found: {folder} now holds {lab.id} (other weights); {hint}"
        )
    models.append(("labeler", f"{lid} from {folder}"))
    return lab


def _guide(req: ReproduceRequest, config: dict, prov: dict, gen, models: list):
    from labelers.classifier import INFO_FILE, classifier_id
    from pipeline.guidance.classifier import alphas_cumprod, load_classifier
    from pipeline.guidance.guide import Guide
    from pipeline.models import SHIPPED_CLASSIFIERS

    cid = config.get("classifier")
    if cid is None:
        models.append(("classifier", "none"))
        return None
    hint = "pass --classifier FOLDER that holds it"
    recorded = _recorded(prov, "classifier", cid).get("path")
    if req.classifier is not None:
        folders = [Path(req.classifier)]
    else:
        folders = [Path(p) for p in (recorded, *SHIPPED_CLASSIFIERS.values()) if p is not None]
    found = None
    for folder in folders:
        try:
            now = classifier_id(folder) if (folder / INFO_FILE).is_file() else None
        except OSError:
            now = None
        if now == cid:
            found = folder
            break
        if req.classifier is not None:
            holds = f"holds {now}" if now else "is not a classifier folder"
            raise UsageError(f"classifier {cid} cannot be found: --classifier {folder} {holds}; {hint}")
    if found is None:
        where = (
            f"{recorded} does not hold it and it" if recorded else "the corpus records only its id, and it"
        )
        raise UsageError(f"classifier {cid} cannot be found: {where} is not a shipped classifier; {hint}")
    try:
        clf = load_classifier(found, gen)
    except UsageError as e:
        raise UsageError(f"classifier {cid} cannot be loaded from {found}: {first_line(e)}") from None
    shipped = next((name for name, f in SHIPPED_CLASSIFIERS.items() if f == found), None)
    models.append(("classifier", f"{cid} from {shipped + ' (shipped)' if shipped else found}"))
    return Guide(clf.model, tuple(clf.classes), float(config["guidance_scale"]), alphas_cumprod(gen), clf.id)


def _realism(req: ReproduceRequest, config: dict, prov: dict, gen, models: list):
    """The realism reference, when the job had one and it can be found; otherwise the stored realism
    score is not recomputed (it changes no pixel of the image or mask), and the output says so."""
    from pipeline.filtering.scores import load_realism

    ref = config.get("realism_reference")
    if ref is None:
        models.append(("realism", "none"))
        return None
    recorded = ((prov.get("filter") or {}).get("realism_reference") or {}).get("path")
    folder = req.real if req.real is not None else recorded
    if folder is None:
        what = f"not compared: the corpus records reference {ref} by id only (--real FOLDER)"
        models.append(("realism", what))
        return None
    found = load_corpus(Path(folder))["corpus_id"]
    if found != ref:
        raise UsageError(f"--real {folder} is corpus {found}, not the recorded realism reference {ref}")
    models.append(("realism", f"reference {ref} from {folder}"))
    return load_realism(Path(folder), gen.image_shape)


def _rebuild(config: dict, corpus: Path, gen, labeler, guide, realism, chash: str) -> Job:
    """The Job of `config` with these models; its config must be the recorded one, so that nothing the
    bytes depend on is left out (a realism reference that could not be found is the one exception)."""
    rules = dict(config["rules"])
    expect = config
    if realism is None and config.get(
        "realism_reference"
    ):  # the rule needs the reference; decide is not rerun
        rules["max_realism_distance"] = None
        expect = {**config, "rules": rules, "realism_reference": None}
    try:
        cfg = config_from_record({**config, "rules": rules}, corpus)
    except (KeyError, TypeError) as e:
        raise DppError(f"the recorded job config (hash {chash}) cannot be read: {first_line(e)}") from None
    job = Job(cfg=cfg, gen=gen, labeler=labeler, guide=guide, realism=realism)
    if job.config != expect:
        keys = sorted(k for k in set(job.config) | set(expect) if job.config.get(k) != expect.get(k))
        raise DppError(
            f"the job rebuilt from config hash {chash} differs from the recorded one in {', '.join(keys)}; "
            "this dataplusplus cannot render it again"
        )
    return job


# --- comparing ---------------------------------------------------------------------------------


def _stored_members(corpus: Path, info: dict, row: dict) -> dict | None:
    """The stored png, seg.png and json of the sample: the shard's tar for a kept one, its rejected tar
    (--keep-rejected) for a rejected one; None when a rejected candidate's image was not stored."""
    if row["kept"]:
        tar = corpus / info["name"]
    elif info.get("rejected") and row["image_sha256"] is not None:
        tar = corpus / info["rejected"]["name"]
    else:
        return None
    members = tar_members(tar, {row["key"]}).get(row["key"])
    if members is None:
        raise DppError(f"{row['key']}: its manifest row is there but {tar} does not hold it; run dpp verify")
    return members


def _compare_image(mine: bytes, stored: bytes, image: np.ndarray, stored_image: np.ndarray) -> Part:
    h, w = image.shape[:2]
    if mine == stored:
        return Part("image", True, f"identical ({w}x{h}, {len(stored):,} PNG bytes)")
    if stored_image.shape != image.shape:
        return Part(
            "image",
            False,
            f"differs: stored {stored_image.shape[1]}x{stored_image.shape[0]}, re-rendered {w}x{h}",
        )
    diff = np.abs(image.astype(np.int16) - stored_image.astype(np.int16)).max(axis=-1)
    if not diff.any():
        return Part("image", False, "differs in PNG bytes only: the same pixels, encoded otherwise")
    return Part(
        "image",
        False,
        f"differs: {int((diff > 0).sum())} of {h * w} pixels, max difference {int(diff.max())} of 255",
    )


def _compare_mask(mine: bytes, stored: bytes, mask: np.ndarray, stored_mask: np.ndarray) -> Part:
    if mine == stored:
        return Part("mask", True, "identical")
    if stored_mask.shape != mask.shape:
        return Part(
            "mask", False, f"differs: stored {stored_mask.shape[::-1]}, re-rendered {mask.shape[::-1]}"
        )
    n = int((mask != stored_mask).sum())
    if n == 0:
        return Part("mask", False, "differs in PNG bytes only: the same classes, encoded otherwise")
    return Part("mask", False, f"differs: {n} of {mask.size} pixels have another class")


def _compare_json(mine: bytes, stored: bytes) -> Part:
    if mine == stored:
        return Part("KEY.json", True, "identical")
    try:
        a, b = _flat(json.loads(mine)), _flat(json.loads(stored))
    except ValueError:
        return Part("KEY.json", False, "differs: the stored KEY.json is not valid JSON")
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not keys:
        return Part("KEY.json", False, "differs in bytes only: the same fields, written otherwise")
    return Part("KEY.json", False, "differs in " + _describe(keys, a, b))


def _compare_row(mine: dict, row: dict) -> Part:
    keys = [k for k in ROW_FIELDS if mine.get(k) != row.get(k)]
    if not keys:
        return Part("manifest row", True, "identical")
    return Part("manifest row", False, "differs in " + _describe(keys, mine, row))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe(keys: list[str], mine: dict, stored: dict, shown: int = 4) -> str:
    parts = [f"{k} (re-rendered {_short(mine.get(k))}, stored {_short(stored.get(k))})" for k in keys[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(parts) + more


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."


# --- what the command prints and writes -----------------------------------------------------------


def format_reproduction(rep: Reproduction) -> str:
    """The lines `dpp reproduce` prints: the sample, its models, each compared part, a verdict."""
    lines = [
        f"{rep.key} in {rep.corpus}: version {rep.version}, {rep.status}, shard {rep.shard}, "
        f"candidate {rep.index}, seed {rep.seed}"
    ]
    width = max(len(n) for n in ["device", *(w for w, _ in rep.models), *(p.name for p in rep.parts)])
    lines += [f"  {what:<{width}}  {where}" for what, where in rep.models]
    lines.append(f"  {'device':<{width}}  {rep.device}")
    lines += [f"  {p.name:<{width}}  {p.detail}" for p in rep.parts]
    if rep.differs:
        verdict = f"differs: {', '.join(rep.differs)} (device: {rep.device})"
    elif any(p.same is None for p in rep.parts):
        verdict = "reproduced: the manifest row is identical; the image and mask were not stored to compare"
    else:
        verdict = "identical: re-rendered byte for byte"
    lines.append(verdict + "".join(f"; not recomputed: {u}" for u in rep.unchecked))
    return "\n".join(lines)


def write_sheet(rep: Reproduction, out: Path, overwrite: bool = False) -> bool:
    """A PNG to look at: the stored image and mask (when stored), then the re-rendered ones."""
    from manifests.preview import contact_sheet, save_png

    pairs = [(rep.image, rep.mask)]
    if rep.stored_image is not None:
        pairs.insert(0, (rep.stored_image, rep.stored_mask))
    return save_png(contact_sheet(pairs, rep.classes, columns=len(pairs), tile=128), out, overwrite)
