"""The bad-input battery: every dpp command, given a missing, malformed or out-of-range argument or
file, exits 2 (a usage error) or 1 (a runtime failure), says so in ONE stderr line that names the bad
value and what is allowed, shows no traceback, and writes nothing.

Each row is (id, exit code, a needle the stderr line must contain, the command line). Placeholders in
the command line: {o} an output path that must not appear, {t} the test's own tmp folder, {tw} a
toy-world corpus, {cats} a corpus with other classes, {new} a corpus from a newer schema version,
{empty} an empty folder, {file} a plain file, {model} a tiny diffusers model, {other} a second one
(other weights), {lab} a labeler trained on {model}, {notmodel} a folder that is no diffusers model,
{vae} a diffusers folder that holds no UNet2DModel, {ro} a read-only folder, {job} a good job file,
{sd} a tiny Stable Diffusion folder.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from manifests.format.schema import SCHEMA_VERSION

from .conftest import build_tiny_model, tree_bytes

ROOT = os.geteuid() == 0  # root ignores a folder's mode: the read-only rows cannot fail there
NEWER = SCHEMA_VERSION + 1


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tw_corpus, tiny32_model_dir, labeler_dir, tiny_sd_dir) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad")
    new = base / "newer"
    shutil.copytree(tw_corpus, new)
    rec = json.loads((new / "corpus.json").read_text())
    rec["schema_version"] = NEWER
    (new / "corpus.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    for name in ("empty", "notmodel", "vae", "ro", "src/images", "src/masks"):
        (base / name).mkdir(parents=True)
    (base / "file.txt").write_text("not a folder\n")
    (base / "notmodel/weights.npz").write_bytes(b"\0" * 64)
    (base / "notmodel/README.md").write_text("weights, but no diffusers layout\n")
    (base / "vae/config.json").write_text('{"_class_name": "AutoencoderKL"}\n')
    rng = np.random.default_rng(0)
    for i in range(2):  # two 32x32 images of "cat" scenes: a corpus whose classes differ from {tw}
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(base / f"src/images/c{i}.png")
        Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8)).save(base / f"src/masks/c{i}.png")
    (base / "src/classes.txt").write_text("background\ncat\n")
    (base / "src/dup.txt").write_text("background\ncat\ncat\n")
    src = base / "src"
    cmd = f"ingest --images {src}/images --masks {src}/masks --classes {src}/classes.txt --out {base}/cats"
    assert main([*cmd.split(), "--quiet"]) == 0
    (base / "job.toml").write_text(
        f'[job]\nout = "{base / "never"}"\nn = 4\nseed = 0\n'
        f'[model]\ngenerator = "{tiny32_model_dir}"\nlabeler = "{labeler_dir}"\nsteps = 2\n'
    )
    (base / "ro").chmod(0o555)
    yield {
        "tw": tw_corpus,
        "cats": base / "cats",
        "src": base / "src",
        "new": new,
        "empty": base / "empty",
        "file": base / "file.txt",
        "model": tiny32_model_dir,
        "other": build_tiny_model(base / "other", seed=1, size=32),
        "lab": labeler_dir,
        "notmodel": base / "notmodel",
        "vae": base / "vae",
        "ro": base / "ro",
        "job": base / "job.toml",
        "sd": tiny_sd_dir,
    }
    (base / "ro").chmod(0o755)


# root writes into a 0o555 folder; a root run drops the capabilities that let it (setpriv), so the
# read-only rows run for real in CI too
DROP_CAPS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def row(id_: str, code: int, needle: str, cmd: str, root_skips: bool = False):
    marks = []
    if root_skips and ROOT and not shutil.which("setpriv"):
        marks = [pytest.mark.skip(reason="root writes into a 0o555 folder and setpriv is missing")]
    return pytest.param(cmd, code, needle, root_skips, id=id_, marks=marks)


def _run_without_root_powers(argv: list[str], cwd: Path) -> tuple[int, str]:
    """`dpp ARGV` in a subprocess that lacks root's power to write where a folder's mode forbids it."""
    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([*DROP_CAPS, sys.executable, "-c", code, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return proc.returncode, proc.stderr


TW = "--n 5 --seed 1"
ING = "ingest --images {src}/images --masks {src}/masks --out {o}"
SAMPLE = "sample --generator {model} --n 2 --seed 0 --out {o}"
TRAIN_LAB = "train-labeler --generator {model} --data {tw} --out {o}"
GEN = "generate --config {job} --out {o}"
SD_GEN = "generate --generator {sd} --labeler cross-attention --classes disk,square --n 2 --seed 0 --steps 2 --out {o}"
NEW = f"schema_version {NEWER}, newer than this dataplusplus reads (up to {SCHEMA_VERSION})"
NOT_DIFFUSERS = "is not a diffusers model folder (no unet/config.json or config.json)"
POS = "is not allowed; it must be positive"

ROWS = [
    # the parser: no command, an unknown one
    row("no-command", 2, "the following arguments are required: COMMAND", ""),
    row("unknown-command", 2, "invalid choice: 'nosuchcommand'", "nosuchcommand"),
    # demo
    row("demo-n-zero", 2, f"argument --n: 0 {POS}", "demo --n 0 --out {o}"),
    row("demo-guidance-negative", 2, "-1.0 is not allowed; it must be in [0.0, inf)", "demo --guidance-scale -1 --out {o}"),
    row("demo-out-file", 2, "is a file; the demo needs a folder", "demo --out {file}"),
    row("demo-out-readonly", 1, "Permission denied: {ro}/demo", "demo --out {ro}/demo", root_skips=True),
    # toyworld
    row("toyworld-n-abc", 2, "argument --n: 'abc' is not an integer", "toyworld --n abc --seed 1 --out {o}"),
    row("toyworld-n-zero", 2, f"argument --n: 0 {POS}", "toyworld --n 0 --seed 1 --out {o}"),
    row("toyworld-seed-negative", 2, "argument --seed: -1 is not allowed; it must be >= 0", "toyworld --n 5 --seed -1 --out {o}"),
    row("toyworld-size-48", 2, "argument --size: invalid choice: 48 (choose from 32, 64)", f"toyworld {TW} --out {{o}} --size 48"),
    row("toyworld-style-glossy", 2, "argument --style: invalid choice: 'glossy' (choose from 'flat', 'textured')", f"toyworld {TW} --out {{o}} --style glossy"),
    row("toyworld-shard-size-zero", 2, f"argument --shard-size: 0 {POS}", f"toyworld {TW} --out {{o}} --shard-size 0"),
    row("toyworld-out-parent-missing", 2, "does not exist", f"toyworld {TW} --out {{t}}/no/such/dir/o"),
    row("toyworld-missing-n", 2, "the following arguments are required: --n", "toyworld --seed 1 --out {o}"),
    row("toyworld-out-readonly", 1, "Permission denied: {ro}/", f"toyworld {TW} --out {{ro}}/o", root_skips=True),
    # ingest
    row("ingest-images-missing", 2, "--images {t}/nothing is not a directory", "ingest --images {t}/nothing --masks {src}/masks --classes {src}/classes.txt --out {o}"),
    row("ingest-images-empty", 2, "--images {empty} holds no PNG or JPEG images", "ingest --images {empty} --masks {src}/masks --classes {src}/classes.txt --out {o}"),
    row("ingest-classes-folder", 2, "--classes {empty} is not a file", f"{ING} --classes {{empty}}"),
    row("ingest-class-twice", 2, "class name(s) listed twice: cat", f"{ING} --classes {{src}}/dup.txt"),
    row("ingest-missing-masks", 2, "the following arguments are required: --masks", "ingest --images {src}/images --classes {src}/classes.txt --out {o}"),
    # mix
    row("mix-fraction-above-1", 2, "argument --synthetic-fraction: 1.5 is not allowed; it must be in [0.0, 1.0]", "mix {tw} --out {o} --seed 0 --n 4 --synthetic-fraction 1.5"),
    row("mix-fraction-abc", 2, "argument --synthetic-fraction: 'half' is not a number", "mix {tw} --out {o} --seed 0 --n 4 --synthetic-fraction half"),
    row("mix-no-policy", 2, "give --synthetic-fraction F --n N (an exact mix) or --policy", "mix {tw} --out {o} --seed 0"),
    row("mix-policy-unknown", 2, "argument --policy: invalid choice: 'newest'", "mix {tw} --out {o} --seed 0 --policy newest"),
    row("mix-source-missing", 2, "corpus {t}/nothing does not exist", "mix {t}/nothing --out {o} --seed 0 --policy accumulate"),
    row("mix-source-empty", 2, "{empty} is not a corpus: it has no corpus.json", "mix {empty} --out {o} --seed 0 --policy accumulate"),
    row("mix-source-newer", 2, NEW, "mix {new} --out {o} --seed 0 --policy accumulate --balance-classes"),
    row("mix-other-classes", 2, "has classes background, cat, {tw} has background, disk", "mix {tw} {cats} --out {o} --seed 0 --policy accumulate --balance-classes"),
    row("mix-too-many", 2, "--n 1000: the sources hold 40 samples", "mix {tw} --out {o} --seed 0 --policy accumulate --n 1000 --balance-classes"),
    row("mix-real-fraction-without-fresh", 2, "--real-fraction is for --policy fresh, not accumulate", "mix {tw} --out {o} --seed 0 --policy accumulate --real-fraction 0.5"),
    row("mix-real-fraction-no-policy", 2, "--real-fraction needs --policy fresh", "mix {tw} --out {o} --seed 0 --n 4 --real-fraction 0.5"),
    row("mix-real-fraction-one", 2, "argument --real-fraction: 1.0 is not allowed; it must be in (0.0, 1.0)", "mix {tw} --out {o} --seed 0 --n 4 --policy fresh --real-fraction 1"),
    row("mix-real-fraction-zero", 2, "argument --real-fraction: 0.0 is not allowed; it must be in (0.0, 1.0)", "mix {tw} --out {o} --seed 0 --n 4 --policy fresh --real-fraction 0"),
    row("mix-real-fraction-abc", 2, "argument --real-fraction: 'most' is not a number", "mix {tw} --out {o} --seed 0 --n 4 --policy fresh --real-fraction most"),
    row("mix-fresh-no-n", 2, "--policy fresh needs --n and --real-fraction", "mix {tw} --out {o} --seed 0 --policy fresh --real-fraction 0.5"),
    row("mix-fresh-no-synthetic", 2, "--policy fresh needs synthetic samples; the sources hold none", "mix {tw} --out {o} --seed 0 --n 4 --policy fresh --real-fraction 0.5"),
    # export
    row("export-format-unknown", 2, "argument format: invalid choice: 'parquet'", "export parquet {tw} --out {o}"),
    row("export-corpus-missing", 2, "corpus {t}/nothing does not exist", "export croissant {t}/nothing --out {o}"),
    row("export-corpus-newer", 2, NEW, "export croissant {new} --out {o}"),
    row("export-out-exists", 2, "--out {file} already exists; pass --overwrite", "export croissant {tw} --out {file}"),
    # study
    row("study-generations-zero", 2, f"argument --generations: 0 {POS}", "study collapse --out {o} --generations 0"),
    row("study-policy-unknown", 2, "--policies forever is not allowed; choose from replace, accumulate, fresh, control", "study collapse --out {o} --policies replace,forever"),
    row("study-seeds-malformed", 2, "--seeds 0,x is not allowed; give non-negative integers", "study collapse --out {o} --seeds 0,x"),
    row("study-seeds-negative", 2, "--seeds 0,-1 is not allowed; give non-negative integers", "study collapse --out {o} --seeds 0,-1"),
    row("study-seeds-empty", 2, "--seeds 0,,1 is not allowed; give non-negative integers", "study collapse --out {o} --seeds 0,,1"),
    row("study-seeds-duplicate", 2, "--seeds 0,1,0 is not allowed; seed 0 is repeated", "study collapse --out {o} --seeds 0,1,0"),
    row("study-seed-and-seeds", 2, "--seed and --seeds are not allowed together", "study collapse --out {o} --seed 1 --seeds 0,1"),
    row("study-seg-steps-zero", 2, f"argument --seg-steps: 0 {POS}", "study collapse --out {o} --seg-steps 0"),
    row("study-generator-notmodel", 2, NOT_DIFFUSERS, "study collapse --out {o} --generator {notmodel}"),
    # verify
    row("verify-missing", 2, "{t}/nothing does not exist", "verify {t}/nothing"),
    row("verify-empty", 2, "{empty} is not a corpus (no corpus.json)", "verify {empty}"),
    row("verify-newer", 2, NEW, "verify {tw} {new}"),
    # vacuum, repair
    row("vacuum-missing", 2, "{t}/nothing does not exist", "vacuum {t}/nothing"),
    row("vacuum-file", 2, "{file} is not a directory; give a corpus folder", "vacuum {file} --dry-run"),
    row("vacuum-empty", 2, "{empty} is not a corpus (no corpus.json) nor the output of an unfinished job", "vacuum {empty}"),
    row("repair-missing", 2, "{t}/nothing does not exist", "repair {t}/nothing"),
    row("repair-empty", 2, "{empty} is not a corpus (no corpus.json)", "repair {empty}"),
    row("vacuum-newer", 2, NEW, "vacuum {new}"),
    row("vacuum-newer-dry-run", 2, NEW, "vacuum {new} --dry-run"),
    row("repair-newer", 2, NEW, "repair {new}"),
    # audit
    row("audit-missing", 2, "corpus {t}/nothing does not exist", "audit {t}/nothing"),
    row("audit-overwrite-without-plot", 2, "--overwrite applies to --plot", "audit {tw} --overwrite"),
    row("audit-newer", 2, NEW, "audit {new}"),
    row("audit-fraction-above-1", 2, "1.5 is not allowed; it must be in [-1.0, 1.0]", "audit {tw} --max-synthetic-fraction 1.5"),
    row("audit-generation-below", 2, "argument --max-generation: -2 is not allowed; it must be >= -1", "audit {tw} --max-generation -2"),
    row("audit-plot-not-png", 2, "--plot {t}/plot.svg is not allowed; give a .png file", "audit {tw} --plot {t}/plot.svg"),
    row("audit-min-diversity-below-1", 2, "argument --min-diversity: 0.5 is not allowed; it must be in [1.0, inf)", "audit {tw} --min-diversity 0.5"),
    row("audit-min-diversity-abc", 2, "argument --min-diversity: 'wide' is not a number", "audit {tw} --min-diversity wide"),
    row("audit-min-diversity-without-figure", 2, "--min-diversity needs the diversity figure; it cannot go with --no-diversity", "audit {tw} --min-diversity 2 --no-diversity"),
    # train-generator
    row("train-generator-data-missing", 2, "corpus {t}/nothing does not exist", "train-generator --data {t}/nothing --out {o}"),
    row("train-generator-data-empty", 2, "{empty} is not a corpus: it has no corpus.json", "train-generator --data {empty} --out {o}"),
    row("train-generator-data-newer", 2, NEW, "train-generator --data {new} --out {o}"),
    row("train-generator-steps-zero", 2, f"argument --steps: 0 {POS}", "train-generator --data {tw} --out {o} --steps 0"),
    row("train-generator-snr-gamma-negative", 2, "argument --snr-gamma: -1.0 is not allowed; it must be in [0.0, inf)", "train-generator --data {tw} --out {o} --snr-gamma -1"),
    row("train-generator-lr-negative", 2, "argument --lr: -0.1 is not allowed; it must be in (0.0, inf)", "train-generator --data {tw} --out {o} --lr -0.1"),
    row("train-generator-decay-after-end", 2, "--decay-from 5: must be below --steps 5 (0 = no cool-down)", "train-generator --data {tw} --out {o} --steps 5 --decay-from 5"),
    row("train-generator-time-limit-zero", 2, "argument --time-limit: 0.0 is not allowed; it must be in (0.0, inf)", "train-generator --data {tw} --out {o} --time-limit 0"),
    row("train-generator-out-file", 2, "--out {file} is a file; give a folder for the model", "train-generator --data {tw} --out {file}"),
    row("train-generator-size-mismatch", 2, "--size 64 does not match the corpus images (32x32)", "train-generator --data {tw} --out {o} --size 64 --steps 1"),
    # sample
    row("sample-generator-missing", 2, "--generator {t}/nothing: no such folder", "sample --generator {t}/nothing --n 2 --seed 0 --out {o}"),
    row("sample-truncation-with-views", 2, "--truncation applies to --op gaussian and interp", f"{SAMPLE} --op views --real {{tw}} --truncation 1.5"),
    row("sample-real-with-gaussian", 2, "--real applies to --op views; the op is gaussian", f"{SAMPLE} --real {{tw}}"),
    row("sample-radius-with-interp", 2, "--radius applies to --op views; the op is interp", f"{SAMPLE} --op interp --radius 0.3"),
    row("sample-generator-empty", 2, NOT_DIFFUSERS, "sample --generator {empty} --n 2 --seed 0 --out {o}"),
    row("sample-generator-notmodel", 2, NOT_DIFFUSERS, "sample --generator {notmodel} --n 2 --seed 0 --out {o}"),
    row("sample-generator-vae", 2, "holds a 'AutoencoderKL'; only pixel-space UNet2DModel generators (unconditional or class-conditional) or Stable Diffusion folders", "sample --generator {vae} --n 2 --seed 0 --out {o}"),
    row("sample-n-abc", 2, "argument --n: 'two' is not an integer", "sample --generator {model} --n two --seed 0 --out {o}"),
    row("sample-class-cfg-negative", 2, "argument --class-cfg-scale: -1.0 is not allowed; it must be in [0.0, 100.0]", "sample --generator {model} --n 2 --seed 0 --out {o} --class-cfg-scale -1"),
    row("sample-truncation-negative", 2, "--truncation -1.0 is not allowed; it must be > 0", f"{SAMPLE} --truncation -1"),
    row("sample-views-no-real", 2, "--op views needs --real CORPUS", f"{SAMPLE} --op views"),
    row("sample-index-out-of-range", 2, "--index 999 is out of range for corpus {tw}", f"{SAMPLE} --op views --real {{tw}} --index 999 --steps 2"),
    row("sample-dtype-cpu", 2, "--dtype float16 is not allowed on the CPU", f"{SAMPLE} --dtype float16 --device cpu"),
    row("sample-out-readonly", 1, "--out {ro}/o: permission denied; {ro} is not writable", "sample --generator {model} --n 2 --seed 0 --steps 2 --out {ro}/o", root_skips=True),
    # eval-generator
    row("eval-generator-real-newer", 2, NEW, "eval-generator --generator {model} --real {new} --n 2"),
    row("eval-generator-k-zero", 2, f"argument --k: 0 {POS}", "eval-generator --generator {model} --real {tw} --k 0"),
    row("eval-generator-notmodel", 2, NOT_DIFFUSERS, "eval-generator --generator {notmodel} --real {tw} --n 2"),
    # train-labeler
    row("train-labeler-shots-too-many", 2, "--shots 101 is not allowed; it must be between 1 and 100", f"{TRAIN_LAB} --shots 101"),
    row("train-labeler-views-too-many", 2, "--views 17 is not allowed; it must be between 1 and 16", f"{TRAIN_LAB} --views 17"),
    row("train-labeler-views-zero", 2, "argument --views: 0 is not allowed", f"{TRAIN_LAB} --views 0"),
    row("train-labeler-ignore-negative", 2, "argument --ignore-above: -0.1 is not allowed; it must be in [0.0, inf)", f"{TRAIN_LAB} --ignore-above -0.1"),
    row("train-labeler-timesteps-abc", 2, "--timesteps 'x' is not an integer", f"{TRAIN_LAB} --timesteps 50,x"),
    row("train-labeler-timesteps-range", 2, "--timesteps 1000 is not allowed; it must be in [0, 999]", f"{TRAIN_LAB} --timesteps 50,1000"),
    row("train-labeler-block-unknown", 2, "feature block 'up9' does not exist in this UNet; allowed: mid, up0, up1", f"{TRAIN_LAB} --blocks mid,up9 --shots 1 --members 1"),
    row("train-labeler-data-empty", 2, "{empty} is not a corpus: it has no corpus.json", "train-labeler --generator {model} --data {empty} --out {o}"),
    row("train-labeler-notmodel", 2, NOT_DIFFUSERS, "train-labeler --generator {notmodel} --data {tw} --out {o}"),
    # eval-labeler
    row("eval-labeler-empty", 2, "--labeler {empty} is not a labeler folder (no labeler.json)", "eval-labeler --generator {model} --labeler {empty} --data {tw}"),
    row("eval-labeler-quiet", 2, "unrecognized arguments: --quiet", "eval-labeler --labeler {lab} --data {tw} --quiet"),
    row("server-quiet", 2, "unrecognized arguments: --quiet", "server --quiet"),
    row("eval-labeler-missing", 2, "--labeler {t}/nothing is not a labeler folder", "eval-labeler --generator {model} --labeler {t}/nothing --data {tw}"),
    row("eval-labeler-other-generator", 2, "was trained on generator model@", "eval-labeler --generator {other} --labeler {lab} --data {tw}"),
    row("eval-labeler-data-newer", 2, NEW, "eval-labeler --generator {model} --labeler {lab} --data {new}"),
    row("eval-labeler-data-other-classes", 2, "--data {cats} has classes background, cat; the labeler was trained on background, disk, square, triangle", "eval-labeler --generator {model} --labeler {lab} --data {cats}"),
    # train-classifier
    row("train-classifier-steps-zero", 2, f"argument --steps: 0 {POS}", "train-classifier --generator {model} --data {tw} --out {o} --steps 0"),
    row("train-classifier-dense-negative", 2, "--dense-loss -1.0 is not allowed; it must be between 0 and 100", "train-classifier --generator {model} --data {tw} --out {o} --dense-loss -1"),
    row("train-classifier-data-missing", 2, "corpus {t}/nothing does not exist", "train-classifier --generator {model} --data {t}/nothing --out {o}"),
    row("train-classifier-out-readonly", 1, "--out {ro}/c: permission denied; {ro} is not writable", "train-classifier --generator {model} --data {tw} --out {ro}/c", root_skips=True),
    row("train-classifier-out-file", 2, "--out {file} already exists and is not an empty folder", "train-classifier --generator {model} --data {tw} --out {file}"),
    # generate
    row("generate-class-unknown", 2, "--classes: 'zebra' is not a class; allowed: disk, square, triangle or balanced", f"{GEN} --classes zebra"),
    row("generate-class-count-zero", 2, "--classes: count 0 of disk is not allowed; it must be between 1 and 1000", f"{GEN} --classes disk=0"),
    row("generate-n-zero", 2, f"argument --n: 0 {POS}", f"{GEN} --n 0"),
    row("generate-drop-fraction", 2, "--set filter.drop_fraction = 1.5 is not allowed; it must be in [0.0, 0.99]", f"{GEN} --set filter.drop_fraction=1.5"),
    # generate on a text-to-image model (SD): prompts and the cross-attention labeler
    row("generate-xattn-pixel-model", 2, "--labeler cross-attention needs a text-to-image generator", f"{SD_GEN} --generator {{model}}"),
    row("generate-xattn-balanced", 2, "--labeler cross-attention needs the classes by name: --classes disk,square", "generate --generator {sd} --labeler cross-attention --classes balanced --n 2 --seed 0 --out {o}"),
    row("generate-xattn-no-word", 2, "the prompt 'a round coin' does not contain the class word 'disk'", f"{SD_GEN} --prompts 'disk=a round coin'"),
    row("generate-prompt-template", 2, "--prompt-template 'a photo' must contain {{class}}", f"{SD_GEN} --prompt-template 'a photo'"),
    row("generate-prompts-class", 2, "--prompts: 'cat=a cat' is not CLASS=PROMPT|PROMPT; classes: disk, square", f"{SD_GEN} --prompts 'cat=a cat'"),
    row("generate-cfg-negative", 2, "prompt.cfg_scale = -1.0 is not allowed; it must be in [0.0, 100.0]", f"{SD_GEN} --cfg-scale -1"),
    row("generate-attention-band", 2, "attention thresholds low 0.7 and high 0.6 are not allowed", f"{SD_GEN} --attention-low 0.7"),
    row("generate-min-confidence-alone", 2, "--min-confidence needs --classifier and --classes", f"{GEN} --set filter.min_confidence=0.5"),
    row("generate-min-confidence", 2, "filter.min_confidence = 1.5 is not allowed; it must be in [0.0, 1.0]", f"{GEN} --min-confidence 1.5"),
    row("generate-workers-zero", 2, f"argument --workers: 0 {POS}", f"{GEN} --workers 0"),
    row("generate-prompt-on-pixel-model", 2, "prompt.negative applies to text-to-image generators", f"{GEN} --negative-prompt blurry"),
    row("generate-attention-on-pixel-model", 2, "attention.refine applies to text-to-image generators", f"{GEN} --attention-refine 2"),
    row("generate-class-cfg-on-unconditional", 2, "guidance.cfg_scale applies to class-conditional pixel generators", f"{GEN} --class-cfg-scale 2"),
    row("generate-dask-address-under-threads", 2, "--dask-address applies to --runner dask; the runner is threads", f"{GEN} --dask-address tcp://127.0.0.1:1"),
    row("generate-ray-address-under-threads", 2, "--ray-address applies to --runner ray; the runner is threads", f"{GEN} --ray-address 127.0.0.1:1"),
    row("generate-ray-address-under-dask", 2, "--ray-address applies to --runner ray; the runner is dask", f"{GEN} --runner dask --ray-address 127.0.0.1:1"),
    row("generate-workers-under-ray", 2, "--workers 2 does not apply to --runner ray", f"{GEN} --runner ray --workers 2"),
    row("generate-workers-with-dask-address", 2, "with --dask-address the cluster has its own", f"{GEN} --runner dask --dask-address tcp://127.0.0.1:1 --workers 2"),
    row("generate-labeler-empty", 2, "--labeler {empty} is not a labeler folder", f"{GEN} --labeler {{empty}}"),
    row("generate-labeler-other-generator", 2, "was trained on generator model@", f"{GEN} --generator {{other}}"),
    row("generate-generator-notmodel", 2, NOT_DIFFUSERS, f"{GEN} --generator {{notmodel}}"),
    row("generate-classifier-empty", 2, "--classifier {empty} is not a classifier folder", f"{GEN} --classifier {{empty}} --guidance-scale 1"),
    row("generate-guidance-without-classifier", 2, "--guidance-scale needs --classifier", f"{GEN} --guidance-scale 1"),
    row("generate-missing-labeler", 2, "model.labeler is required", "generate --out {o} --n 4 --seed 0"),
    row("generate-config-missing", 2, "--config {t}/nothing.toml does not exist", "generate --config {t}/nothing.toml"),
    row("generate-set-unknown", 2, "--set: unknown key 'job.size'", f"{GEN} --set job.size=3"),
    row("generate-real-newer", 2, NEW, f"{GEN} --real {{new}}"),
    row("generate-dry-run-class-unknown", 2, "--classes: 'zebra' is not a class", f"{GEN} --classes zebra --dry-run"),
    row("generate-out-readonly", 1, "--out {ro}/o: permission denied; {ro} is not writable", "generate --config {job} --out {ro}/o", root_skips=True),
    # serve, server
    row("serve-cron-bad", 2, "--cron 'every day' is not a valid cron schedule", "serve --config {job} --cron 'every day'"),
    row("serve-missing-cron", 2, "the following arguments are required: --cron", "serve --config {job}"),
    row("server-port-zero", 2, "argument --port: 0 is not allowed; it must be in [1, 65535]", "server --port 0"),
    row("server-port-too-big", 2, "argument --port: 70000 is not allowed; it must be in [1, 65535]", "server --port 70000"),
    # refilter
    row("refilter-missing", 2, "corpus {t}/nothing does not exist", "refilter {t}/nothing --out {o}"),
    row("refilter-not-generated", 2, "{tw} was not written by dpp generate", "refilter {tw} --out {o}"),
    row("refilter-newer", 2, NEW, "refilter {new} --out {o}"),
    row("refilter-drop-fraction", 2, "argument --drop-fraction: 1.5 is not allowed; it must be in [0.0, 0.99]", "refilter {tw} --out {o} --drop-fraction 1.5"),
    # relabel
    row("relabel-missing", 2, "corpus {t}/nothing does not exist", "relabel {t}/nothing --labeler {lab} --out {o}"),
    row("relabel-not-generated", 2, "{tw} was not written by dpp generate (or dpp relabel); relabel needs the seeds and images a generate job stores", "relabel {tw} --labeler {lab} --out {o}"),
    row("relabel-newer", 2, NEW, "relabel {new} --labeler {lab} --out {o}"),
    row("relabel-drop-fraction", 2, "argument --drop-fraction: 1.5 is not allowed; it must be in [0.0, 0.99]", "relabel {tw} --labeler {lab} --out {o} --drop-fraction 1.5"),
    row("relabel-no-labeler", 2, "the following arguments are required: --labeler", "relabel {tw} --out {o}"),
    # eval-seg
    row("eval-seg-train-missing", 2, "corpus {t}/nothing does not exist", "eval-seg --train {t}/nothing --test {tw}"),
    row("eval-seg-test-empty", 2, "{empty} is not a corpus: it has no corpus.json", "eval-seg --train {tw} --test {empty}"),
    row("eval-seg-newer", 2, NEW, "eval-seg --train {new} --test {tw}"),
    row("eval-seg-other-classes", 2, "--test {cats} has classes ['background', 'cat']", "eval-seg --train {tw} --test {cats}"),
    row("eval-seg-steps-zero", 2, f"argument --steps: 0 {POS}", "eval-seg --train {tw} --test {tw} --steps 0"),
    row("eval-seg-threads-zero", 2, f"argument --threads: 0 {POS}", "eval-seg --train {tw} --test {tw} --threads 0"),
    # reproduce
    row("reproduce-missing", 2, "corpus {t}/nothing does not exist", "reproduce {t}/nothing syn-000000-000000"),
    row("reproduce-empty", 2, "{empty} is not a corpus: it has no corpus.json", "reproduce {empty} syn-000000-000000"),
    row("reproduce-newer", 2, NEW, "reproduce {new} syn-000000-000000"),
    row("reproduce-key-unknown", 2, "no sample 'syn-000000-000000' in {tw} (40 keys, e.g. tw-000000-000000); `tar tf {tw}/shards/shard-000000.tar` lists", "reproduce {tw} syn-000000-000000"),
    row("reproduce-key-malformed", 2, "key 'a.png' is not allowed; sample keys match [A-Za-z0-9_-]+", "reproduce {tw} a.png"),
    row("reproduce-real-sample", 2, "tw-000000-000003 in {tw} is a real sample written by toyworld; only samples rendered by dpp generate", "reproduce {tw} tw-000000-000003"),
    row("reproduce-out-not-png", 2, "--out {t}/r.jpg must end in .png", "reproduce {tw} tw-000000-000003 --out {t}/r.jpg"),
    # preview
    row("preview-missing", 2, "corpus {t}/nothing does not exist", "preview {t}/nothing --out {t}/p.png"),
    row("preview-newer", 2, NEW, "preview {new} --out {t}/p.png"),
    row("preview-n-zero", 2, f"argument --n: 0 {POS}", "preview {tw} --out {t}/p.png --n 0"),
    row("preview-out-not-png", 2, "--out {t}/p.jpg must end in .png", "preview {tw} --out {t}/p.jpg"),
    row("preview-out-readonly", 1, "Permission denied: {ro}/p.png", "preview {tw} --out {ro}/p.png", root_skips=True),
    # view
    row("view-missing", 2, "corpus {t}/nothing does not exist", "view {t}/nothing"),
    row("view-empty", 2, "{empty} is not a corpus: it has no corpus.json", "view {tw} {empty}"),
    row("view-newer", 2, NEW, "view {new}"),
    row("view-port-zero", 2, "argument --port: 0 is not allowed; it must be in [1, 65535]", "view {tw} --port 0"),
    row("view-port-abc", 2, "argument --port: 'http' is not an integer", "view {tw} --port http"),
    row("view-export-exists", 2, "--export {file} already exists and is not an empty folder", "view {tw} --export {file}"),
]  # fmt: skip


@pytest.mark.parametrize("cmd,code,needle,readonly", ROWS)
def test_bad_input(bad, tmp_path, capsys, monkeypatch, cmd, code, needle, readonly):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land in the snapshot
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    names = {"o": tmp_path / "o", "t": tmp_path, **bad}
    argv = [a.format(**names) for a in shlex.split(cmd)]
    needle = needle.format(**names)
    roots = [tmp_path, bad["ro"].parent, *(bad[k] for k in ("tw", "model", "lab"))]
    before = [tree_bytes(r) for r in roots]
    capsys.readouterr()
    if readonly and ROOT:
        seen, err = _run_without_root_powers(argv, tmp_path)
    else:
        seen = main(argv)
        err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert seen == code, err
    assert [tree_bytes(r) for r in roots] == before, "a refused command wrote or changed files"
