"""Safe loading (issue 8, item 3): pickle checkpoints only with --allow-pickle; ingest and mix refuse
paths that escape their folders; corpus.json and manifests are validated, with size limits, before use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main

from .conftest import tree_bytes


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. pickle checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickled_model(tiny32_model_dir, tmp_path_factory) -> Path:
    """The tiny 32x32 model saved again with torch.save (diffusion_pytorch_model.bin), no safetensors."""
    from diffusers import DDPMPipeline

    dst = tmp_path_factory.mktemp("pickled") / "model"
    DDPMPipeline.from_pretrained(tiny32_model_dir).save_pretrained(dst, safe_serialization=False)
    assert (dst / "unet/diffusion_pytorch_model.bin").is_file()
    assert not list(dst.rglob("*.safetensors"))
    return dst


def test_pickle_checkpoint_is_refused_without_allow_pickle(pickled_model, tmp_path, capsys):
    weights = pickled_model / "unet/diffusion_pytorch_model.bin"
    g = ["--generator", str(pickled_model)]
    runs = [
        ["sample", *g, "--n", "1", "--seed", "0", "--out", str(tmp_path / "s.png")],
        ["train-labeler", *g, "--data", "x", "--out", str(tmp_path / "lab")],
        ["generate", *g, "--labeler", "lab", "--n", "2", "--seed", "0", "--out", str(tmp_path / "o")],
    ]
    before = tree_bytes(tmp_path)
    for argv in runs:
        assert main([*argv, "--device", "cpu"]) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert str(weights) in line and "pickle checkpoint" in line and "--allow-pickle" in line, line
    assert tree_bytes(tmp_path) == before  # nothing written


def test_allow_pickle_loads_it_and_generation_works(
    pickled_model, tiny32_model_dir, tw_corpus, tmp_path, capsys
):
    from manifests.verify import verify_corpus
    from pipeline.diffusion.load import load_generator

    gen = load_generator(str(pickled_model), device="cpu", allow_pickle=True)
    safe = load_generator(str(tiny32_model_dir), device="cpu")
    assert gen.id != safe.id and gen.id.startswith("model@")  # the digest is of the .bin file it loaded
    base = ["sample", "--n", "2", "--seed", "3", "--steps", "2", "--device", "cpu", "--quiet"]
    assert (
        main([*base, "--generator", str(pickled_model), "--allow-pickle", "--out", str(tmp_path / "p.png")])
        == 0
    )
    assert main([*base, "--generator", str(tiny32_model_dir), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "s.png").read_bytes()  # the same weights
    lab = tmp_path / "lab"
    argv = ["train-labeler", "--generator", str(pickled_model), "--allow-pickle", "--data", str(tw_corpus)]
    assert (
        main([*argv, "--shots", "2", "--members", "2", "--out", str(lab), "--device", "cpu", "--quiet"]) == 0
    )
    argv = [
        "generate",
        "--generator",
        str(pickled_model),
        "--allow-pickle",
        "--labeler",
        str(lab),
        "--n",
        "2",
    ]
    argv += ["--seed", "0", "--steps", "2", "--min-target-pixels", "0", "--out", str(tmp_path / "g")]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "pickle" not in captured.err.lower() and "warning" not in captured.err.lower(), captured.err
    assert verify_corpus(tmp_path / "g").ok


def test_no_torch_load_of_user_files():
    root = Path(__file__).resolve().parents[1]
    for pkg in ("flows", "pipeline", "labelers", "manifests"):
        for f in (root / pkg).rglob("*.py"):
            text = f.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, f


# --- 2. ingest and mix refuse paths that escape ------------------------------------------------


def _entries(root: Path) -> list[str]:
    """Every path under root, hidden staging folders included: a refused command leaves none."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _png(path: Path, value: int, mode: str = "RGB") -> None:
    import numpy as np
    from PIL import Image

    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)


@pytest.fixture
def user_folders(tmp_path) -> Path:
    for d in ("images", "masks", "masks/sub", "elsewhere"):
        (tmp_path / d).mkdir()
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    for stem in ("a", "b"):
        _png(tmp_path / f"images/{stem}.png", 10)
    _png(tmp_path / "masks/a.png", 1, "L")
    _png(tmp_path / "masks/sub/b.png", 0, "L")
    (tmp_path / "masks/b.png").symlink_to(tmp_path / "masks/sub/b.png")  # a link inside the folder: fine
    _png(tmp_path / "elsewhere/c.png", 20)
    _png(tmp_path / "elsewhere/c-mask.png", 1, "L")
    return tmp_path


def _ingest(root: Path) -> list[str]:
    return ["ingest", "--images", str(root / "images"), "--masks", str(root / "masks"), "--classes",
            str(root / "classes.txt"), "--out", str(root / "out"), "--quiet"]  # fmt: skip


