"""The failure regions of issue 17's curriculum study, as the report applies them to a chosen config."""

import pytest

from raytower.train import failure_region as fr
from raytower.train.config import TrainConfig

USERS = 25_000  # the study's 1M-interaction synthetic set


@pytest.mark.parametrize("batch_size,lr,slow", [
    (256, 1e-3, False),   # the recipe: left popularity within its first epoch
    (1024, 1e-3, True),   # sat at popularity two epochs
    (4096, 1e-3, True),   # six epochs
    (256, 1e-4, True),    # five
    (4096, 3e-2, False),  # few steps, but large ones
])
def test_slow_start_is_lr_times_steps(batch_size, lr, slow):
    cfg = TrainConfig(batch_size=batch_size, lr=lr, unfreeze_depth=0, targets="last")
    found = fr.warnings(cfg, USERS)
    assert any(w.startswith("a slow start") for w in found) == slow, found
    # every position as a target left popularity in the first epoch: the study saw no slow start there
    assert fr.warnings(cfg.replace(targets="all"), USERS) == []
    steps = -(-USERS // batch_size)
    assert fr.epochs_to_leave_popularity(cfg, USERS) == pytest.approx(fr.ESCAPE_LR_STEPS / (lr * steps))


def test_the_study_points_fall_where_the_study_saw_them():
    """The recipe's own settings are in neither region; its LR at 1e-2 is the collapse it caused."""
    recipe = dict(batch_size=256, targets="last", stage1_max_epochs=0, unfreeze_depth=5, lr_ratio=1.0)
    assert fr.warnings(TrainConfig(lr=1e-3, **recipe), USERS) == []
    found = fr.warnings(TrainConfig(lr=1e-2, **recipe), USERS)
    assert len(found) == 1 and found[0].startswith("item-tower collapse") and "LR 0.01" in found[0]


def test_a_frozen_item_tower_cannot_collapse():
    cfg = TrainConfig(lr=1e-2, unfreeze_depth=0, lr_ratio=1.0)
    assert fr.item_tower_lr(cfg) == 0.0
    assert not any("collapse" in w for w in fr.warnings(cfg, USERS))
    # the default curriculum's ratio keeps a 1e-2 user tower's item tower at 1e-4
    assert fr.item_tower_lr(TrainConfig(lr=1e-2)) == pytest.approx(1e-4)


def test_a_soft_temperature_under_full_logq_is_named_only_where_the_study_ran_it():
    soft = TrainConfig(temp_start=0.3, temp_min=0.3, anneal_rate=1.0, logq_warmup_epochs=0, logq_ramp_epochs=0,
                       logq_max=1.0, unfreeze_depth=0)
    assert fr.soft_logq_epochs(soft) == fr.STUDY_EPOCHS
    assert any(w.startswith("a soft temperature") for w in fr.warnings(soft, USERS))
    # the default curriculum anneals from 0.5 and never gives logQ more than 0.05: not there
    assert fr.soft_logq_epochs(TrainConfig()) == 0
    # full logQ only from epoch 6 on, at 0.3: two epochs of the window, short of the study's four
    late = soft.replace(logq_warmup_epochs=6)
    assert fr.soft_logq_epochs(late) == 2 and fr.warnings(late, USERS) == []
