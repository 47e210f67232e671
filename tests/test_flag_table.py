"""Every option does what it says. One table over every `dpp` command's flags: each flag is either
part of a job's config hash (probed: changing it changes the hash of `dpp generate --dry-run`, or the
job refuses it in one line), deliberately outside the hash (with the reason), or a run-time option
whose effect a named test module exercises. The table must list exactly the parser's flags, so a new
flag cannot land unclassified; `--debug` is probed on every command."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from flows.cli import build_parser, main
from flows.cli.args import _flag as flag_for
from pipeline.generate.settings import FIELDS

from .test_bad_input import ROWS
from .test_bad_input import bad as bad  # the bad-input battery's fixture (its corpora and models)

TESTS = Path(__file__).parent


def _parser_flags() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {a.option_strings[-1] for a in p._actions if a.option_strings and a.dest != "help"}
        for name, p in sub.choices.items()
    }


FLAGS = _parser_flags()

# --- flags of `dpp generate` (and `dpp serve`, which takes the same job settings) -------------------

# job settings that do not change a sample's bytes, so they stay out of the config hash; the probe
# checks that the hash is indeed unchanged
NOT_HASHED = {
    "job.out": "where the corpus goes; its id comes from the hash",
    "job.runner": "where tasks run: every runner gives the same bytes (tests/test_flow_generate.py, "
    "tests/test_distributed_runners.py)",
    "job.workers": "how many shards at once: the same bytes (tests/test_flow_generate.py)",
    "job.dask_address": "which Dask cluster: the same bytes (tests/test_distributed_runners.py)",
    "job.ray_address": "which Ray cluster: the same bytes (tests/test_distributed_runners.py)",
    "model.device": "recorded per shard (rendered_on); mixing is refused: tests/test_device_record.py",
    "model.dtype": "recorded per shard (rendered_on); mixing is refused: tests/test_device_record.py",
    "model.allow_device_change": "lets a resume or append mix devices (tests/test_device_record.py)",
    "model.allow_pickle": "lets a pickle-only model load; its weights' id is hashed (test_safe_loading.py)",
}

# a value to try for each job setting (the job under test: the tiny unconditional 32x32 model and its
# labeler, n = 4, seed 5); a setting missing here gets its default + 1, another choice, or not default
TRY = {
    "job.n": 6,
    "job.seed": 6,
    "job.shard_size": 4,
    "job.out": "{t}/other-out",
    "job.runner": "dask",
    "job.dask_address": "tcp://127.0.0.1:1",
    "job.ray_address": "127.0.0.1:1",
    "model.generator": "{cond}",
    "model.labeler": "cross-attention",
    "model.device": "cpu",
    "guidance.classifier": "{t}/no-classifier",
    "guidance.classes": "blob",
    "prompt.template": "a drawing of a {{class}}",
    "prompt.prompts": "blob=a coin",
    "prompt.negative": "blurry",
    "filter.real": "{tw}",
}

# settings whose probe is refused rather than hashed on this job, and why that is right
REFUSED = {
    "job.append": "nothing to append to at a new output (an append is hashed: tests/test_flow_generate.py)",
    "guidance.scale": "guidance needs --classifier (its scale is hashed: tests/test_generate_filters.py)",
    "filter.min_confidence": "needs --classifier and --classes (hashed: tests/test_generate_filters.py)",
    "job.dask_address": "applies to --runner dask only",
    "job.ray_address": "applies to --runner ray only",
    "model.generator": "the labeler was trained on another generator's features",
    "model.labeler": "cross-attention needs a text-to-image generator",
    "model.dtype": "half precision runs on a GPU only",
    "guidance.classifier": "no classifier there (a real one is hashed by its id: tests/test_classifier.py)",
    "guidance.classes": "not a class of the labeler",
    "guidance.cfg_scale": "classifier-free guidance needs a class-conditional generator",
    "prompt.template": "prompts apply to text-to-image generators only",
    "prompt.prompts": "prompts apply to text-to-image generators only",
    "prompt.negative": "prompts apply to text-to-image generators only",
    "prompt.cfg_scale": "prompts apply to text-to-image generators only",
    "attention.low": "the cross-attention labeler needs a text-to-image generator",
    "attention.high": "the cross-attention labeler needs a text-to-image generator",
    "attention.refine": "the cross-attention labeler needs a text-to-image generator",
    "attention.agreement": "the cross-attention labeler needs a text-to-image generator",
}

# settings probed together with the one they need (both in the base run and in the probe)
WITH = {"filter.max_realism_distance": ["--real", "{tw}"]}

# a refusal names the flag, its key or its value, or (here) what it conflicts with
NAMED_BY = {"model.generator": ("--labeler",)}


def _other_value(f, names: dict):
    if f.key in TRY:
        v = TRY[f.key]
        return v.format(**names) if isinstance(v, str) else v
    if f.choices:
        return next(c for c in f.choices if c != f.default)
    if f.kind is bool:
        return not f.default
    if f.kind is int:
        return (f.default or 0) + 1
    if f.kind is float:
        return round((f.default or 0.0) + 0.25, 2) if f.hi is None or (f.default or 0) + 0.25 <= f.hi else 0.1
    raise AssertionError(f"no value to try for {f.key}")


def _plan(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    cap = capsys.readouterr()
    found = re.search(r"config hash ([0-9a-f]+)", cap.out)
    return code, found.group(1) if found else "", cap.err.strip()


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny32_model_dir, labeler_dir):
    d = tmp_path_factory.mktemp("flags")
    path = d / "job.toml"
    path.write_text(
        f'[job]\nout = "{d / "out"}"\nn = 4\nseed = 5\nshard_size = 2\n'
        f'[model]\ngenerator = "{tiny32_model_dir}"\nlabeler = "{labeler_dir}"\nsteps = 2\nbatch_size = 4\n'
        "[filter]\nmin_target_pixels = 0\nblock = 4\n"
    )
    return path


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.key)
def test_each_job_setting_changes_the_hash_or_is_refused(f, job, tmp_path, tw_corpus, tiny_cond_dir, capsys):
    """The probe of issue 19: every `dpp generate` flag, set to another value on a dry run."""
    names = {"t": tmp_path, "tw": tw_corpus, "cond": tiny_cond_dir}
    argv = ["generate", "--config", str(job), "--dry-run", *(a.format(**names) for a in WITH.get(f.key, []))]
    base_code, base, _ = _plan(capsys, argv)
    assert base_code == 0 and base
    value = _other_value(f, names)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if f.kind is bool:  # a bool flag only switches on; off goes through --set
        argv += [flag_for(f)] if value else ["--set", f"{f.key}=false"]
    else:
        argv += [flag_for(f), text]
    code, chash, err = _plan(capsys, argv)
    if f.key in REFUSED:
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        names = (flag_for(f), f.key, text, *NAMED_BY.get(f.key, ()))
        assert any(s in err for s in names), f"the refusal does not name {f.key}: {err}"
    elif f.key in NOT_HASHED:
        assert code == 0 and chash == base, err
    else:
        assert code == 0, err
        assert chash != base, f"{flag_for(f)} {text} was accepted and did not change the config hash"


def test_serve_takes_the_same_job_settings_as_generate():
    generate_only = {"--dry-run", "--overwrite", "--verbose", "--quiet"}
    serve_only = {"--cron", "--name"}
    assert FLAGS["serve"] - serve_only == FLAGS["generate"] - generate_only
    assert {flag_for(f) for f in FIELDS} <= FLAGS["generate"]


# --- every other flag of every command: exercised by some test ---------------------------------------

JOB_FLAGS = {flag_for(f) for f in FIELDS}  # probed above, for generate and serve alike
# modules that only refuse bad values (the battery) or only list flags (this file) do not count
NOT_EXERCISING = {"test_bad_input.py", "test_flag_table.py"}


def _exercised(flag: str) -> list[str]:
    return [
        p.name
        for p in sorted(TESTS.glob("test_*.py"))
        if p.name not in NOT_EXERCISING and re.search(re.escape(flag) + r"(?![\w-])", p.read_text())
    ]


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_flag_is_exercised_by_a_test(command):
    """A flag that no test passes could be accepted and ignored unnoticed; job settings are probed above."""
    unexercised = [
        f
        for f in sorted(FLAGS[command])
        if f != "--debug" and not (command in ("generate", "serve") and f in JOB_FLAGS) and not _exercised(f)
    ]
    assert not unexercised, f"dpp {command}: no test passes {', '.join(unexercised)}"


def _debug_rows() -> dict[str, str]:
    """The first bad-input row of each command (a refusal is a DppError, whose traceback --debug shows)."""
    rows: dict[str, str] = {}
    for p in ROWS:
        cmd, _code, _needle, readonly = p.values
        words = shlex.split(cmd)
        if words and not readonly and words[0] in FLAGS:
            rows.setdefault(words[0], cmd)
    return rows


DEBUG_ROWS = _debug_rows()


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_debug_shows_the_traceback_that_is_otherwise_hidden(command, bad, tmp_path, monkeypatch, capsys):
    assert command in DEBUG_ROWS, f"the bad-input battery has no row for dpp {command}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    names = {"o": tmp_path / "o", "t": tmp_path, **bad}
    argv = [a.format(**names) for a in shlex.split(DEBUG_ROWS[command])]
    capsys.readouterr()
    plain = main(argv)
    err = capsys.readouterr().err
    assert plain != 0 and "Traceback" not in err
    assert main([*argv, "--debug"]) == plain
    assert "Traceback" in capsys.readouterr().err
