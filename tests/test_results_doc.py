"""docs/results.md and `make results` agree: every marked section is written by a script that a
results target runs, and every such script's section is there (nothing hand-made, nothing missing)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results_recipes() -> dict[str, str]:
    """target -> its command line, for the targets `make results` depends on."""
    text = ROOT.joinpath("Makefile").read_text().replace("\\\n", " ")
    targets = re.search(r"^RESULTS := (.+)$", text, re.M).group(1).split()
    recipes = {}
    for t in targets:
        body = re.search(rf"^{t}: .*\n\t(.+)$", text, re.M).group(1)
        recipes[t] = re.sub(r"\s+", " ", body.replace("$(RESULTS_PY)", "python"))
    return recipes


def _sections() -> dict[str, str]:
    """section name -> the script its first line says wrote it."""
    text = ROOT.joinpath("docs/results.md").read_text()
    out = {}
    for name, body in re.findall(r"^<!-- ([\w-]+):begin -->$(.*?)^<!-- \1:end -->$", text, re.S | re.M):
        m = re.search(r"(?:Written|Produced) by `python (benchmarks/\w+\.py)[^`]*`", body)
        assert m, f"section {name} does not say which script wrote it"
        out[name] = m.group(1)
    return out


def test_every_section_is_written_by_a_make_results_target_and_none_is_missing():
    recipes = _results_recipes()
    sections = _sections()
    made = {}  # section name -> script, as the Makefile runs them
    for cmd in recipes.values():
        script = re.search(r"python (benchmarks/\w+\.py)", cmd).group(1)
        section = re.search(r"--section ([\w-]+)", cmd)
        begin = re.search(
            r'BEGIN(?:, END)? = "<!-- ([\w-]+):begin -->"|default="([\w-]+)", help="the docs section',
            ROOT.joinpath(script).read_text(),
        )
        made[section.group(1) if section else begin.group(1) or begin.group(2)] = script
    assert sections == made
    # the textured world's table is not in docs/results.md and not in `make results`
    assert "label-efficiency" not in sections
    assert not any("label_efficiency_textured" in cmd for cmd in recipes.values())