def test_ingest_follows_links_inside_its_folders(user_folders):
    assert main(_ingest(user_folders)) == 0


@pytest.mark.parametrize(
    "link, target",
    [
        ("images/c.png", "elsewhere/c.png"),  # an image that leads out of --images
        ("masks/c.png", "elsewhere/c-mask.png"),  # a mask that leads out of --masks
        ("images/c.png", "/etc/passwd"),  # a system file named like an image
        ("images/c.png", "masks/a.png"),  # into the other input folder is still out of this one
    ],
)
def test_ingest_refuses_links_that_leave_the_folder(user_folders, capsys, link, target):
    root = user_folders
    if target.startswith("/") and not Path(target).is_file():
        pytest.skip(f"{target} is not on this machine")
    if link.startswith("masks"):
        _png(root / "images/c.png", 30)
    (root / link).symlink_to(target if target.startswith("/") else root / target)
    before, entries = tree_bytes(root), _entries(root)
    assert main(_ingest(root)) == 2
    line = _one_line(capsys.readouterr().err)
    folder = root / link.split("/")[0]
    assert f"--{link.split('/')[0]} {folder}: c.png is a symbolic link to" in line and "outside" in line, line
    assert tree_bytes(root) == before and _entries(root) == entries  # nothing written, no staging left


def _mix(src: Path, out: Path) -> list[str]:
    return ["mix", str(src), "--policy", "accumulate", "--seed", "0", "--out", str(out), "--quiet"]


def _rename_member(corpus: Path, shard: int, new_name: str) -> None:
    import io
    import tarfile

    tar = corpus / f"shards/shard-{shard:06d}.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(tar, "w") as t:
        for i, (m, data) in enumerate(members):
            if i < 3:  # the first sample's png, seg.png and json
                m.name = new_name + m.name[m.name.index(".") :]
            t.addfile(m, io.BytesIO(data))


def _set_record(**changes):
    def apply(corpus: Path) -> None:
        rec = json.loads((corpus / "corpus.json").read_text())
        (corpus / "corpus.json").write_text(json.dumps(_edit(**changes)(rec)))

    return apply


def _link_shard_outside(corpus: Path) -> None:
    outside = corpus.parent / "outside.tar"
    (corpus / "shards/shard-000000.tar").rename(outside)
    (corpus / "shards/shard-000000.tar").symlink_to(outside)


def _manifest_shard(value: str):
    def apply(corpus: Path) -> None:
        import pyarrow as pa

        _rewrite_manifest(corpus, lambda t: _set_column("shard", pa.array([value] * t.num_rows))(t))

    return apply


@pytest.mark.parametrize(
    "damage, needle",
    [
        (_set_record(**{"shards.0.name": "../x.tar"}), "shards[0].name '../x.tar' is not allowed"),
        (_set_record(**{"shards.0.name": "/abs/shard-000000.tar"}), "'/abs/shard-000000.tar' is not allowed"),
        (lambda c: _rename_member(c, 0, "../evil"), "member '../evil' is not allowed"),
        (lambda c: _rename_member(c, 1, "/abs"), "member '/abs' is not allowed"),
        (_link_shard_outside, "shards/shard-000000.tar is a symbolic link to"),
        (_manifest_shard("../../x"), "column shard row 0 holds '../../x'; it must be shard-NNNNNN"),
        (_manifest_shard("shard-000001"), "names shard 'shard-000001', not shard-000000"),
    ],
)  # fmt: skip
def test_mix_refuses_sources_whose_paths_escape(tw_copy, tmp_path, capsys, damage, needle):
    damage(tw_copy)
    before, entries = tree_bytes(tmp_path), _entries(tmp_path)
    assert main(_mix(tw_copy, tmp_path / "m")) == 1  # a hostile corpus, as verify and audit say
    line = _one_line(capsys.readouterr().err)
    assert needle in line, line
    assert tree_bytes(tmp_path) == before and _entries(tmp_path) == entries  # nothing written, no staging


# --- 3. corpus.json and manifests validated, with size limits ------------------------------------


def _edit(**changes):
    """A mutation of a corpus record: dotted paths (shards.0.name) set to values."""

    def apply(rec: dict) -> dict:
        for path, value in changes.items():
            *parents, last = path.split(".")
            node = rec
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        return rec

    return apply


