"""What each training iteration teaches: augmentation, schedule, stopping, patches (one property each)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from gbmseg.augment import Augmenter, random_affine, warp
from gbmseg.config import load_config
from gbmseg.network import Conv3d
from gbmseg.patches import predict_logits, random_patch
from gbmseg.stopping import StoppingRule
from gbmseg.training import learning_rate


def _blocks(shape=(32, 32, 32)):
    """Image whose intensity is its label (three blocks), mask = a big block."""
    label = torch.zeros(1, *shape)
    label[0, 8:16, 8:20, 4:12] = 1
    label[0, 18:26, 10:18, 20:28] = 2
    mask = torch.zeros(1, *shape)
    mask[0, 4:28, 4:28, 2:30] = 1
    return {"image": label.clone() / 2, "mask": mask, "label": label}


@pytest.mark.parametrize("iteration", range(6))
def test_augmentation_moves_image_mask_and_label_together(iteration):
    case = _blocks()
    out = warp(case, *random_affine(np.random.default_rng(iteration)))
    label, image = out["label"], out["image"] * 2
    inside = label > 0
    assert inside.sum() > 100  # the structures are still in the crop
    # where the label says a structure is, the (linearly resampled) image carries that structure's value
    assert (image[inside] - label[inside]).abs().lt(0.5).float().mean() > 0.9
    # the structures stay inside the moved global mask
    assert (out["mask"][inside] > 0).float().mean() > 0.97


def test_augmentation_never_flips_left_and_right():
    case = _blocks()  # label 1 at low x, label 2 at high x
    aug = Augmenter(seed=3)
    for it in range(40):
        out = aug(case, it)
        x1 = torch.nonzero(out["label"][0] == 1)[:, 2].float().mean()
        x2 = torch.nonzero(out["label"][0] == 2)[:, 2].float().mean()
        assert x1 < x2


def test_augmentation_is_a_rotation_times_a_positive_scaling():
    for seed in range(50):
        matrix, _ = random_affine(np.random.default_rng(seed))
        assert np.linalg.det(matrix) > 0


def _euler_deg(rotation: np.ndarray) -> np.ndarray:
    """(ax, ay, az) in degrees of ``rotation = Rz @ Ry @ Rx`` (angles within +-90 degrees)."""
    r = rotation
    return np.degrees([np.arctan2(r[2, 1], r[2, 2]), -np.arcsin(r[2, 0]), np.arctan2(r[1, 0], r[0, 0])])


@pytest.mark.parametrize("bound", [0.0, 15.0, 30.0])
def test_augmentation_rotates_within_its_bound_about_each_axis(bound):
    angles = []
    for seed in range(200):
        matrix, _ = random_affine(np.random.default_rng(seed), bound)
        scale = np.linalg.norm(matrix, axis=0)  # M = R @ diag(s): the columns' lengths are the scales
        angles.append(_euler_deg(matrix / scale[None, :]))
    angles = np.abs(np.array(angles))
    assert angles.max() <= bound + 1e-6
    assert bound == 0.0 or angles.max() > 0.8 * bound  # the bound is used, not only respected


def test_rotation_bound_reaches_the_augmenter(toy_cache, tmp_path):
    from gbmseg.testing import tiny_config
    from gbmseg.training import Trainer

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=2, val_interval=1, augment=True, rotate_deg=25.0)
    trainer = Trainer(cache, "image+mask", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert trainer.augment.rotate_deg == 25.0


@pytest.mark.parametrize("bound", [-1.0, 181.0])
def test_rotation_bound_out_of_range_is_refused(toy_cache, tmp_path, bound):
    from gbmseg.errors import GbmsegError
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    with pytest.raises(GbmsegError, match="rotate_deg"):
        train(cache, "image", ds.cases[:2], ds.cases[4:], tiny_config(max_iterations=2, rotate_deg=bound),
              tmp_path / "run", progress=False)


def test_augmentation_is_reproducible_per_iteration():
    case, aug = _blocks(), Augmenter(seed=1)
    a, b = aug(case, 7), Augmenter(seed=1)(case, 7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(aug(case, 8)["label"], a["label"]) or not torch.equal(aug(case, 8)["image"], a["image"])


def test_augmentation_leaves_labels_integral():
    out = Augmenter(seed=0)(_blocks(), 2)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("schedule,it,expected", [
    ("constant", 0, 1e-3), ("constant", 999, 1e-3),
    ("poly", 0, 1e-3), ("poly", 500, 1e-3 * 0.5 ** 0.9), ("poly", 1000, 0.0),
])
def test_learning_rate_schedule(schedule, it, expected):
    cfg = load_config("fast", [f"training.schedule={schedule}", "training.lr=0.001", "training.max_iterations=1000",
                               "training.warmup=0"]).training
    assert learning_rate(cfg, it) == pytest.approx(expected)


@pytest.mark.parametrize("it,budget,expected", [
    (1000, None, 0.0), (1000, 1000, 0.0), (1000, 2000, 1e-3 * 0.5 ** 0.9), (1500, 2000, 1e-3 * 0.25 ** 0.9),
    (2000, 2000, 0.0),
])
def test_an_extended_budget_stretches_the_decay(it, budget, expected):
    """After an extension the rate is what a run planned with the extended budget has at that iteration."""
    cfg = load_config("fast", ["training.lr=0.001", "training.max_iterations=1000", "training.warmup=0"]).training
    assert learning_rate(cfg, it, budget) == pytest.approx(expected)


def test_learning_rate_warms_up_linearly():
    cfg = load_config("fast", ["training.warmup=10", "training.lr=0.001"]).training
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)


def test_stopping_never_fires_before_the_run_learns():
    rule, state = StoppingRule(patience=2, min_iterations=0, floor=0.05), StoppingRule.initial_state()
    assert not any(rule.update(state, it, 0.0) for it in range(50, 2000, 50))
    assert state["learned"] is False


def test_stopping_waits_for_min_iterations():
    rule, state = StoppingRule(patience=1, min_iterations=400, floor=0.05), StoppingRule.initial_state()
    stops = [rule.update(state, it, d) for it, d in [(100, 0.5), (200, 0.4), (300, 0.4), (400, 0.4)]]
    assert stops == [False, False, False, True]
    assert state["best_iteration"] == 100


def test_stopping_counts_patience_after_the_floor():
    rule, state = StoppingRule(patience=2, min_iterations=0, floor=0.05), StoppingRule.initial_state()
    history = [(50, 0.01), (100, 0.02), (150, 0.0), (200, 0.3), (250, 0.2), (300, 0.25)]
    assert [rule.update(state, it, d) for it, d in history] == [False] * 5 + [True]


def test_random_patch_has_the_patch_size_and_keeps_channels_aligned():
    case = _blocks((40, 32, 48))
    patch = random_patch(case, (32, 32, 32), np.random.default_rng(0), foreground=1.0)
    assert all(tuple(v.shape) == (1, 32, 32, 32) for v in patch.values())
    assert torch.equal(patch["image"] * 2, patch["label"])
    assert patch["label"].sum() > 0  # foreground-centred


def test_foreground_patches_draw_each_structure_alike_not_each_voxel():
    label = torch.zeros(1, 64, 64, 64)
    label[0, :32, :32, :32] = 1  # 32768 voxels
    label[0, 60, 60, 60] = 2  # one voxel, in a corner a uniform patch rarely holds
    case = {"image": label.clone(), "label": label}
    hits = sum(bool((random_patch(case, (16, 16, 16), np.random.default_rng(i), foreground=1.0)["label"] == 2).any())
               for i in range(200))
    assert 70 <= hits <= 130  # about half; voxel-weighted sampling would give about 0


def test_sliding_window_covers_a_grid_larger_than_the_network_input():
    net = torch.nn.Conv3d(1, 2, 1)
    x = torch.rand(1, 1, 48, 32, 40)
    out = predict_logits(net, x, (32, 32, 32))
    assert out.shape == (1, 2, 48, 32, 40)
    assert torch.allclose(out, net(x), atol=1e-5)  # a pointwise net: windows agree with one pass


@pytest.mark.parametrize("channels,size", [(16, 48), (32, 24), (64, 12), (128, 6)])
def test_split_convolution_equals_the_plain_convolution(channels, size):
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(channels, 8, 3, padding=1)
    split = Conv3d(channels, 8, 3, padding=1)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(1, channels, size, size, size, requires_grad=True)
    ya, yb = plain(x), split(x)
    assert torch.allclose(ya, yb, atol=1e-4)
    ga, = torch.autograd.grad(ya.square().sum(), x)
    gb, = torch.autograd.grad(yb.square().sum(), x)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-3)


@pytest.fixture
def toy_cache(toy_dataset, tmp_path):
    """(dataset, cache) of the toy phantoms, masks made, preprocessed with the tiny config."""
    from gbmseg.dataset import Dataset
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.testing import tiny_config

    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    return ds, preprocess_dataset(ds, tiny_config(), progress=False)


def test_a_structure_whose_validation_dice_never_rises_is_named_in_the_result(toy_cache, tmp_path):
    """A mean validation Dice can hide a structure that never appears; result.json names it."""
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    # a floor above any Dice reachable in 10 iterations: every structure counts as not learned
    cfg = tiny_config(max_iterations=10, val_interval=5)
    cfg.set_value("training.dice_floor=0.999")
    result = train(cache, "image+mask", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["structures_not_learned"] == list(ds.labels)
    cfg2 = tiny_config(max_iterations=10, val_interval=5)
    cfg2.set_value("training.dice_floor=-1")
    result = train(cache, "image+mask", ds.cases[:4], ds.cases[4:], cfg2, tmp_path / "run2", progress=False)
    assert result["structures_not_learned"] == []


def _never_learns(**training):
    """The tiny config (10 iterations unless given) with a floor no such run passes: every structure counts
    as not learned."""
    from gbmseg.testing import tiny_config
    cfg = tiny_config(**{"max_iterations": 10, "val_interval": 5, **training})
    cfg.set_value("training.dice_floor=0.999")
    return cfg


def test_a_run_with_a_structure_not_learned_at_its_budget_is_extended_once(toy_cache, tmp_path):
    from gbmseg.training import train

    ds, cache = toy_cache
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=5), tmp_path / "run",
                   progress=False)
    assert result["iterations"] == 15 and result["extended_at"] == 10  # 10, then 5 more once: no second extension
    assert result["extended_iterations"] == 5 and result["extended_for"] == list(ds.labels)
    assert pd.read_csv(tmp_path / "run" / "history.csv")["iteration"].tolist() == [5, 10, 15]
    assert "budget extended by 5 iterations to 15" in (tmp_path / "run" / "train.log").read_text()


def test_extend_from_decides_at_the_first_validation_from_that_share_of_the_budget(toy_cache, tmp_path):
    """With extend_from 0.5 of 20 iterations the validation at 10 extends, not the one at 5 or the end."""
    from gbmseg.training import train

    ds, cache = toy_cache
    cfg = _never_learns(max_iterations=20, extend_iterations=10, extend_from=0.5)
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["iterations"] == 30 and result["extended_iterations"] == 10 and result["extended_at"] == 10
    log = (tmp_path / "run" / "train.log").read_text()
    assert "it 10: " in log and "extended by 10 iterations to 30" in log
    assert pd.read_csv(tmp_path / "run" / "history.csv")["iteration"].tolist() == [5, 10, 15, 20, 25, 30]


def test_an_early_decision_is_in_last_pt(toy_cache, tmp_path):
    """A run stopped right after the validation that extended it resumes extended."""
    from gbmseg.training import Trainer

    ds, cache = toy_cache
    cfg = _never_learns(max_iterations=20, extend_iterations=10, extend_from=0.5)
    trainer = Trainer(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    for _ in range(10):
        trainer.step()
    trainer._after_interval([1.0], 0.0)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["state"]["extension"] == 10


def test_a_learned_run_is_not_extended_early(toy_cache, tmp_path):
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=10, val_interval=5, extend_iterations=5, extend_from=0.5)
    cfg.set_value("training.dice_floor=-1")
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["iterations"] == 10 and result["extended_iterations"] == 0


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_bad_extend_from_is_a_one_line_error(toy_cache, tmp_path, value):
    from gbmseg.errors import GbmsegError
    from gbmseg.training import train

    ds, cache = toy_cache
    with pytest.raises(GbmsegError, match=f"training.extend_from {value}"):
        train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=5, extend_from=value),
              tmp_path / "run", progress=False)


def test_a_run_that_learned_every_structure_is_not_extended(toy_cache, tmp_path):
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=10, val_interval=5, extend_iterations=5)
    cfg.set_value("training.dice_floor=-1")  # every structure counts as learned
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["iterations"] == 10 and result["extended_iterations"] == 0 and result["extended_for"] == []


def test_no_extension_without_extend_iterations(toy_cache, tmp_path):
    from gbmseg.training import train

    ds, cache = toy_cache
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(), tmp_path / "run", progress=False)
    assert result["iterations"] == 10 and result["extended_iterations"] == 0


def test_an_extended_run_trains_with_the_stretched_decay(toy_cache, tmp_path):
    """The optimiser's rate at the first extra iteration is the poly decay over the extended budget."""
    from gbmseg.training import Trainer

    ds, cache = toy_cache
    cfg = _never_learns(extend_iterations=10, schedule="poly", lr=0.001)
    trainer = Trainer(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    trainer.state.update(iteration=10, structure_at_best=[0.0] * len(ds.labels))
    assert trainer._extend() and trainer.budget() == 20 and not trainer._extend()  # once only
    trainer.step()
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.001 * 0.5 ** 0.9)


