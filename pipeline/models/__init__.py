"""The models shipped inside the package, one folder each; every shipped-model lookup (generator, classifier,
evaluation network) resolves to a folder here. What each is and the command that rebuilds it:
README.md beside this file."""

from __future__ import annotations

from pathlib import Path

MODELS = Path(__file__).parent

SHIPPED_GENERATORS = {  # the flat world's class-conditional generator; the first world's unconditional one
    "toyworld": MODELS / "toyworld",
    "toyworld-textured": MODELS / "toyworld-textured",
}
SHIPPED_CLASSIFIERS = {"toyworld": MODELS / "toyworld-classifier"}
SHIPPED_EVALNET = MODELS / "toyworld-evalnet"
TEXTURED_EVALNET = MODELS / "toyworld-textured-evalnet"