HOSTILE_RECORDS = [
    (_edit(classes="background"), "classes is a string ('background'); it must be a list"),
    (_edit(classes=["background", "disk", "disk"]), "classes list 'disk' twice"),
    (_edit(classes=[f"c{i}" for i in range(256)]), "classes lists 256 items; at most 255"),
    (_edit(**{"classes.1": "../disk"}), "classes[1] '../disk' is not allowed"),
    (_edit(**{"classes.1": 7}), "classes[1] is a number (7); it must be a string"),
    (_edit(corpus_id="a/../b"), "corpus_id 'a/../b' is not allowed"),
    (_edit(**{"shards.0.name": "../x.tar"}), "shards[0].name '../x.tar' is not allowed; it must be a path"),
    (_edit(**{"shards.0.name": "/etc/passwd"}), "shards[0].name '/etc/passwd' is not allowed"),
    (_edit(**{"shards.0.name": "shards/../../x.tar"}), "'shards/../../x.tar' is not allowed"),
    (_edit(**{"shards.1.name": "shards/shard-000000.tar"}), "'shards/shard-000000.tar' is listed twice"),
    (_edit(**{"shards.0.sha256": "00ff"}), "sha256 '00ff' is not allowed; it must be 64 lowercase hex"),
    (_edit(**{"shards.0.bytes": -1}), "shards[0].bytes is -1; it must be an integer in [0, 92233"),
    (_edit(**{"shards.0.samples": 10**30}), "shards[0].samples is 1000000000000000000000000000000;"),
    (_edit(**{"shards.0.samples": "16"}), "shards[0].samples is a string ('16'); it must be an integer"),
    (_edit(**{"shards.0.rejected": {"name": "/abs.tar", "sha256": "0" * 64, "bytes": 1, "samples": 1}}),
     "shards[0].rejected.name '/abs.tar' is not allowed"),
    (_edit(shards={"name": "x"}), "shards is an object"),
    (_edit(**{"counts.real": -5}), "counts.real is -5; it must be an integer in [0,"),
    (_edit(**{"counts.real": 1.5}), "counts.real is a number (1.5); it must be an integer"),
    (_edit(synthetic_fraction=2), "synthetic_fraction is 2; it must be a number in [0, 1]"),
    (_edit(synthetic_fraction=float("nan")), "is not valid JSON (NaN is not a JSON number)"),
    (_edit(per_generation={"x": 40}), "per_generation key 'x' is not allowed; keys are generation numbers"),
    (_edit(per_generation={"0": -40}), "per_generation['0'] is -40"),
    (_edit(parents="toyworld-1"), "parents is a string"),
    (_edit(parents=[1]), "parents[0] is a number (1); it must be a string"),
    (_edit(generator="toyworld"), "generator is a string ('toyworld'); it must be an object or null"),
    (_edit(history=[{"version": 1}]), "history[0].synthetic_fraction is null (None); it must be"),
    (_edit(policy={"name": "mix", "sources": [{"corpus_id": "../x", "taken": 1}]}),
     "policy.sources[0].corpus_id '../x' is not allowed"),
    (_edit(schema_version="1"), "has no integer schema_version"),
]  # fmt: skip

HOSTILE_TEXTS = [
    (lambda: "[" * 100_000 + "]" * 100_000, "is not valid JSON (maximum recursion depth exceeded"),
    (lambda: '{"schema_version": 1' + "1" * 5000 + "}", "is not valid JSON (Exceeds the limit"),
    (lambda: b'{"corpus_id": "\xff\xfe"}', "is not UTF-8 text (invalid start byte at byte 15)"),
]


def _verify_and_audit(corpus: Path, needle: str, capsys) -> None:
    """`dpp verify` reports one problem and exits 1; `dpp audit` says one line and exits 1; no traceback,
    no report tables."""
    assert main(["verify", str(corpus)]) == 1
    out, err = capsys.readouterr()
    problems = out.strip().splitlines()[1:]
    assert out.startswith(f"BAD  {corpus}: 1 problem(s)") and len(problems) == 1, out
    assert needle in problems[0] and "corpus.json" in problems[0], out
    assert "Traceback" not in out + err
    assert main(["audit", str(corpus)]) == 1
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert out == "" and needle in line and str(corpus / "corpus.json") in line, line


@pytest.mark.parametrize("mutate, needle", HOSTILE_RECORDS)
def test_hostile_corpus_json_is_refused_in_one_line(tw_copy, capsys, mutate, needle):
    rec = json.loads((tw_copy / "corpus.json").read_text())
    (tw_copy / "corpus.json").write_text(json.dumps(mutate(rec)))
    _verify_and_audit(tw_copy, needle, capsys)


