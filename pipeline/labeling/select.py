"""Which labeler a job uses: `--labeler NAME` for a labeler that needs no training (the registry below),
or a folder written by `dpp train-labeler` (the few-shot pixel head). The one place a labeler is chosen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from labelers import cross_attention
from labelers.cross_attention import CrossAttentionLabeler
from manifests.errors import UsageError
from pipeline.labeling.fewshot import Labeler, load_labeler


def _cross_attention(gen, class_spec: str | None, attention) -> CrossAttentionLabeler:
    """Zero-shot masks from a text-to-image model's attention; its classes are the ones the plan names."""
    return CrossAttentionLabeler(["background", *plan_names(class_spec)], attention)


# name -> (what it is, factory(generator, --classes spec, attention rules))
REGISTRY: dict[str, tuple[str, Callable]] = {
    cross_attention.NAME: ("zero-shot masks from a text-to-image generator's attention", _cross_attention),
}


def select_labeler(spec: str, gen, class_spec: str | None, attention) -> Labeler | CrossAttentionLabeler:
    """The labeler `--labeler spec` names: a registered name, or a folder written by dpp train-labeler."""
    if spec in REGISTRY:
        return REGISTRY[spec][1](gen, class_spec, attention)
    folder = Path(spec)
    if not folder.exists():
        names = ", ".join(f"{n} ({what})" for n, (what, _) in REGISTRY.items())
        raise UsageError(
            f"--labeler {spec}: no such folder; available: {names}, or a folder written by dpp train-labeler"
        )
    return load_labeler(folder, gen)


def plan_names(spec: str | None) -> list[str]:
    """The class names a `--classes` plan lists, in order (the cross-attention labeler's classes)."""
    if not spec or spec == "balanced":
        raise UsageError(
            "--labeler cross-attention needs the classes by name: --classes disk,square (or disk=2,square=1)"
        )
    names = [part.strip().partition("=")[0].strip() for part in spec.split(",")]
    bad = [n for n in names if not n or n == "background" or n == "balanced"]
    if bad:
        raise UsageError(f"--classes {spec!r}: {bad[0]!r} is not allowed as a class name")
    return list(dict.fromkeys(names))
