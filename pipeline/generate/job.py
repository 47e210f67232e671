"""A generation job: the loaded models, counts, rules and output of one `dpp generate`, built once per
process from resolved job settings; its `config` (what the output bytes depend on) is hashed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from labelers import cross_attention
from labelers.cross_attention import CrossAttentionLabeler
from manifests.errors import UsageError
from manifests.format.layout import canonical_json, config_hash
from manifests.storage.staged import check_counts
from pipeline.diffusion.pixel import Generator
from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, DEFAULT_STEPS
from pipeline.diffusion.text import Prompts, TextGenerator, parse_prompts
from pipeline.filtering.rules import FilterRules
from pipeline.filtering.scores import Realism, load_realism
from pipeline.guidance.guide import Guide
from pipeline.labeling.fewshot import Labeler
from pipeline.labeling.select import select_labeler


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """What a generation job is, apart from its loaded models: counts, sampler, keep rules, class plan,
    prompts and output. Frozen; with the models' ids it makes the hashed `Job.config`."""

    n: int
    seed: int
    out: Path
    shard_size: int = 1000
    steps: int = DEFAULT_STEPS[DEFAULT_SCHEDULER]
    scheduler: str = DEFAULT_SCHEDULER
    batch_size: int = 16
    rules: FilterRules = field(default_factory=FilterRules)
    class_plan: tuple[str, ...] = ()
    keep_rejected: bool = False
    max_attempts: int = 10
    append: bool = False
    prompts: Prompts | None = None  # text-to-image generators: each sample's prompt, from its class
    agreement: cross_attention.AttentionLabelerConfig | None = None  # score head vs cross-attention masks
    cfg_scale: float = 3.0  # class-conditional pixel generators: classifier-free guidance towards the target
    allow_device_change: bool = False  # resume/append on another device or dtype (not hashed)

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))


