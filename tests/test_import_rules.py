"""The package boundaries of DESIGN.md and ARCHITECTURE.md, checked on the source: who may import whom.

- manifests (the corpus on disk) and labelers import no other package of ours; pipeline imports those
  two; flows imports everything and nothing imports flows.
- manifests never imports torch (a corpus is readable and checkable without it).
- only pipeline/diffusion/ imports diffusers or transformers; only flows imports prefect.
- no import cycles among our modules (imports under `if TYPE_CHECKING:` do not count).
"""

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
MODEL_LIBRARIES = {"diffusers", "transformers"}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every import statement, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _dotted_imports(path: Path, known: set[str]) -> set[str]:
    """The modules a file imports, as dotted names; `from pkg import mod` counts as pkg.mod when that is
    one of the `known` modules."""
    out = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    """(package, path, dotted module name, imported dotted names) for every module of ours."""
    paths = [p for pkg in ALLOWED for p in sorted((ROOT / pkg).rglob("*.py"))]
    known = {_module_name(p) for p in paths}
    for p in paths:
        yield p.relative_to(ROOT).parts[0], p, _module_name(p), _dotted_imports(p, known)


def _tops(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_packages_import_only_what_design_allows():
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for pkg, p, _, names in _modules()
        for n in _tops(names) & OURS - {pkg} - ALLOWED[pkg]
    ]
    assert not bad, bad


def test_manifests_need_no_torch():
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for pkg, p, _, names in _modules()
        if pkg == "manifests"
        for n in _tops(names) & ({"torch", "prefect"} | MODEL_LIBRARIES)
    ]
    assert not bad, bad


def test_only_flows_import_prefect_and_only_the_diffusion_folder_imports_model_libraries():
    bad = []
    for pkg, p, _, names in _modules():
        rel = p.relative_to(ROOT)
        if "prefect" in _tops(names) and pkg != "flows":
            bad.append(f"{rel} imports prefect")
        for lib in _tops(names) & MODEL_LIBRARIES:
            if rel.parts[:2] != ("pipeline", "diffusion"):
                bad.append(f"{rel} imports {lib}")
    assert not bad, bad


def test_no_import_cycles():
    mods = list(_modules())
    known = {m for _, _, m, _ in mods}
    graph = {m: {n for n in names if n in known and n != m} for _, _, m, names in mods}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_rule_checker_sees_imports_and_cycles(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import torch.nn\nfrom flows.cli import main\nfrom . import x\nfrom pipeline import seeds\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import hidden\n"
        "def f():\n    from pipeline.diffusion import load\n"
    )
    names = _dotted_imports(f, known={"pipeline.seeds", "pipeline.diffusion.load"})
    assert names == {"torch.nn", "flows.cli", "pipeline", "pipeline.seeds", "typing", "pipeline.diffusion",
                     "pipeline.diffusion.load"}  # fmt: skip
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