@pytest.mark.parametrize("text, needle", HOSTILE_TEXTS)
def test_hostile_corpus_json_text_is_refused_in_one_line(tw_copy, capsys, text, needle):
    data = text()
    (tw_copy / "corpus.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    _verify_and_audit(tw_copy, needle, capsys)


def test_oversized_corpus_json_is_refused_before_parsing(tw_copy, capsys, monkeypatch):
    from manifests.format import validate

    path = tw_copy / "corpus.json"
    with open(path, "r+b") as f:  # 70 MiB, sparse: valid JSON, then spaces that take no disk
        f.truncate(70 * 2**20)
    _verify_and_audit(
        tw_copy, f"corpus.json is {70 * 2**20} bytes; a corpus.json of at most {64 * 2**20}", capsys
    )
    monkeypatch.setattr(validate, "MAX_CORPUS_JSON_BYTES", 1000)  # the limit is a module constant
    path.write_text(json.dumps({"pad": "x" * 2000}))
    _verify_and_audit(tw_copy, "bytes; a corpus.json of at most 1000 bytes is read", capsys)


def test_corpus_json_that_is_not_a_regular_file_is_not_read(tw_copy, capsys):
    (tw_copy / "corpus.json").unlink()
    (tw_copy / "corpus.json").symlink_to("/dev/zero")  # read whole, it would never end
    assert main(["audit", str(tw_copy)]) == 1
    assert "corpus.json is not a regular file" in _one_line(capsys.readouterr().err)


def _refusal(capsys) -> str:
    """What a refused command said on stderr (audit may add a detail line naming the shard): no
    traceback, no report on stdout."""
    out, err = capsys.readouterr()
    assert out == "" and err.strip() and "Traceback" not in err and "internal error" not in err, (out, err)
    return err


def _rewrite_manifest(corpus: Path, change) -> Path:
    import pyarrow.parquet as pq

    path = corpus / "manifest/shard-000000.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    return path


def _set_column(name: str, array):
    def change(table):
        return table.set_column(table.schema.get_field_index(name), name, array)

    return change


def test_manifest_with_a_wrong_column_type_is_refused(tw_copy, capsys):
    import pyarrow as pa

    def as_string(t):
        return _set_column("generation", t.column("generation").cast(pa.string()))(t)

    path = _rewrite_manifest(tw_copy, as_string)
    assert main(["audit", str(tw_copy)]) == 1
    line = _refusal(capsys)
    assert f"manifest {path}: column generation is string; it must be int32" in line, line
    assert main(["verify", str(tw_copy)]) == 1
    out = capsys.readouterr().out
    assert f"manifest {path}: column generation is string; it must be int32" in out and "Traceback" not in out


@pytest.mark.parametrize(
    "column, value, needle",
    [
        ("key", "../evil", "column key row 0 holds '../evil'; keys match [A-Za-z0-9_-]+"),
        ("shard", "/abs", "column shard row 0 holds '/abs'; it must be shard-NNNNNN"),
        ("origin", "forged", "column origin row 0 holds 'forged'; allowed: real, synthetic"),
        ("generation", -3, "column generation row 0 holds -3; it must be 0 or more"),
        ("class_pixel_fraction", [1.0], "it must hold one fraction per class (4)"),
        ("classes_present", ["dragon"], "class names are among background, disk, square, triangle"),
    ],
)
def test_manifest_with_hostile_values_is_refused(tw_copy, capsys, column, value, needle):
    import pyarrow as pa

    def change(t):
        values = t.column(column).to_pylist()
        values[0] = value
        return _set_column(column, pa.array(values, t.schema.field(column).type))(t)

    path = _rewrite_manifest(tw_copy, change)
    assert main(["audit", str(tw_copy)]) == 1
    line = _refusal(capsys)
    assert f"manifest {path}: " in line and needle in line, line
    assert main(["verify", str(tw_copy)]) == 1  # verify names it too, in its report
    out = capsys.readouterr().out
    assert needle in out and "Traceback" not in out and "internal error" not in out


def test_manifest_limits_are_checked_before_reading(tw_copy, capsys, monkeypatch):
    from manifests.format import validate

    path = tw_copy / "manifest/shard-000000.parquet"
    monkeypatch.setattr(validate, "MAX_MANIFEST_ROWS", 10)
    assert main(["audit", str(tw_copy)]) == 1
    assert f"manifest {path} holds 16 rows; at most 10 are read" in _refusal(capsys)
    monkeypatch.setattr(validate, "MAX_MANIFEST_BYTES", 1000)
    assert main(["audit", str(tw_copy)]) == 1
    assert "bytes; a manifest of at most 1000 bytes is read" in _refusal(capsys)
    monkeypatch.undo()
    data = path.read_bytes()  # a footer length of 4 GiB - 1: refused before pyarrow reads it
    path.write_bytes(data[:-8] + (2**32 - 1).to_bytes(4, "little") + b"PAR1")
    assert main(["audit", str(tw_copy)]) == 1
    assert "declares a 4294967295-byte footer" in _refusal(capsys)
