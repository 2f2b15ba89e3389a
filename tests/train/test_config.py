"""TrainConfig: its checks give one-line errors naming the file, and its defaults keep old results."""

import pytest

from raytower.errors import ConfigError
from raytower.train.config import TrainConfig


def test_config_rejects_bad_values_in_one_line():
    for bad in ({"fusion": "attention"}, {"temp_start": -1.0}, {"unfreeze_depth": 9}, {"nope": 1}, {"lr": "fast"}):
        with pytest.raises(ConfigError) as e:
            TrainConfig.from_dict(bad, source="cfg.yaml")
        assert str(e.value).startswith("cfg.yaml: ") and "\n" not in str(e.value)


def test_config_checks_the_logq_targets_and_gnn_fields_in_one_line():
    cases = [({"logq": "sampled"}, "unknown logq 'sampled'; choose one of frequency, inclusion"),
             ({"targets": "first"}, "unknown targets 'first'; choose one of all, last"),
             ({"logq_positive": "no"}, "logq_positive must be bool"),
             ({"logq_positive": 0}, "logq_positive must be bool"),  # an int is not a yes/no
             ({"gnn_unfreeze": 1}, "gnn_unfreeze must be bool"),
             ({"gnn_lr_ratio": 0.0}, "gnn_lr_ratio must be > 0"),
             ({"stage1_max_epochs": -1}, "stage1_max_epochs must be >= 0"),
             ({"gnn_vector": "mean"}, "unknown gnn_vector 'mean'; choose one of table, history"),
             ({"gnn_window": 0}, "gnn_window must be > 0"),
             ({"gnn_window": 10**9}, "gnn_window must be at most 10,000"),  # a 32 TB allocation's traceback
             ({"gnn_vector": "history", "gnn_unfreeze": True}, "gnn_unfreeze trains the LightGCN user table"),
             ({"seq_items": "shared"}, "unknown seq_items 'shared'; choose one of own, tied"),
             ({"batches": "sorted"}, "unknown batches 'sorted'; choose one of by_length, random"),
             ({"seq_items": "tied", "model": "mypkg.towers:build"}, "seq_items: tied reads the built-in item tower")]
    for bad, message in cases:
        with pytest.raises(ConfigError) as e:
            TrainConfig.from_dict(bad, source="cfg.yaml")
        assert str(e.value).startswith(f"cfg.yaml: {message}") and "\n" not in str(e.value), bad
    ok = TrainConfig.from_dict({"logq": "inclusion", "logq_positive": False, "targets": "last", "gnn_unfreeze": True,
                                "stage1_max_epochs": 0})
    assert (ok.logq, ok.logq_positive, ok.targets, ok.gnn_unfreeze, ok.stage1_max_epochs) == ("inclusion", False, "last", True, 0)
    # The defaults keep what raytower did before these options: existing results stay true.
    d = TrainConfig()
    assert (d.logq, d.logq_positive, d.targets, d.gnn_unfreeze, d.seq_items) == ("frequency", True, "all", False, "own")
    assert any("gnn_lr_ratio" in line for line in TrainConfig(gnn_unfreeze=True, gnn_lr_ratio=2.0).advice())
    assert not TrainConfig(gnn_lr_ratio=2.0).advice()  # a frozen table's ratio is never used


def test_yaml_12_floats_are_floats(tmp_path):
    """PyYAML reads 1e-3 and 1.0e30 (YAML 1.2 floats) as strings: 'lr must be float, got '1e-3'' puzzled."""
    from raytower.train.config import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 1.0e-6\ntemp_start: 5E-1\nfusion: concat\n")
    cfg = TrainConfig.load(path)
    assert (cfg.lr, cfg.weight_decay, cfg.temp_start, cfg.fusion) == (1e-3, 1e-6, 0.5, "concat")
