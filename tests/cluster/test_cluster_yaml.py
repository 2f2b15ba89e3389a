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


def test_every_node_type_names_its_security_group(config):
    # A group Ray's AWS provider creates gets SSH from 0.0.0.0/0, whatever the file lists.
    assert "security_group" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name


def test_ray_creates_no_security_group(config):
    # Ray's own code: with every node type's group given, it returns before any AWS call.
    aws = pytest.importorskip("ray.autoscaler._private.aws.config", reason="boto3 is not installed")
    before = copy.deepcopy(config)
    assert aws._configure_security_group(copy.deepcopy(config)) == before  # no call to AWS: nothing to make


def test_control_plane_is_closed(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert ".git" in config["rsync_exclude"]  # the repository's history is not uploaded to every node


def test_drivers_live_on_the_head_only(config):
    types = config["available_node_types"]
    assert types["head"]["resources"].get("raytower_driver", 0) > 0
    assert "raytower_driver" not in types["gpu_worker"]["resources"]
    assert types["gpu_worker"]["min_workers"] == 0 and config["idle_timeout_minutes"] > 0
