"""The samplers `--scheduler` names and their defaults (no torch import: the settings table reads them).

DPM-Solver++ (2M) in 20 steps is the default: it draws the shipped generator's shapes better than DDIM in
50 (docs/generator.md, the generator report). `--steps` defaults to the sampler's own count.
"""

SCHEDULERS = ("dpm", "ddim", "ddpm")  # dpm: DPM-Solver++ (2M), diffusers' DPMSolverMultistepScheduler
DEFAULT_SCHEDULER = "dpm"
DEFAULT_STEPS = {"dpm": 20, "ddim": 50, "ddpm": 50}


def default_steps(scheduler: str, steps: int | None) -> int:
    """`steps` as given, else the sampler's default count."""
    return DEFAULT_STEPS[scheduler] if steps is None else steps
