"""Multi-source training: epochs drawn in shares, resumed exactly, measured per source, chosen on all."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector import cache, metrics, mixing
from deepfake_detector.errors import TrainingSetupError
from deepfake_detector.labels import FAKE_INDEX, REAL_INDEX
from deepfake_detector.recipes import SELF_BLENDED_SOURCE, DataConfig, TrainConfig
from tests.helpers import make_dataset

SIZE = 16


def source(index: int, n_real: int, n_fake: int) -> cache.ArraySource:
    """Images that say where they come from: channel 0 is the source, channel 1 the class, channel 2 the position."""
    labels = np.r_[np.full(n_real, REAL_INDEX), np.full(n_fake, FAKE_INDEX)]
    images = np.zeros((len(labels), SIZE, SIZE, 3), np.uint8)
    images[..., 0] = index
    images[..., 1] = labels[:, None, None]
    images[..., 2] = (np.arange(len(labels)) % 256)[:, None, None]
    return cache.ArraySource(images, labels)


@pytest.fixture()
def three_sources() -> mixing.MixedSource:
    # Unequal sizes and class balances, as the real sets are (LFW 9.5k, DFDC 16k, GAN 1k with 2 fakes a real).
    return mixing.MixedSource({"big": source(0, 60, 40), "middle": source(1, 30, 30), "small": source(2, 4, 8)})


def batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), targets.numpy()) for images, targets in dataset]


@pytest.mark.slow
def test_each_epoch_draws_every_source_in_its_share_with_real_and_fake_balanced(three_sources):
    shares = mixing.parse_mix("big=2", ["big", "middle", "small"])
    assert shares == {"big": 2.0, "middle": 1.0, "small": 1.0}
    plan = mixing.EpochPlan(three_sources, shares, epoch_size=96, seed=3)
    epochs = 4
    images = np.concatenate([b[0] for b in batches(mixing.make_mixed_dataset(plan, 16, 0, epochs))])
    targets = np.concatenate([b[1] for b in batches(mixing.make_mixed_dataset(plan, 16, 0, epochs))])
    assert len(images) == epochs * 96
    assert np.array_equal(images[:, 0, 0, 1], targets[:, 0].astype(np.uint8))  # every target is its image's class
    for epoch in range(epochs):
        drawn = images[epoch * 96 : (epoch + 1) * 96, 0, 0]
        counts = np.bincount(drawn[:, 0], minlength=3) / 96
        np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.02)
        for index in range(3):
            classes = drawn[drawn[:, 0] == index, 1]
            assert abs(int((classes == REAL_INDEX).sum()) - int((classes == FAKE_INDEX).sum())) <= 1
    # The small source's 4 reals are walked through whole before any repeats: 12 draws, each 3 times.
    small_reals = images[:96][(images[:96, 0, 0, 0] == 2) & (images[:96, 0, 0, 1] == REAL_INDEX), 0, 0, 2]
    assert np.bincount(small_reals).tolist() == [3, 3, 3, 3]


def test_self_blends_are_a_source_of_pairs_made_from_every_sources_reals(three_sources):
    shares = mixing.parse_mix(None, ["big", "middle", "small", SELF_BLENDED_SOURCE])
    plan = mixing.EpochPlan(three_sources, shares, epoch_size=200, seed=1)
    assert plan.counts()[SELF_BLENDED_SOURCE] == 50 and sum(plan.counts().values()) == 200
    positions, blends, seeds = plan.draw(0)
    assert len(positions) == 200 - 25 and blends.sum() == 25 and seeds.shape == (175, 2)
    assert (three_sources.labels[positions[blends]] == REAL_INDEX).all()  # blends start from real faces
    from_source = np.searchsorted(three_sources.offsets, positions[blends], side="right") - 1
    assert set(from_source.tolist()) == {0, 1, 2}


@pytest.mark.slow
def test_resuming_a_multi_source_run_continues_the_same_sequence(three_sources):
    landmarks = np.broadcast_to(
        np.array([[5, 6], [11, 6], [8, 9], [6, 12], [10, 12]], np.float32), (len(three_sources), 5, 2)
    ).copy()
    shares = mixing.parse_mix(None, ["big", "middle", "small", SELF_BLENDED_SOURCE])
    plan = mixing.EpochPlan(three_sources, shares, epoch_size=48, seed=11)

    def run(first_epoch):
        return batches(mixing.make_mixed_dataset(plan, 16, first_epoch, 3, DataConfig(augment="selfblend"), landmarks))

    whole, resumed = run(0), run(2)
    assert len(whole) == 9 and len(resumed) == 3
    for (images, targets), (again, again_targets) in zip(whole[6:], resumed):
        np.testing.assert_array_equal(images, again)  # the same draws, blends and augmentations
        np.testing.assert_array_equal(targets, again_targets)
    assert not np.array_equal(whole[0][0], whole[3][0])  # while each epoch draws anew


def test_a_multi_source_run_is_refused_before_any_data_is_read(tmp_path):
    from deepfake_detector.training import check_config

    a, b = tmp_path / "a" / "same", tmp_path / "b" / "same"
    for config, message in (
        (TrainConfig(data_dir=[str(a), str(b)]), "named 'same'"),
        (TrainConfig(data_dir=[str(a), str(tmp_path / "other")], mix="nope=2"), "not SOURCE=WEIGHT"),
        (TrainConfig(data_dir=[str(a), str(tmp_path / "other")], mix="same=0"), "above 0"),
        (TrainConfig(data_dir=[str(a), str(tmp_path / "other")], mix=f"{SELF_BLENDED_SOURCE}=1"), "not SOURCE=WEIGHT"),
        (TrainConfig(data_dir=[str(a), str(tmp_path / "other")], fakes="self-blended"), "one --data-dir"),
    ):
        with pytest.raises(TrainingSetupError, match=message):
            check_config(config)  # the folders do not even exist: nothing was read


def test_pooled_threshold_counts_every_source_alike():
    rng = np.random.default_rng(0)
    big_labels, small_labels = np.r_[np.zeros(200), np.ones(200)], np.r_[np.zeros(10), np.ones(10)]
    big = np.r_[rng.normal(0.3, 0.1, 200), rng.normal(0.5, 0.1, 200)]
    small = np.r_[rng.normal(0.6, 0.1, 10), rng.normal(0.9, 0.1, 10)]
    weights = metrics.source_weights([big_labels, small_labels])
    assert weights[:200].sum() == pytest.approx(1.0) and weights[400:410].sum() == pytest.approx(1.0)
    weighted = metrics.choose_threshold(np.r_[big_labels, small_labels], np.r_[big, small], "eer", weights)
    # The same as pooling with the small source repeated until it is as large as the big one.
    repeated = metrics.choose_threshold(
        np.r_[big_labels, np.tile(small_labels, 20)], np.r_[big, np.tile(small, 20)], "eer"
    )
    plain = metrics.choose_threshold(np.r_[big_labels, small_labels], np.r_[big, small], "eer")
    assert weighted == pytest.approx(repeated) and weighted != pytest.approx(plain)


@pytest.mark.slow
def test_a_multi_source_run_keeps_the_epoch_with_the_best_mean_validation_auc(tmp_path):
    from deepfake_detector.model import read_metadata
    from deepfake_detector.training import train

    folders = [
        make_dataset(tmp_path / name, {"Train": 24, "Validation": 8, "Test": 8}, seed=i)
        for i, name in enumerate(("one", "two", "three"))
    ]
    config = TrainConfig(
        arch="seed",
        data_dir=[str(f) for f in folders],
        mix="one=2",
        output=str(tmp_path / "m.keras"),
        image_size=32,
        epochs=4,
        batch_size=8,
        early_stopping_patience=0,
        seed=5,
        learning_rate=3e-6,
        cache_dir=str(tmp_path / "cache"),
        steps_per_epoch=4,
    )
    path, measured = train(config)
    metadata = read_metadata(path)
    history = metadata.train_config["history"]
    assert len(history[mixing.MEAN_AUC]) == 4 and "val_auc_two" in history
    assert len(set(history[mixing.MEAN_AUC])) > 1  # the epochs differ, so keeping the best one is a choice
    assert set(measured["sources"]) == {"one", "two", "three"}
    # The saved network is the best epoch's: its sources' Validation AUCs average to the best mean.
    mean = np.mean([measured["sources"][name]["validation"]["roc_auc"] for name in ("one", "two", "three")])
    assert mean == pytest.approx(max(history[mixing.MEAN_AUC]), abs=1e-6)
    assert "pooled Validation" in metadata.threshold_rule and mixing.MEAN_AUC in metadata.selection_rule
    assert metadata.train_config["mix"] == "one=2"
    assert metadata.train_config["epoch_draw"]["one"] == {"share": 2.0, "images_per_epoch": 16}
