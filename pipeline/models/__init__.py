"""The models shipped inside the package, one folder each (README.md says what each is and the command that
rebuilds it). One rule finds all of them: a shipped name resolves to the folder of that name here."""

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