@dataclass(kw_only=True)
class Job:
    """One generation job: its GenerateConfig (`cfg`) and the models it loaded, once per process. Its
    `config` (what the output bytes depend on: `cfg` and the models' ids) is hashed; the hash names the
    corpus and stamps every manifest row."""

    cfg: GenerateConfig
    gen: Generator | TextGenerator
    labeler: Labeler | CrossAttentionLabeler
    guide: Guide | None = None
    realism: Realism | None = None
    render: Callable[[list[int]], np.ndarray] | None = None  # replaces the denoising loop (benchmarks)

    def __post_init__(self):
        check_counts(self.cfg.n, self.cfg.shard_size)
        if self.text:
            self._check_text_job()
        elif self.reads_attention:
            what = "--labeler cross-attention" if self.cfg.agreement is None else "--attention-agreement"
            raise UsageError(
                f"{what} needs a text-to-image generator (a Stable Diffusion folder); {self.gen.id} is "
                "unconditional: train a labeler with dpp train-labeler"
            )
        if self.cfg.max_attempts < 1:
            raise UsageError(f"--max-attempts {self.cfg.max_attempts} is not allowed; it must be positive")
        if self.conditional:
            if not self.cfg.class_plan:
                raise UsageError(
                    f"{self.gen.id} is class-conditional and needs --classes: each sample draws its "
                    "target class"
                )
            if self.render is not None:
                raise ValueError("a render hook replaces the denoising loop; it cannot draw a class")
            for c in self.cfg.class_plan:
                if c not in self.gen.class_names:
                    raise UsageError(
                        f"--classes: {c!r} is not a class {self.gen.id} draws "
                        f"({', '.join(self.gen.class_names)})"
                    )
        guided = self.guide is not None and self.guide.scale
        if guided and not self.cfg.class_plan:
            raise UsageError("--guidance-scale needs --classes: guidance steers towards a target class")
        if self.render is not None and guided:
            raise ValueError("a render hook replaces the denoising loop, so it cannot be guided")
        for c in self.cfg.class_plan:
            if c not in self.classes:
                raise UsageError(
                    f"--classes: {c!r} is not a class of the labeler ({', '.join(self.classes)})"
                )
            if self.guide is not None and c not in self.guide.classes:
                raise UsageError(
                    f"--classes: the classifier does not know {c!r} ({', '.join(self.guide.classes)})"
                )
        if self.cfg.rules.min_confidence is not None and (self.guide is None or not self.cfg.class_plan):
            raise UsageError(
                "--min-confidence needs --classifier and --classes (it is confidence in the target)"
            )
        if self.cfg.rules.max_realism_distance is not None and self.realism is None:
            raise UsageError("--max-realism-distance needs --real (the real corpus to measure distance to)")

    @property
    def classes(self) -> list[str]:
        return self.labeler.classes

    @property
    def conditional(self) -> bool:
        """A class-conditional pixel generator: each sample is drawn as its target class, and the labeler's
        foreground becomes that class (the generator decides which shape; the head finds its pixels)."""
        return not self.text and bool(self.gen.class_names)

    @property
    def zero_shot(self) -> bool:
        """The labeler is the zero-shot cross-attention one: masks come from the text model's attention."""
        return isinstance(self.labeler, CrossAttentionLabeler)

    @property
    def reads_attention(self) -> bool:
        """The text model's attention is captured while it draws (zero-shot masks, agreement)."""
        return self.zero_shot or self.cfg.agreement is not None

    @property
    def text(self) -> bool:
        """A text-to-image generator: samples are rendered from prompts (pipeline/diffusion/text.py)."""
        return self.gen.text_conditioned

    def _check_text_job(self) -> None:
        if not self.cfg.class_plan:
            raise UsageError(
                "a text-to-image generator needs --classes: each sample's prompt names its target class"
            )
        if self.render is not None:
            raise ValueError("a render hook replaces the pixel denoising loop; it cannot render prompts")
        if self.cfg.prompts is None:
            self.cfg = replace(self.cfg, prompts=Prompts())
        if self.cfg.agreement is not None and self.zero_shot:
            raise UsageError(
                "--attention-agreement compares a few-shot head (--labeler FOLDER) with the cross-attention "
                "masks; with --labeler cross-attention there is nothing to compare"
            )
        if self.reads_attention and self.gen.latent_shape[1] != self.gen.latent_shape[2]:
            raise UsageError(
                f"cross-attention masks need square images; {self.gen.id} makes "
                f"{self.gen.image_shape[2]}x{self.gen.image_shape[1]}"
            )
        if self.zero_shot:  # its masks need the class word in the prompt
            for c in dict.fromkeys(self.cfg.class_plan):
                lists = dict(self.cfg.prompts.per_class)
                for text in lists.get(c, (self.cfg.prompts.prompt(c, 0),)):
                    if not self.gen.class_tokens(text, c):
                        raise UsageError(
                            f"--labeler cross-attention: the prompt {text!r} does not contain the class "
                            f"word {c!r}; the labeler reads the attention of that word"
                        )

    def prompt(self, target: str, candidate: int) -> str:
        """The prompt of `candidate` (its target class `target`): the plan's classes take turns."""
        return self.cfg.prompts.prompt(target, candidate // len(self.cfg.class_plan))

    @property
    def generation(self) -> int:
        return int(self.gen.info.get("sample_generation", 1))

    @property
    def config(self) -> dict:
        return (
            {
                "kind": "generate",
                "n": self.cfg.n,
                "seed": self.cfg.seed,
                "shard_size": self.cfg.shard_size,
                "generator": self.gen.id,
                "labeler": self.labeler.id,
                "steps": self.cfg.steps,
                "scheduler": self.cfg.scheduler,
                "batch_size": self.cfg.batch_size,
                "rules": self.cfg.rules.as_json(),
                "classifier": getattr(self.guide, "id", None),
                "guidance_scale": self.guide.scale if self.guide is not None else 0.0,
                "class_plan": list(self.cfg.class_plan),
                "realism_reference": self.realism.corpus_id if self.realism else None,
                "max_attempts": self.cfg.max_attempts,
                "keep_rejected": self.cfg.keep_rejected,
                "append": self.cfg.append,
            }
            | ({"prompts": self.cfg.prompts.as_json()} if self.text else {})
            | ({"agreement": asdict(self.cfg.agreement)} if self.cfg.agreement is not None else {})
            | ({"cfg_scale": self.cfg.cfg_scale} if self.conditional else {})
        )

    @property
    def chash(self) -> str:
        return config_hash(self.config)

    @property
    def rendered_on(self) -> dict:
        """The device type and dtype the models run in. Not hashed: the same job on a GPU is the same
        recipe, but its floats differ a little, so each shard records it and a corpus refuses to mix them
        unless asked (pipeline/generate/run.py)."""
        return {"device": self.gen.device.type, "dtype": str(self.gen.dtype).removeprefix("torch.")}

    def metadata(self, corpus_id: str) -> dict:
        return {
            "corpus_id": corpus_id,
            "config": self.config,
            "config_hash": self.chash,
            "rendered_on": self.rendered_on,
        }


def config_from_record(config: dict, out: Path) -> GenerateConfig:
    """The GenerateConfig that a recorded `Job.config` (corpus.json, a manifest) was made from, writing
    to `out`: the inverse of `Job.config` for everything but the models (dpp reproduce)."""
    p = config.get("prompts")
    prompts = None if p is None else Prompts(
        p["template"], tuple((c, tuple(v)) for c, v in p["per_class"].items()), p["negative"], p["cfg_scale"]
    )  # fmt: skip
    agreement = config.get("agreement")
    return GenerateConfig(
        n=config["n"],
        seed=config["seed"],
        out=Path(out),
        shard_size=config["shard_size"],
        steps=config["steps"],
        scheduler=config["scheduler"],
        batch_size=config["batch_size"],
        rules=FilterRules(**config["rules"]),
        class_plan=tuple(config["class_plan"]),
        keep_rejected=config["keep_rejected"],
        max_attempts=config["max_attempts"],
        append=config["append"],
        prompts=prompts,
        agreement=cross_attention.AttentionLabelerConfig(**agreement) if agreement else None,
        cfg_scale=config.get("cfg_scale", GenerateConfig.cfg_scale),
    )


def job_from_settings(values: dict) -> Job:
    """A Job from resolved job-file settings (pipeline/generate/settings.py): loads the generator, labeler,
    classifier and realism reference they name. Cached per process, so task workers load each model once."""
    return _job_from_text(canonical_json(values))


@functools.lru_cache(maxsize=4)
def _job_from_text(text: str) -> Job:
    import json

    from pipeline.diffusion.load import load_generator

    v = json.loads(text)
    gen = load_generator(v["model.generator"], v["model.device"], v["model.dtype"], v["model.allow_pickle"])
    _refuse_settings_that_do_not_apply(v, gen)
    attention = _attention_rules(v)
    labeler = select_labeler(v["model.labeler"], gen, v["guidance.classes"], attention)
    class_plan, prompts, guide = _class_plan(v, gen, labeler), _prompts(v, gen, labeler), _guide(v, gen)
    rules = FilterRules(
        min_target_pixels=v["filter.min_target_pixels"],
        min_fragment_pixels=v["filter.min_fragment_pixels"],
        min_confidence=v["filter.min_confidence"],
        max_uncertainty=v["filter.max_uncertainty"],
        max_realism_distance=v["filter.max_realism_distance"],
        drop_fraction=v["filter.drop_fraction"],
        block=v["filter.block"],
    )
    cfg = GenerateConfig(
        n=v["job.n"],
        seed=v["job.seed"],
        out=Path(v["job.out"]),
        shard_size=v["job.shard_size"],
        steps=v["model.steps"],
        scheduler=v["model.scheduler"],
        batch_size=v["model.batch_size"],
        rules=rules,
        class_plan=class_plan,
        keep_rejected=v["filter.keep_rejected"],
        max_attempts=v["filter.max_attempts"],
        append=v["job.append"],
        prompts=prompts,
        agreement=attention if v["attention.agreement"] else None,
        cfg_scale=v["guidance.cfg_scale"],
        allow_device_change=v["model.allow_device_change"],
    )
    realism = load_realism(Path(v["filter.real"]), gen.image_shape) if v["filter.real"] else None
    return Job(cfg=cfg, gen=gen, labeler=labeler, guide=guide, realism=realism)


def _refuse_settings_that_do_not_apply(v: dict, gen) -> None:
    """A setting the loaded generator would ignore is refused, not silently accepted."""
    from pipeline.generate.settings import BY_KEY

    changed = [k for k in BY_KEY if v[k] != BY_KEY[k].default]
    if not gen.text_conditioned:
        for key in changed:
            if key.startswith("prompt.") or key in ("attention.low", "attention.high", "attention.refine"):
                raise UsageError(
                    f"{key} applies to text-to-image generators; {gen.id} is a pixel-space generator"
                )
    if not gen.class_names and "guidance.cfg_scale" in changed:
        kind = (
            "a text-to-image generator (its guidance is prompt.cfg_scale)"
            if gen.text_conditioned
            else "unconditional"
        )
        raise UsageError(
            f"guidance.cfg_scale applies to class-conditional pixel generators; {gen.id} is {kind}"
        )


def _attention_rules(v: dict) -> cross_attention.AttentionLabelerConfig:
    try:
        return cross_attention.AttentionLabelerConfig(
            v["attention.low"], v["attention.high"], v["attention.refine"]
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _class_plan(v: dict, gen, labeler) -> tuple[str, ...]:
    from pipeline.guidance.guide import parse_class_plan

    spec = v["guidance.classes"]
    if (gen.text_conditioned or gen.class_names) and not spec:
        spec = "balanced"  # every sample of a conditional model needs a class (its prompt, its label)
    return parse_class_plan(spec, labeler.classes)


def _prompts(v: dict, gen, labeler) -> Prompts | None:
    if not gen.text_conditioned:
        return None
    objects = [c for c in labeler.classes if c != "background"]
    return Prompts(v["prompt.template"], parse_prompts(v["prompt.prompts"], objects), v["prompt.negative"],
                   v["prompt.cfg_scale"])  # fmt: skip


def _guide(v: dict, gen) -> Guide | None:
    if v["guidance.scale"] and not v["guidance.classifier"]:
        raise UsageError("--guidance-scale needs --classifier (a noise-aware classifier folder)")
    if not v["guidance.classifier"]:
        return None
    from pipeline.guidance.classifier import alphas_cumprod, load_classifier

    clf = load_classifier(Path(v["guidance.classifier"]), gen)
    scale, path = v["guidance.scale"], v["guidance.classifier"]
    return Guide(clf.model, tuple(clf.classes), scale, alphas_cumprod(gen), clf.id, path)
