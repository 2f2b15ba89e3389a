"""Which searches a cluster can never run, decided before the first trial from the nodes' resources
(live nodes and the autoscaler's node types). The same check against a real multi-node cluster is
in tests/cluster/test_multinode.py."""

import pytest

from raytower.errors import ConfigError
from raytower.tune._preflight import check_cluster_fits
from raytower.tune._session import offers
from raytower.tune.settings import SearchSettings

HEAD = {"CPU": 0.0, "raytower_driver": 64.0}
CPU_WORKER = {"CPU": 2.0}
GPU_TYPE = {"CPU": 8.0, "GPU": 1.0}


def settings(**kw):
    return SearchSettings(space="search_spaces/quick.yaml", out="unused", address="127.0.0.1:6379", **kw)


def test_a_cluster_like_cluster_yaml_fits_both_executors():
    assert check_cluster_fits(settings(executor="function"), [HEAD, CPU_WORKER]) is None
    assert check_cluster_fits(settings(executor="train", gpus_per_trial=1), [HEAD, CPU_WORKER, GPU_TYPE]) is None
    # without the worker each one fits on, the same requests are refused: it is the nodes that let them through
    with pytest.raises(ConfigError, match="no trial could ever start"):
        check_cluster_fits(settings(executor="function"), [HEAD])
    with pytest.raises(ConfigError, match="no trial could ever start"):
        check_cluster_fits(settings(executor="train", gpus_per_trial=1), [HEAD, CPU_WORKER])


def test_more_gpus_per_worker_than_any_node_has_is_refused():
    with pytest.raises(ConfigError, match="no trial could ever start"):
        check_cluster_fits(settings(gpus_per_trial=2), [HEAD, CPU_WORKER, GPU_TYPE])
    # split over two workers, each needs one GPU: it fits
    check_cluster_fits(settings(gpus_per_trial=2, workers_per_trial=2), [HEAD, GPU_TYPE])


def test_train_executor_needs_a_node_with_the_driver_resource():
    with pytest.raises(ConfigError, match="raytower_driver"):
        check_cluster_fits(settings(executor="train"), [{"CPU": 4.0}])
    check_cluster_fits(settings(executor="function"), [{"CPU": 4.0}])  # function trials need no driver slot


def test_unknown_node_type_resources_are_not_judged():
    too_many = settings(executor="train", gpus_per_trial=8)
    with pytest.raises(ConfigError, match="no trial could ever start"):
        check_cluster_fits(too_many, [HEAD, GPU_TYPE])  # known node types: refused
    check_cluster_fits(too_many, None)  # the same request, node types unknown: let through, not refused


def test_node_types_come_from_ray_ups_config_then_gcs_and_kuberay_is_not_judged():
    live = [HEAD]
    assert offers(live, [GPU_TYPE], None, kuberay=False) == [HEAD, GPU_TYPE]
    assert offers(live, None, [GPU_TYPE], kuberay=False) is None  # a `ray up` type of unknown resources
    assert offers(live, False, [GPU_TYPE], kuberay=True) == [HEAD, GPU_TYPE]  # an autoscaler's config in GCS
    # KubeRay without a readable config: a worker group scaled to zero may be the one that fits
    assert offers(live, False, None, kuberay=True) is None
    # a static cluster (`ray start` by hand): only the live nodes, so a misfit is refused
    static = offers(live, False, None, kuberay=False)
    assert static == [HEAD]
    with pytest.raises(ConfigError, match="no trial could ever start"):
        check_cluster_fits(settings(gpus_per_trial=1), static)
