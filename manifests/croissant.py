"""`dpp export croissant`: a Croissant 1.1 description (JSON-LD) of a corpus, from its corpus.json.

What it describes: every committed shard tar and manifest Parquet as a FileObject with its sha256;
the images, masks and per-sample JSON inside the tars as FileSets; four record sets — `images` and
`masks` (joined by sample key), `labels` (the manifest columns: origin, generation, classes,
seeds, model ids, filter scores) and `classes` (the class index table). Responsible-AI fields say how
the data was made (procedural rendering, a generative model, machine annotation by a few-shot head),
and PROV links name the parent corpora (wasDerivedFrom) and the job that wrote it (wasGeneratedBy).
`rai:hasSyntheticData` and `rai:syntheticDataExplanation` (the RAI properties venues ask for; mlcroissant
1.1.1 does not know them yet and passes them through) come from the manifests' kept rows: the synthetic
share, the generations with their counts, and the generator and labeler ids of the samples and of the
corpus.json lineage. Validated in the tests with mlcroissant. No torch here: it reads corpus.json and the
manifests.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from manifests.format.layout import MANIFEST_DIR, manifest_path, sha256_file, write_bytes_atomic
from manifests.format.record import load_corpus, read_manifest
from manifests.format.schema import MANIFEST_SCHEMA

CROISSANT_FILE = "croissant.json"

CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": "http://www.w3.org/ns/prov#",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "equivalentProperty": "cr:equivalentProperty",
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

# manifest columns -> Croissant data types (lists are marked isArray)
_TYPES = {"string": "sc:Text", "bool": "sc:Boolean", "int32": "sc:Integer", "int64": "sc:Integer",
          "double": "sc:Float"}  # fmt: skip


def _dtype(arrow_type) -> tuple[str, bool]:
    text = str(arrow_type)
    if text.startswith("list<"):
        inner = text[text.index(":") + 1 : -1].strip() if ":" in text else text[5:-1]
        return _TYPES.get(inner, "sc:Text"), True
    return _TYPES.get(text, "sc:Text"), False


def _how_made(record: dict) -> tuple[str, list[str], list[str]]:
    """RAI text: data collection, machine annotation tools, annotation protocol."""
    c = record["counts"]
    gen = record.get("generator") or {}
    lab = record.get("labeler") or {}
    policy = (record.get("policy") or {}).get("name")
    parts = []
    if c["real"]:
        parts.append(f"{c['real']} real samples (generation 0)")
    if c["synthetic"]:
        per = ", ".join(f"generation {g}: {n}" for g, n in record["per_generation"].items() if g != "0")
        parts.append(f"{c['synthetic']} synthetic samples rendered by a generative model ({per})")
    collection = "; ".join(parts) or "no samples"
    if policy:
        collection += f"; assembled from parent corpora by the dpp mix policy '{policy}'"
    kind = (record.get("config") or {}).get("kind")
    if kind == "toyworld":
        collection += "; real samples are procedurally rendered toy-world scenes with exact masks"
    tools, protocol = [], []
    if gen.get("id"):
        tools.append(f"image generator {gen['id']} (diffusers UNet2DModel, dataplusplus)")
    if lab.get("id"):
        tools.append(f"few-shot pixel-head labeler {lab['id']} on the generator's features")
        protocol.append(
            f"masks of synthetic samples are machine annotations: a pixel-head ensemble trained on "
            f"{len(lab.get('support_keys') or [])} annotated real images of corpus {lab.get('support_corpus')}"
        )
    if record.get("classifier"):
        tools.append(f"noise-aware classifier {record['classifier']['id']} (classifier guidance)")
    rules = (record.get("filter") or {}).get("rules")
    if rules:
        protocol.append(f"candidates filtered by fidelity rules {json.dumps(rules, sort_keys=True)}")
    if c["real"]:
        protocol.append("masks of real samples come with the data (procedural or ingested annotations)")
    return collection, tools, protocol


def _ids(counts: Counter) -> str:
    return ", ".join(f"{i} ({n})" for i, n in sorted(counts.items()))


def synthetic_data(record: dict, rows: list[dict]) -> tuple[bool, str]:
    """rai:hasSyntheticData and rai:syntheticDataExplanation from a corpus's kept manifest rows and its
    corpus.json lineage (generator and labeler)."""
    kept = [r for r in rows if r["kept"]]
    syn = [r for r in kept if r["origin"] == "synthetic"]
    n, k = len(kept), len(syn)
    if not syn:
        return False, f"No sample is synthetic: all {n} samples are real (generation 0)."
    per_gen = Counter(int(r["generation"]) for r in syn)
    gens = ", ".join(f"generation {g}: {c}" for g, c in sorted(per_gen.items()))
    generators = Counter(r["generator_id"] or "unknown" for r in syn)
    labelers = Counter(r["labeler_id"] or "unknown" for r in syn)
    lineage = []  # ids that corpus.json's lineage names and no sample does
    for what, seen in (("generator", generators), ("labeler", labelers)):
        lid = (record.get(what) or {}).get("id")
        if lid and lid not in seen:
            lineage.append(f"{what} {lid}")
    text = (
        f"{k} of {n} samples ({100 * k / n:.1f}%, synthetic share {k / n:.4f}) are synthetic, rendered by a "
        f"diffusion model and labeled by a machine labeler ({gens}; generation g >= 1 comes from a generator "
        f"whose own training data reached generation g - 1). Generators (samples): {_ids(generators)}. "
        f"Labelers (samples): {_ids(labelers)}."
    )
    if lineage:
        text += f" corpus.json lineage also names: {'; '.join(lineage)}."
    text += f" The other {n - k} samples are real (generation 0)." if n > k else " No sample is real."
    policy = record.get("policy") or {}
    if policy.get("name"):
        text += f" Assembled by the dpp mix policy '{policy['name']}'"
        if policy.get("real_fraction") is not None:
            text += f" with real fraction {policy['real_fraction']}"
        text += "."
    return True, text


def croissant(root: Path) -> dict:
    """The Croissant JSON-LD document of the corpus at `root` (paths in it are relative to `root`)."""
    root = Path(root)
    record = load_corpus(root)
    cid = record["corpus_id"]
    classes = list(record["classes"])
    distribution, tar_ids, rows = [], [], []
    for s in record["shards"]:
        stem = Path(s["name"]).stem
        tar_ids.append({"@id": f"tar/{stem}"})
        distribution.append(
            {
                "@type": "cr:FileObject",
                "@id": f"tar/{stem}",
                "name": f"tar/{stem}",
                "contentUrl": s["name"],
                "contentSize": f"{s['bytes']} B",
                "encodingFormat": "application/x-tar",
                "sha256": s["sha256"],
            }
        )
        manifest = manifest_path(root, stem)
        rows += read_manifest(manifest, classes).to_pylist()
        distribution.append(
            {
                "@type": "cr:FileObject",
                "@id": f"manifest/{stem}",
                "name": f"manifest/{stem}",
                "contentUrl": f"{MANIFEST_DIR}/{stem}.parquet",
                "contentSize": f"{manifest.stat().st_size} B",
                "encodingFormat": "application/x-parquet",
                "sha256": sha256_file(manifest),
            }
        )
    for fid, pattern, exclude, fmt, what in (
        ("image-files", "*.png", "*.seg.png", "image/png", "sample images (KEY.png)"),
        (
            "mask-files",
            "*.seg.png",
            None,
            "image/png",
            "segmentation masks, one class index per pixel (KEY.seg.png)",
        ),
        ("json-files", "*.json", None, "application/json", "per-sample metadata (KEY.json)"),
    ):
        fs = {
            "@type": "cr:FileSet",
            "@id": fid,
            "name": fid,
            "description": what,
            "containedIn": tar_ids,
            "encodingFormat": fmt,
            "includes": pattern,
        }
        if exclude:
            fs["excludes"] = exclude
        distribution.append(fs)
    distribution.append(
        {
            "@type": "cr:FileSet",
            "@id": "manifest-files",
            "name": "manifest-files",
            "description": "one Parquet row per candidate sample, kept or rejected (manifests/format/schema.py)",
            "encodingFormat": "application/x-parquet",
            "includes": f"{MANIFEST_DIR}/*.parquet",
        }
    )

    def field(rs: str, name: str, dtype: str, source: dict, desc: str, is_array: bool = False) -> dict:
        f = {"@type": "cr:Field", "@id": f"{rs}/{name}", "name": name, "description": desc,
             "dataType": dtype, "source": source}  # fmt: skip
        if is_array:
            f["isArray"] = True
            f["arrayShape"] = "-1"
        return f

    def key_field(rs: str, fileset: str, suffix: str, ref: str | None) -> dict:
        f = field(
            rs, "key", "sc:Text",
            {"fileSet": {"@id": fileset}, "extract": {"fileProperty": "filename"},
             "transform": {"regex": f"^(.*)\\{suffix}$"}},
            "sample key (the file name without its extension)",
        )  # fmt: skip
        if ref:
            f["references"] = {"field": {"@id": ref}}
        return f

    images = {
        "@type": "cr:RecordSet",
        "@id": "images",
        "name": "images",
        "description": "each kept sample's image",
        "key": {"@id": "images/key"},
        "field": [
            key_field("images", "image-files", ".png", None),
            field("images", "image", "sc:ImageObject",
                  {"fileSet": {"@id": "image-files"}, "extract": {"fileProperty": "content"}}, "the image (PNG, RGB)"),
        ],
    }  # fmt: skip
    masks = {
        "@type": "cr:RecordSet",
        "@id": "masks",
        "name": "masks",
        "description": "each kept sample's segmentation mask (class indices; 255 = ignore), joined to images by key",
        "key": {"@id": "masks/key"},
        "field": [
            key_field("masks", "mask-files", ".seg.png", "images/key"),
            field("masks", "mask", "sc:ImageObject",
                  {"fileSet": {"@id": "mask-files"}, "extract": {"fileProperty": "content"}},
                  f"the mask (PNG, one channel): {', '.join(f'{i} {c}' for i, c in enumerate(classes))}"),
        ],
    }  # fmt: skip
    label_fields = []
    for f in MANIFEST_SCHEMA:
        dtype, is_array = _dtype(f.type)
        label_fields.append(
            field("labels", f.name, dtype, {"fileSet": {"@id": "manifest-files"}, "extract": {"column": f.name}},
                  f"manifest column {f.name}", is_array)
        )  # fmt: skip
    labels = {
        "@type": "cr:RecordSet",
        "@id": "labels",
        "name": "labels",
        "description": "per-sample labels and provenance: origin (real/synthetic), generation, classes present, "
        "seed, generator and labeler ids, filter scores, kept and reject_reason",
        "key": {"@id": "labels/key"},
        "field": label_fields,
    }
    class_set = {
        "@type": "cr:RecordSet",
        "@id": "classes",
        "name": "classes",
        "description": "mask class indices",
        "key": {"@id": "classes/index"},
        "field": [
            {"@type": "cr:Field", "@id": "classes/index", "name": "index", "dataType": "sc:Integer"},
            {"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"},
        ],
        "data": [{"classes/index": i, "classes/name": c} for i, c in enumerate(classes)],
    }
    collection, tools, protocol = _how_made(record)
    has_synthetic, explanation = synthetic_data(record, rows)
    kept = record["counts"]["real"] + record["counts"]["synthetic"]
    doc = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": cid,
        "description": (
            f"dataplusplus corpus {cid} (version {record.get('version', 1)}): {kept} samples "
            f"({record['counts']['real']} real, {record['counts']['synthetic']} synthetic; synthetic "
            f"fraction {record['synthetic_fraction']:.4f}), classes {', '.join(classes)}"
        ),
        "url": f"file:{root.name}",
        "version": f"{int(record.get('version', 1))}.0.0",
        "license": "https://spdx.org/licenses/CC-BY-4.0.html",
        "citeAs": f"dataplusplus corpus {cid}",
        "datePublished": "2000-01-01",
        "isLiveDataset": bool(record.get("history") and len(record["history"]) > 1),
        "keywords": ["segmentation", "synthetic data", "provenance"],
        "distribution": distribution,
        "recordSet": [images, masks, labels, class_set],
        "rai:dataCollection": collection,
        "rai:dataCollectionType": ["Software Collection Tools"]
        if record["counts"]["synthetic"]
        else ["Others"],
        "rai:machineAnnotationTools": tools,
        "rai:dataAnnotationProtocol": protocol,
        "rai:hasSyntheticData": has_synthetic,
        "rai:syntheticDataExplanation": explanation,
        "prov:wasDerivedFrom": [{"@id": f"corpus:{p}"} for p in record.get("parents") or []],
        "prov:wasGeneratedBy": {
            "@type": "prov:Activity",
            "name": f"dpp {(record.get('config') or {}).get('kind', 'job')} (config hash {record['config_hash']})",
            "description": json.dumps(record.get("config"), sort_keys=True),
        },
    }
    return doc


def export_croissant(root: Path, out: Path | None = None) -> Path:
    """Write the corpus's croissant.json (default: inside the corpus), whole. Returns its path."""
    root = Path(root)
    out = Path(out) if out is not None else root / CROISSANT_FILE
    text = json.dumps(croissant(root), indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(out, text.encode())
    return out
