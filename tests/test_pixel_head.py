"""The few-shot pixel head ensemble on small synthetic feature maps (no generator needed)."""

import pytest
import torch

from labelers.pixel_head import IGNORE, PixelHeadConfig, fit, label, load, sample_pixels, save


def _toy_features(n, seed, size=12, channels=6):
    """Masks of 3 classes; features = one-hot of the class in 3 channels + noise channels."""
    g = torch.Generator().manual_seed(seed)
    masks = (
        torch.randint(0, 3, (n, size // 4, size // 4), generator=g)
        .repeat_interleave(4, 1)
        .repeat_interleave(4, 2)
    )
    feats = torch.randn(n, channels, size, size, generator=g) * 0.3
    feats[:, :3] += torch.nn.functional.one_hot(masks.long(), 3).permute(0, 3, 1, 2).float()
    return feats, masks.to(torch.uint8)


CFG = PixelHeadConfig(
    n_classes=3,
    in_channels=6,
    members=3,
    hidden=(16,),
    pixels_per_image=96,
    epochs=20,
    lr=1e-2,
    batch_size=64,
)


def test_head_learns_separable_features_and_reports_uncertainty(tmp_path):
    feats, masks = _toy_features(4, 0)
    head = fit(CFG, [(feats[:2], masks[:2]), (feats[2:], masks[2:])])
    test_f, test_m = _toy_features(3, 1)
    out = label(head, test_f)
    assert out.mask.shape == (3, 12, 12) and out.mask.dtype == torch.uint8
    assert (out.mask == test_m).float().mean() > 0.95
    assert out.uncertainty.shape == (3, 12, 12) and (out.uncertainty >= 0).all()
    assert out.score.shape == (3,)
    # ambiguous features (the class channels zeroed) are far more uncertain than clear ones
    blank = test_f.clone()
    blank[:, :3] = 0.33
    assert label(head, blank).score.mean() > out.score.mean()


def test_fit_is_deterministic_and_save_load_round_trips(tmp_path):
    feats, masks = _toy_features(2, 0)
    torch.manual_seed(123)
    a = fit(CFG, [(feats, masks)])
    torch.rand(7)  # whatever the caller's RNG did in between, the weights come from cfg.seed alone
    state = torch.get_rng_state()
    b = fit(CFG, [(feats, masks)])
    assert torch.equal(state, torch.get_rng_state())  # and fit leaves the caller's RNG alone
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    save(a, tmp_path / "L", {"support_keys": ["k1", "k2"], "generator_id": "g@1"})
    c, info = load(tmp_path / "L")
    assert info["support_keys"] == ["k1", "k2"] and info["generator_id"] == "g@1"
    assert torch.equal(label(a, feats).mask, label(c, feats).mask)


def test_ignore_threshold_marks_unsure_pixels():
    feats, masks = _toy_features(2, 0)
    head = fit(PixelHeadConfig(**{**CFG.__dict__, "ignore_threshold": 0.0}), [(feats, masks)])
    blank = feats.clone()
    blank[:, :3] = 0.33
    assert (label(head, blank).mask == IGNORE).any()


def test_sampled_pixels_are_bounded_and_balanced():
    feats, masks = _toy_features(1, 3)
    masks[0, :, :] = 0
    masks[0, 0, 0] = 1  # a one-pixel class still gets its share
    x, y = sample_pixels(feats[0], masks[0], 100, torch.Generator().manual_seed(0))
    assert x.shape == (100, 6) and (y == 1).sum() == 50 and (y == 0).sum() == 50


def test_ignore_pixels_are_never_targets_and_bad_channels_are_refused():
    feats, masks = _toy_features(1, 4)
    masks[0, :6] = IGNORE
    _, y = sample_pixels(feats[0], masks[0], 60, torch.Generator().manual_seed(0))
    assert IGNORE not in y.tolist()
    with pytest.raises(ValueError, match="channels"):
        fit(CFG, [(feats[:, :4], masks)])
