"""The package boundaries of DESIGN.md, checked on the source: who may import whom."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"pipeline", "flows", "labelers", "manifests"}
ALLOWED = {
    "manifests": set(),
    "labelers": set(),
    "pipeline": {"labelers", "manifests"},
    "flows": {"pipeline", "labelers", "manifests"},
}
DIFFUSERS_MODULES = {
    "pipeline/generator.py",
    "pipeline/text_generator.py",
    "pipeline/features.py",
    "pipeline/train_generator.py",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules():
    for pkg in ALLOWED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path, _imports(path)


def test_packages_import_only_what_design_allows():
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for pkg, p, names in _modules()
        for n in names & OURS - {pkg} - ALLOWED[pkg]
    ]
    assert not bad, bad


def test_manifests_need_no_torch():
    bad = [
        str(p.relative_to(ROOT))
        for pkg, p, names in _modules()
        if pkg == "manifests" and names & {"torch", "diffusers"}
    ]
    assert not bad, bad


def test_only_flows_import_prefect_and_only_generator_modules_import_diffusers():
    bad = []
    for pkg, p, names in _modules():
        rel = str(p.relative_to(ROOT))
        if "prefect" in names and pkg != "flows":
            bad.append(f"{rel} imports prefect")
        if "diffusers" in names and rel not in DIFFUSERS_MODULES:
            bad.append(f"{rel} imports diffusers")
    assert not bad, bad


def test_the_rule_checker_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn\nfrom flows.cli import main\nfrom . import x\n")
    assert _imports(f) == {"torch", "flows"}