def test_a_run_interrupted_during_its_extension_resumes_with_the_extended_budget(toy_cache, tmp_path):
    from gbmseg.training import train

    ds, cache = toy_cache
    full = train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=10), tmp_path / "a",
                 seed=3, progress=False)
    # the same run stopped at iteration 15 (as if killed: a budget of 10 extended by 5), then started again
    train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=5), tmp_path / "b", seed=3,
          progress=False)
    (tmp_path / "b" / "result.json").unlink()
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    ckpt["state"]["extension"] = 10  # what an extend_iterations=10 run's last.pt holds at iteration 15
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    resumed = train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=10), tmp_path / "b",
                    seed=3, progress=False)
    assert resumed["iterations"] == full["iterations"] == 20
    assert "to 20" not in (tmp_path / "b" / "train.log").read_text()  # the extension came from last.pt, not anew
    a, b = (pd.read_csv(tmp_path / r / "history.csv") for r in "ab")
    assert np.allclose(a["train_loss"], b["train_loss"], atol=1e-5)


def test_a_structure_learned_and_lost_again_counts_as_not_learned(toy_cache, tmp_path):
    """What counts is the kept model: a structure above the floor once, at 0 in the best checkpoint, is named."""
    from gbmseg.testing import tiny_config
    from gbmseg.training import Trainer

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=10, val_interval=5, dice_floor=0.05)
    trainer = Trainer(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    upper, lower = ds.labels
    for dice in ([0.5, 0.2], [0.0, 0.9]):  # the second validation is the better one (mean 0.45 > 0.35)
        def canned(d=dice):
            trainer.last_structure_dice = np.array(d)
            return 1.0, float(np.mean(d))
        trainer.validate = canned
        trainer.state["iteration"] += 5
        trainer._after_interval([1.0], time.time())
    assert trainer.state["best_iteration"] == 10 and trainer._not_learned() == [upper]


def test_bad_extend_iterations_is_a_one_line_error(toy_cache, tmp_path):
    from gbmseg.errors import GbmsegError
    from gbmseg.training import train

    ds, cache = toy_cache
    with pytest.raises(GbmsegError, match="training.extend_iterations -5"):
        train(cache, "image", ds.cases[:4], ds.cases[4:], _never_learns(extend_iterations=-5), tmp_path / "run",
              progress=False)


def test_deep_supervision_gives_coarser_logits_in_training_only():
    from gbmseg.network import UNet3D
    net = UNet3D(2, 4, depth=3, base_channels=4, activation="leakyrelu", deep_supervision=True)
    out = net(torch.zeros(1, 2, 16, 16, 16))
    assert [tuple(o.shape) for o in out] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 8), (1, 4, 4, 4, 4)]
    net.eval()
    assert tuple(net(torch.zeros(1, 2, 16, 16, 16)).shape) == (1, 4, 16, 16, 16)


