"""cluster.yaml passes the checks `ray up` makes before it calls AWS, and stays closed."""

import copy

import pytest
import yaml

from tests.conftest import REPO

ray_util = pytest.importorskip("ray.autoscaler._private.util")


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_ray_accepts_cluster_yaml(config):
    prepared = ray_util.prepare_config(copy.deepcopy(config))
    ray_util.validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].update(min_workerz=0),   # a typo'd key
    lambda c: c.update(idle_timeout_minutes="ten"),                            # a wrong type
    lambda c: c["head_start_ray_commands"].append({"ray": "start"}),           # YAML turned a command into a map
])
def test_a_typo_fails_validation(config, break_it):
    bad = copy.deepcopy(config)
    break_it(bad)
    with pytest.raises(Exception):
        ray_util.validate_config(ray_util.prepare_config(bad))


def test_control_plane_is_closed(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # nothing but SSH
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head


def test_drivers_live_on_the_head_only(config):
    types = config["available_node_types"]
    assert types["head"]["resources"].get("raytower_driver", 0) > 0
    assert "raytower_driver" not in types["gpu_worker"]["resources"]
    assert types["gpu_worker"]["min_workers"] == 0 and config["idle_timeout_minutes"] > 0
