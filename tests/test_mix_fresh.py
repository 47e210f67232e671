"""dpp mix --policy fresh: a fixed real share each generation, exact counts by a stated rounding rule
(nearest integer, ties to even, on the exact decimal fraction), recorded as `fresh` in corpus.json."""

import pytest

from flows.cli import main
from manifests.audit import audit
from manifests.format.record import load_corpus
from manifests.mix import fresh_counts

from .conftest import tree_bytes
from .test_mix import _rows, constructed


@pytest.mark.parametrize(
    "fraction, n, real",
    [
        (0.5, 10, 5),
        (0.25, 10, 2),  # 2.5: a tie, to even
        (0.75, 10, 8),  # 7.5: a tie, to even
        (0.05, 10, 0),  # 0.5: a tie, to even (zero real samples)
        (0.95, 10, 10),  # 9.5: a tie, to even (zero synthetic samples)
        (0.3, 5, 2),  # 1.5
        (0.1, 25, 2),  # 2.5
        (0.35, 90, 32),  # exactly 31.5; in binary floating point 0.35 * 90 = 31.499999999999996 -> 31
        (0.55, 110, 60),  # exactly 60.5; in binary floating point 0.55 * 110 = 60.50000000000001 -> 61
        (0.2, 7, 1),  # 1.4
        (0.2, 8, 2),  # 1.6
        (1 / 3, 3, 1),  # 0.9999999999999999 rounds to 1
        (0.5, 1, 0),  # 0.5
    ],
)
def test_fresh_counts_round_half_to_even_on_the_decimal_fraction(fraction, n, real):
    assert fresh_counts(fraction, n) == (real, n - real)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """70 real samples (generation 0), 10 of generation 1 and 60 of generation 2."""
    base = tmp_path_factory.mktemp("fresh")
    return (
        constructed(base / "real", 70, "real", 0, "real"),
        constructed(base / "gen1", 10, "synthetic", 1, "gen1", cls=2),
        constructed(base / "gen2", 60, "synthetic", 2, "gen2", cls=3),
    )


@pytest.mark.parametrize(
    "fraction, n, real",
    [("0.5", 10, 5), ("0.25", 10, 2), ("0.75", 10, 8), ("0.05", 10, 0), ("0.35", 90, 32), ("0.55", 110, 60)],
)
def test_fresh_policy_gives_exact_counts_and_records_itself(pool, tmp_path, capsys, fraction, n, real):
    out = tmp_path / "m"
    argv = ["mix", *map(str, pool), "--policy", "fresh", "--real-fraction", fraction, "--n", str(n)]
    assert main([*argv, "--seed", "3", "--shard-size", "16", "--out", str(out)]) == 0
    assert f"policy fresh: {n - real} synthetic + {real} real" in capsys.readouterr().out
    rec = load_corpus(out)
    assert rec["counts"] == {"real": real, "synthetic": n - real, "rejected": 0}
    # the synthetic part is the deepest generation only; the real part is generation 0
    assert rec["per_generation"] == {g: k for g, k in (("0", real), ("2", n - real)) if k}
    rows = [r for r in _rows(out) if r["kept"]]
    assert sum(r["origin"] == "real" for r in rows) == real and len(rows) == n
    assert len({(r["source_corpus"], r["source_key"]) for r in rows}) == n  # no sample twice
    p = rec["policy"]
    assert p["name"] == "fresh" and p["real_fraction"] == float(fraction) and "ties to even" in p["rounding"]
    assert (p["n"], p["real"], p["synthetic"]) == (n, real, n - real)
    assert [s["taken"] for s in p["sources"]] == [real, 0, n - real]
    assert rec["config"]["policy"] == "fresh" and rec["config"]["real_fraction"] == float(fraction)
    assert audit([out])["corpora"][0]["lineage"]["policy"] == "fresh"


def test_fresh_policy_draws_by_seed(pool, tmp_path):
    def keys(seed: int, name: str) -> set:
        argv = ["mix", *map(str, pool), "--policy", "fresh", "--real-fraction", "0.5", "--n", "20"]
        assert main([*argv, "--seed", str(seed), "--out", str(tmp_path / name), "--quiet"]) == 0
        return {(r["source_corpus"], r["source_key"]) for r in _rows(tmp_path / name)}

    assert keys(1, "a") == keys(1, "b") and keys(1, "a") != keys(2, "c")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--policy", "accumulate", "--real-fraction", "0.5"], "--real-fraction is for --policy fresh, not accumulate"),  # noqa: E501
        (["--synthetic-fraction", "0.5", "--n", "10", "--real-fraction", "0.5"], "--real-fraction is for --policy fresh, not mix"),  # noqa: E501
        (["--real-fraction", "0.5", "--n", "10"], "--real-fraction needs --policy fresh"),
        (["--policy", "fresh", "--real-fraction", "0", "--n", "10"], "argument --real-fraction: 0.0 is not allowed; it must be in (0.0, 1.0)"),  # noqa: E501
        (["--policy", "fresh", "--real-fraction", "1", "--n", "10"], "argument --real-fraction: 1.0 is not allowed; it must be in (0.0, 1.0)"),  # noqa: E501
        (["--policy", "fresh", "--real-fraction", "-0.2", "--n", "10"], "-0.2 is not allowed; it must be in (0.0, 1.0)"),  # noqa: E501
        (["--policy", "fresh", "--real-fraction", "nan", "--n", "10"], "nan is not allowed; it must be in (0.0, 1.0)"),  # noqa: E501
        (["--policy", "fresh", "--real-fraction", "half", "--n", "10"], "argument --real-fraction: 'half' is not a number"),  # noqa: E501
        (["--policy", "fresh", "--n", "10"], "--policy fresh needs --n and --real-fraction"),
        (["--policy", "fresh", "--real-fraction", "0.5"], "--policy fresh needs --n and --real-fraction"),
        (["--policy", "fresh", "--real-fraction", "0.5", "--n", "200"], "needs 100 real and 100 synthetic samples of generation 2; the sources hold 70 real"),  # noqa: E501
    ],
)  # fmt: skip
def test_fresh_policy_refusals(pool, tmp_path, capsys, extra, needle):
    before = tree_bytes(tmp_path)
    assert main(["mix", *map(str, pool), *extra, "--seed", "0", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert tree_bytes(tmp_path) == before


def test_fresh_policy_needs_synthetic_samples(pool, tmp_path, capsys):
    argv = ["mix", str(pool[0]), "--policy", "fresh", "--real-fraction", "0.5", "--n", "10", "--seed", "0"]
    assert main([*argv, "--out", str(tmp_path / "m")]) == 2
    assert "--policy fresh needs synthetic samples; the sources hold none" in capsys.readouterr().err