def test_deep_supervision_off_adds_no_parameters():
    from gbmseg.network import UNet3D
    plain = UNet3D(1, 3, depth=3, base_channels=4)
    deep = UNet3D(1, 3, depth=3, base_channels=4, deep_supervision=True)
    extra = set(deep.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("aux.") for k in extra)


@pytest.mark.parametrize("name,kind", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_training_optimizer_is_the_one_named(name, kind):
    from gbmseg.training import OPTIMIZERS
    opt = OPTIMIZERS[name]([torch.nn.Parameter(torch.zeros(2))], 0.01)
    assert isinstance(opt, kind) and opt.param_groups[0]["lr"] == 0.01
    if name == "sgd":  # nnU-Net's: Nesterov momentum 0.99
        assert opt.param_groups[0]["momentum"] == 0.99 and opt.param_groups[0]["nesterov"]


def test_deep_supervision_and_sgd_train_end_to_end(toy_cache, tmp_path):
    from gbmseg.errors import GbmsegError
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=4, val_interval=2)
    cfg.set_value("network.deep_supervision=true")
    cfg.set_value('training.optimizer="sgd"')
    result = train(cache, "image", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["iterations"] == 4 and np.isfinite(result["best_val_dice"])
    cfg.set_value('training.optimizer="rmsprop"')
    with pytest.raises(GbmsegError, match="training.optimizer 'rmsprop'"):
        train(cache, "image", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run2", progress=False)


def test_training_foreground_is_the_share_the_patch_sampler_gets(toy_cache, tmp_path, monkeypatch):
    import gbmseg.training as training
    from gbmseg.errors import GbmsegError
    from gbmseg.testing import tiny_config

    seen = []
    monkeypatch.setattr(training, "random_patch", lambda case, size, rng, foreground: seen.append(foreground) or case)
    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=2, val_interval=2)
    cfg.set_value("training.foreground=0.9")
    training.train(cache, "image", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert seen == [0.9, 0.9]
    cfg.set_value("training.foreground=1.5")
    with pytest.raises(GbmsegError, match="training.foreground 1.5"):
        training.train(cache, "image", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run2", progress=False)


@pytest.mark.parametrize("shape", [(1, 16, 24, 20, 16), (1, 64, 6, 6, 6), (3, 4, 8, 8, 8)])
def test_instance_norm_of_the_network_equals_torchs(shape):
    from gbmseg.network import InstanceNorm3d
    torch.manual_seed(0)
    ours, ref = InstanceNorm3d(shape[1]), torch.nn.InstanceNorm3d(shape[1], affine=True)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())  # checkpoints load either way
    x = torch.randn(*shape, requires_grad=True) * 3 + 1
    ya, yb = ours(x), ref(x)
    assert torch.allclose(ya, yb, atol=1e-5)
    ga = torch.autograd.grad(ya.square().sum(), [x, ours.weight])
    gb = torch.autograd.grad(yb.square().sum(), [x, ref.weight])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ga, gb))


