"""Text-to-image latent diffusion (Stable Diffusion family) on a tiny random model built in-process:
our loop against diffusers' pipeline, the cross-attention labeler, the few-shot head on the conditional
UNet's features, and a `dpp generate` corpus that verifies."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flows.cli import main
from labelers import cross_attention as xa
from labelers.pixel_head import IGNORE
from manifests.storage.reader import iter_samples
from manifests.verify import verify_corpus
from pipeline.diffusion.common import initial_noise
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.text import AttentionMaps, Prompts, attention_side, render
from pipeline.labeling.fewshot import label_images, load_labeler, train_labeler
from pipeline.seeds import sample_seed

PROMPTS = ["a photo of a disk", "a photo of a square"]


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load_generator(str(tiny_sd_dir), "cpu")


def _pipeline(gen):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=gen.vae,
        text_encoder=gen.text_encoder,
        tokenizer=gen.tokenizer,
        unet=gen.unet,
        scheduler=DDIMScheduler.from_config(gen.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_stable_diffusion_folder_loads_as_a_text_generator(sd, tiny_sd_dir):
    assert sd.text_conditioned and sd.id.startswith("sd@")
    assert sd.latent_shape == (4, 16, 16) and sd.image_shape == (3, 32, 32)
    assert load_generator(str(tiny_sd_dir), "cpu").id == sd.id  # the id is a function of the files


@pytest.mark.parametrize("cfg_scale,negative", [(5.0, "blurry"), (1.0, "")])
def test_loop_matches_the_diffusers_pipeline_for_the_same_seeds(sd, cfg_scale, negative):
    seeds = [3, 4]
    ours, finite = render(sd, seeds, PROMPTS, Prompts(negative=negative, cfg_scale=cfg_scale), "ddim", 4)
    out = _pipeline(sd)(
        PROMPTS,
        negative_prompt=[negative] * 2 if cfg_scale > 1 else None,
        num_inference_steps=4,
        guidance_scale=cfg_scale,
        latents=initial_noise(seeds, sd.latent_shape),
        output_type="np",
        height=32,
        width=32,
    ).images
    assert finite.all()
    assert np.array_equal(ours, (out * 255).round().astype(np.uint8))


def test_prompts_steer_and_capture_changes_no_byte(sd):
    spec = Prompts(cfg_scale=5.0)
    plain, _ = render(sd, [7, 8], PROMPTS, spec, "ddim", 3)
    maps = AttentionMaps(2, attention_side(sd))
    captured, _ = render(sd, [7, 8], PROMPTS, spec, "ddim", 3, maps=maps)
    assert np.array_equal(plain, captured)
    swapped, _ = render(sd, [7, 8], PROMPTS[::-1], spec, "ddim", 3)
    assert not np.array_equal(plain, swapped)  # the prompt reaches the image
    alone, _ = render(sd, [8], PROMPTS[1:], spec, "ddim", 3)
    assert np.array_equal(alone[0], plain[1])  # a sample depends on its seed and prompt, not the batch
    cross, self_attn = maps.result()
    assert cross.shape == (2, 32, 8, 8) and self_attn.shape == (2, 64, 64)
    assert torch.allclose(self_attn.sum(-1), torch.ones(2, 64), atol=1e-4)  # rows are distributions


def test_class_tokens_find_the_class_word(sd):
    toks = sd.tokenizer.convert_ids_to_tokens
    ids = sd.tokenizer("a photo of a disk", padding="max_length", max_length=32).input_ids
    pos = sd.class_tokens("a photo of a disk", "disk")
    assert "".join(toks([ids[p] for p in pos])) == "disk</w>"
    assert sd.class_tokens("a photo of a square", "disk") == []
    assert sd.class_tokens("diskette and disk", "disk")[0] > 3  # whole words only


def test_labeler_puts_each_class_where_its_token_attends_most():
    r, size = 8, (16, 16)
    cross = torch.full((1, 6, r, r), 0.01)
    cross[0, 2, :3, :3] = 1.0  # token 2 ("disk") attends to the top-left corner
    cross[0, 4, 5:, 5:] = 1.0  # token 4 ("square") to the bottom-right one
    cross[0, 4, :2, 6:] = 0.5  # a weaker patch: between the thresholds once normalised
    eye = torch.eye(r * r)[None]
    labels = xa.label(cross, eye, [{1: [2], 2: [4]}], size, xa.AttentionLabelerConfig(0.3, 0.6, refine=0))
    mask = labels.mask[0]
    assert mask[:4, :4].eq(1).float().mean() > 0.7 and mask[12:, 12:].eq(2).all()
    assert mask[8, 0] == 0  # far from both: background
    assert (mask[:3, 13:] == IGNORE).all()  # the weak patch falls in the ignore band
    assert labels.score[0] == pytest.approx(float((mask == IGNORE).float().mean()))


def test_self_attention_refinement_spreads_a_map_over_its_group():
    r = 4
    cross = torch.zeros((1, 3, r, r))
    cross[0, 1, 0, 0] = 1.0  # one pixel of the object
    group = [0, 1, 4, 5]  # the 2x2 top-left block attends within itself
    s = torch.zeros((r * r, r * r))
    for i in range(r * r):
        s[i, group if i in group else [i]] = 1.0
    s = s / s.sum(1, keepdim=True)
    maps = xa.class_maps(cross[0], s, [[1]], refine=1)[0]
    assert maps[:2, :2].min() == 1.0 and maps[2:, :].max() == 0.0
    unrefined = xa.class_maps(cross[0], s, [[1]], refine=0)[0]
    assert unrefined[:2, :2].sum() == 1.0


def test_cross_attention_masks_follow_the_prompts_on_the_tiny_model(sd):
    maps = AttentionMaps(2, attention_side(sd))
    images, _ = render(sd, [1, 2], PROMPTS, Prompts(cfg_scale=5.0), "ddim", 4, maps=maps)
    cross, self_attn = maps.result()
    words = [{1: sd.class_tokens(PROMPTS[0], "disk")}, {2: sd.class_tokens(PROMPTS[1], "square")}]
    cfg = xa.AttentionLabelerConfig()
    labels = xa.label(cross, self_attn, words, images.shape[1:3], cfg)
    for b, k in enumerate((1, 2)):
        mask = labels.mask[b]
        assert set(mask.unique().tolist()) <= {0, k, IGNORE} and (mask == k).any()
        # the class sits where its word's (refined, upsampled) attention is highest
        m = xa.class_maps(cross[b], self_attn[b], [words[b][k]], cfg.refine)
        m = F.interpolate(m[None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        top = m.flatten().argmax()
        assert mask.flatten()[top] == k
        assert m[mask == k].min() >= cfg.high - 1e-6 and m[mask == 0].max() < cfg.low


def test_few_shot_head_trains_on_conditional_unet_features(sd, tw_corpus, tmp_path):
    lab = train_labeler(sd, tw_corpus, 4, tmp_path / "lab", seed=0, members=2)
    assert lab.info["generator_id"] == sd.id
    again = load_labeler(tmp_path / "lab", sd)
    support = [s for s in iter_samples(tw_corpus) if s.key in set(lab.info["support_keys"])]
    images = np.stack([s.image for s in support])
    truth = np.stack([s.mask for s in support])
    seeds = [sample_seed(0, 0, i) for i in range(len(support))]  # the re-noise draws it was fitted with
    pred = label_images(sd, again, images, seeds).mask.numpy()
    assert pred.shape == truth.shape
    constant = max((truth == k).mean() for k in range(4))
    assert (pred == truth).mean() > constant + 0.1  # it fitted its support set from these features


def test_generate_with_the_cross_attention_labeler_writes_a_corpus_that_verifies(tiny_sd_dir, tmp_path):
    out = tmp_path / "syn"
    argv = ["generate", "--generator", str(tiny_sd_dir), "--labeler", "cross-attention"]
    argv += ["--classes", "disk,square", "--prompts", "square=a red square|a square box"]
    argv += ["--n", "4", "--seed", "2", "--steps", "3", "--shard-size", "4", "--batch-size", "4"]
    argv += ["--min-target-pixels", "1", "--drop-fraction", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert verify_corpus(out).ok
    rec = json.loads((out / "corpus.json").read_text())
    assert rec["classes"] == ["background", "disk", "square"]
    assert rec["labeler"]["support_corpus"] is None and rec["labeler"]["id"].startswith("cross-attention@")
    assert rec["parents"] == [] and rec["config"]["prompts"]["cfg_scale"] == 7.5
    seen = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                data = tar.extractfile(m).read()
                key, ext = m.name.split(".", 1)
                seen.setdefault(key, {})[ext] = data
    assert len(seen) == 4
    for parts in seen.values():
        meta = json.loads(parts["json"])
        target = meta["target_classes"][0]
        assert target in meta["prompt"] and meta["labeler"].startswith("cross-attention@")
        mask = np.array(Image.open(io.BytesIO(parts["seg.png"])))
        k = rec["classes"].index(target)
        assert set(np.unique(mask).tolist()) <= {0, k, IGNORE} and (mask == k).sum() >= 1
    prompts = sorted(json.loads(p["json"])["prompt"] for p in seen.values())
    assert prompts == ["a photo of a disk", "a photo of a disk", "a red square", "a square box"]


def test_a_hub_id_in_the_local_cache_loads_as_the_same_text_generator(sd, tiny_sd_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as hf

    repo = tmp_path / "hub" / "models--owner--tiny-sd"
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))  # the cache a download would fill
    gen = load_generator("owner/tiny-sd", "cpu")
    assert gen.text_conditioned and gen.source == "owner/tiny-sd"
    assert gen.id == "owner/tiny-sd@" + sd.id.split("@")[1]  # the same files, so the same digest
    a, _ = render(gen, [5], PROMPTS[:1], Prompts(), "ddim", 2)
    b, _ = render(sd, [5], PROMPTS[:1], Prompts(), "ddim", 2)
    assert np.array_equal(a, b)


def test_latent_classifier_guidance_raises_the_target_probability(sd, tw_corpus, tiny_sd_dir, tmp_path):
    """dpp train-classifier on a latent model learns its latents; guiding with it (on top of CFG) makes
    the classifier's log-probability of the target higher than for the same seeds unguided (read on the
    latents of the last step, where the classifier looks), and a guided job verifies."""
    from labelers.classifier import log_prob
    from pipeline.guidance.classifier import alphas_cumprod, load_classifier, train_classifier
    from pipeline.guidance.guide import Guide, target_matrix

    train_classifier(sd, tw_corpus, tmp_path / "clf", steps=20, seed=0)
    clf = load_classifier(tmp_path / "clf", sd)
    assert clf.model.cfg.in_channels == 4
    seeds, targets = list(range(6)), [("square",)] * 6
    tm = target_matrix(targets, tuple(clf.classes))
    guide = Guide(clf.model, tuple(clf.classes), 30.0, alphas_cumprod(sd))
    prompts = ["a photo of a square"] * 6

    def recording(hook):  # keep the latents of the last step the loop shows the hook
        seen = {}

        def wrapped(i, t, z, eps):
            seen.update(t=t, z=z.clone())
            return hook(i, t, z, eps) if hook else eps

        return seen, wrapped

    last = []
    for hook in (None, guide.adjust(tm)):
        seen, wrapped = recording(hook)
        images, finite = render(sd, seeds, prompts, Prompts(), "ddim", 4, adjust_eps=wrapped)
        assert finite.all()
        t = torch.full((6,), seen["t"])
        with torch.no_grad():
            last.append((images, log_prob(clf.model, seen["z"], t, tm)))
    (plain, lp0), (guided, lp1) = last
    assert (plain != guided).any() and lp1.mean() > lp0.mean() and (lp1 > lp0).float().mean() >= 0.5
    out = tmp_path / "guided"
    argv = ["generate", "--generator", str(tiny_sd_dir), "--labeler", "cross-attention"]
    argv += ["--classes", "square", "--classifier", str(tmp_path / "clf"), "--guidance-scale", "10"]
    argv += ["--n", "2", "--seed", "0"]
    argv += ["--steps", "2", "--min-target-pixels", "0", "--drop-fraction", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0 and verify_corpus(out).ok
    assert json.loads((out / "corpus.json").read_text())["config"]["guidance_scale"] == 10.0


def test_agreement_is_the_target_iou_over_pixels_neither_labeler_ignores():
    from pipeline.filtering.scores import agreement

    head = np.zeros((4, 4), np.uint8)
    head[:2, :2] = 1  # 4 target pixels
    attn = np.zeros((4, 4), np.uint8)
    attn[:2, 1:3] = 1  # 4 target pixels, 2 shared
    assert agreement(head, attn, [1]) == pytest.approx(2 / 6)
    attn[0, 2] = IGNORE  # an ignored pixel counts for neither side
    assert agreement(head, attn, [1]) == pytest.approx(2 / 5)
    assert agreement(head, attn, [2]) is None  # neither draws class 2
    assert agreement(head, head, [1]) == 1.0


def test_a_few_shot_head_job_records_its_agreement_with_cross_attention(sd, tiny_sd_dir, tw_corpus, tmp_path):
    train_labeler(sd, tw_corpus, 2, tmp_path / "lab", seed=0, members=2)
    out = tmp_path / "syn"
    argv = ["generate", "--generator", str(tiny_sd_dir), "--labeler", str(tmp_path / "lab")]
    argv += ["--classes", "disk,square", "--attention-agreement", "--n", "2", "--seed", "1", "--steps", "2"]
    argv += ["--min-target-pixels", "0", "--drop-fraction", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0 and verify_corpus(out).ok
    rec = json.loads((out / "corpus.json").read_text())
    assert rec["config"]["agreement"] == {"low": 0.35, "high": 0.6, "refine": 1}
    with tarfile.open(out / "shards" / "shard-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metas) == 2 and all(m["labeler"].startswith("pixelhead@") for m in metas)
    for m in metas:
        a = m["scores"]["label_agreement"]
        assert a is None or 0.0 <= a <= 1.0
    argv[4] = "cross-attention"  # nothing to compare the zero-shot masks with: refused
    assert main([*argv[:-2], str(tmp_path / "x"), "--quiet"]) == 2 and not (tmp_path / "x").exists()


def test_sample_draws_a_text_model_from_prompts_and_refuses_pixel_only_ops(
    sd, tiny_sd_dir, tw_corpus, tmp_path, capsys
):
    from pipeline.diffusion.sampling import SampleRequest, run

    res = run(sd, SampleRequest(n=3, seed=4, steps=2, batch_size=2, classes="disk,square"))
    assert res.classes == ["disk", "square", "disk"] and res.images.shape == (3, *sd.image_shape[1:], 3)
    # sample i is the same picture whatever the batch: the prompt loop's own bytes for its seed and prompt,
    # with the default sampler (DPM-Solver++)
    alone, _ = render(sd, [sample_seed(4, 0, 1)], ["a photo of a square"], Prompts(), "dpm", 2)
    assert np.array_equal(res.images[1], alone[0])
    base = ["sample", "--generator", str(tiny_sd_dir), "--n", "2", "--seed", "0", "--steps", "2"]
    for extra, says in [
        (["--op", "interp"], "--op interp works on pixel-space generators"),
        (["--op", "views", "--real", str(tw_corpus)], "--op views works on pixel-space generators"),
        (["--classes", "disk", "--truncation", "1.5"], "--truncation applies to pixel-space generators"),
        ([], "name the classes its prompts draw"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "s.png")]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_eval_generator_judges_a_text_model_on_the_judges_classes(tiny_sd_dir, tw_corpus, capsys):
    assert main(["eval-generator", "--generator", str(tiny_sd_dir), "--real", str(tw_corpus), "--n", "6",
                 "--steps", "2", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["n_generated"] == 6 and out["drawn_as_asked"] is not None and 0 <= out["precision"] <= 1
