"""The Ray session of a search: a local Ray started on loopback, or a cluster joined and judged.

    init_ray(settings)        # ray.init: local (dashboard on 127.0.0.1) or --address; SIGTERM handling kept
    join_cluster(settings)    # --address: init_ray, then refuse a trial no node can ever place
    offers(live, ...)         # what the nodes offer: live ones and those an autoscaler may add

The search shuts the session down (``ray.shutdown``) however its Tuner ends.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from raytower.errors import ConfigError
from raytower.tune._preflight import check_cluster_fits
from raytower.tune.settings import SearchSettings

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster's config on the head


def init_ray(settings: SearchSettings) -> None:
    """Start (or join, with ``settings.address``) Ray the way a search does; benchmarks use it too."""
    import signal

    # ray.init installs its C++ failure handler for SIGTERM (a stack dump, then abort): a Python
    # handler set before it (the CLI's: stop like Ctrl-C) is put back afterwards.
    on_term = signal.getsignal(signal.SIGTERM)
    if not settings.address and callable(on_term) and not sys.stdin.isatty():
        # Off a terminal, SIGTERM often comes to the whole process group (timeout, job schedulers):
        # the local Ray's processes, started below, must not die with it before Tune has saved the
        # search. A group of our own keeps them out of it; on a terminal the group stays, so Ctrl-C
        # still reaches the driver (Ray shields its processes from SIGINT itself).
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # a session leader (PID 1 in a container) already has its own group
    try:
        _start_ray(settings)
    finally:
        if callable(on_term):
            signal.signal(signal.SIGTERM, on_term)


def _start_ray(settings: SearchSettings) -> None:
    import ray

    # The Train V2 placement-group cleaner talks to the State API: keep the dashboard on,
    # bound to loopback. address="local" so a stray RAY_ADDRESS is not joined by accident.
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=bool(settings.verbose))
        except ConnectionError as e:
            raise ConfigError(f"--address {settings.address}: {str(e).strip().splitlines()[0][:200]}") from None
    else:
        # Train V2's placement-group cleaner finds the State API through RAY_API_SERVER_ADDRESS;
        # pinning it to our own dashboard keeps it working when another Ray runs on the host.
        port = _free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 # No _node_ip_address: ray.init rewrites 127.0.0.1 to the host's address anyway
                 # (services.resolve_ip_for_localhost), and GCS and raylet listen on every
                 # interface. Token authentication (Ray's default) is what guards those ports.
                 # The trials' own output ("Checkpoint successfully created", ...) stays in Ray's
                 # session logs unless -v: the console gets raytower's lines.
                 resources={"raytower_driver": 1000}, log_to_driver=bool(settings.verbose))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_cluster(settings: SearchSettings, log=print) -> None:
    """Join the cluster at ``settings.address``; a trial none of its nodes could place fails now,
    not after pretraining. Ray is shut down again when it does."""
    import ray

    init_ray(settings)
    try:
        offered = _cluster_offers()
        if offered is None:
            log("the resources of this cluster's autoscaler node types are unknown here (KubeRay keeps them in "
                "its RayCluster): whether a trial fits is not checked, and one that fits no node will wait")
        check_cluster_fits(settings, offered)
    except BaseException:
        ray.shutdown()
        raise


def _cluster_offers() -> list[dict[str, float]] | None:
    """The resources of each live node and of each node type the autoscaler may add; None when
    some node type's resources are unknown, so nothing may be refused."""
    import ray

    live = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    return offers(live, _bootstrap_node_types(), _gcs_node_groups(), kuberay=bool(os.environ.get("RAY_CLUSTER_NAME")))


def offers(live: list[dict], bootstrap: list[dict] | None | bool, gcs_groups: list[dict] | None,
           kuberay: bool) -> list[dict[str, float]] | None:
    """Live nodes plus the node types an autoscaler may add, from the first source that has them:
    the config `ray up` leaves on the head (``bootstrap``: False when absent, None when a type's
    resources are unknown), the cluster config an autoscaler may publish in GCS, and otherwise
    nothing. KubeRay keeps its worker groups in the RayCluster object, out of a driver's sight: a
    group scaled to zero may be the one that fits, so without a published config a KubeRay cluster
    is not judged."""
    if bootstrap is None:
        return None
    if bootstrap is not False:
        return live + bootstrap
    if gcs_groups is not None:
        return live + gcs_groups
    return None if kuberay else live


def _bootstrap_node_types() -> list[dict] | None | bool:
    bootstrap = Path(os.path.expanduser(BOOTSTRAP_CONFIG))
    if not bootstrap.is_file():
        return False
    import yaml

    types_offered = []
    try:
        types = (yaml.safe_load(bootstrap.read_text()) or {}).get("available_node_types") or {}
        for t in types.values():
            res = t.get("resources") or {}
            if "CPU" not in res and "GPU" not in res:
                return None  # `ray up` could not detect this type's resources: it might fit
            types_offered.append({"CPU": math.inf, **res})
    except (yaml.YAMLError, AttributeError):
        pass  # not ours to judge; the live nodes still count
    return types_offered


def _gcs_node_groups() -> list[dict] | None:
    """Node groups from the cluster config an autoscaler may publish in GCS; None when absent,
    unreadable, or when some group's resources are unknown."""
    from raytower.tune._adapter import published_node_groups

    groups = published_node_groups()
    return None if groups is None or any("CPU" not in g and "GPU" not in g for g in groups) else groups