def test_mask_dropout_blanks_only_the_mask_channel_at_its_rate():
    case = _blocks()
    aug = Augmenter(seed=2, anatomy=False, mask_drop=0.3)
    blank = [not aug(case, it)["mask"].any() for it in range(200)]
    assert 0.2 < np.mean(blank) < 0.4
    out = next(aug(case, it) for it in range(200) if blank[it])
    assert torch.equal(out["image"], case["image"]) and torch.equal(out["label"], case["label"])


def test_mask_dropout_off_never_blanks_the_mask():
    aug = Augmenter(seed=2, anatomy=True, mask_drop=0.0)
    assert all(aug(_blocks(), it)["mask"].any() for it in range(30))


def test_mask_dropout_out_of_range_is_refused(toy_cache, tmp_path):
    from gbmseg.errors import GbmsegError
    from gbmseg.testing import tiny_config
    from gbmseg.training import train

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=2, val_interval=1)
    cfg.set_value("training.mask_dropout=1.5")
    with pytest.raises(GbmsegError, match="mask_dropout"):
        train(cache, "image+mask", ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("mode,expected", [("image+mask", 0.5), ("mask", 0.0)])
def test_mask_dropout_acts_only_where_the_mask_is_not_the_only_input(toy_cache, tmp_path, mode, expected):
    from gbmseg.testing import tiny_config
    from gbmseg.training import Trainer

    ds, cache = toy_cache
    cfg = tiny_config(max_iterations=2, val_interval=1)
    cfg.set_value("training.mask_dropout=0.5")
    trainer = Trainer(cache, mode, ds.cases[:2], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert (trainer.augment.mask_drop if trainer.augment is not None else 0.0) == expected
