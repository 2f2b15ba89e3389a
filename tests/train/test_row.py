"""The epoch row's one schema: what Curriculum.step() reports is what every consumer reads."""

from raytower.train import row
from raytower.train.loop import Curriculum


def test_every_column_of_the_schema_is_in_a_real_row_and_tags_are_tensorboard_safe(small_bundle, small_artifacts,
                                                                                    small_config):
    import re

    step = Curriculum.create(small_config.replace(epochs=1), small_bundle, small_artifacts).step()
    missing = [c.key for c in row.ROW if c.key not in step]
    assert missing == [], missing
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", c.tag) for c in row.ROW if c.tag)
    assert len({c.tag for c in row.ROW if c.tag}) == len(row.SCALARS)  # no tag twice


def test_consumers_read_the_schema():
    from raytower.train.epochs import SCALARS
    from raytower.train.run import COLUMNS, format_header
    from raytower.tune.results import REPORT_KEYS

    assert SCALARS is row.SCALARS and REPORT_KEYS is row.REPORT_KEYS
    assert [key for _, key, _ in COLUMNS] == [c.key for c in row.CONSOLE]
    assert format_header().split() == [c.short for c in row.CONSOLE]
    assert REPORT_KEYS[:8] == tuple(f"val/{m}" for m in __import__("raytower.names").names.METRICS)
