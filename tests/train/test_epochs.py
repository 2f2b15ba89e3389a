"""The one outer loop's choice of the best epoch."""

from raytower.train.epochs import best_epoch


def test_of_equal_values_the_latest_epoch_is_best():
    # Ray keeps the latest checkpoints among equal scores: the best epoch must be one it kept
    rows = [{"epoch": e, "diverged": 0.0, "val/recall@100": v} for e, v in ((1, 0.4), (2, 0.5), (3, 0.5), (4, 0.5))]
    assert best_epoch(rows)["epoch"] == 4
    rows.append({"epoch": 5, "diverged": 1.0, "val/recall@100": float("nan")})
    assert best_epoch(rows)["epoch"] == 4
