"""The private-API adapter: the versions it was tested with, checked in one line."""

import pytest

from raytower.errors import RaytowerError
from raytower.tune._adapter import SUPPORTED, check_versions


def test_the_installed_versions_are_in_the_supported_range():
    from importlib.metadata import version

    from packaging.version import Version

    for name, (low, high) in SUPPORTED.items():  # this environment is what the suite runs on
        assert Version(low) <= Version(version(name)) < Version(high), name
    assert check_versions() is None  # and the check lets it through
    # the range's lowest versions are in it (inclusive), as pyproject's pins say
    assert check_versions(installed=lambda name: SUPPORTED[name][0]) is None


@pytest.mark.parametrize("ray_version", ["2.58.0", "2.61.0", "3.0.0"])
def test_a_version_outside_the_range_fails_in_one_line(ray_version):
    fake = {"ray": ray_version, "optuna": "5.0.0"}
    with pytest.raises(RaytowerError) as e:
        check_versions(installed=fake.__getitem__)
    msg = str(e.value)
    low, high = SUPPORTED["ray"]
    assert "\n" not in msg and ray_version in msg and f">= {low}, < {high}" in msg


def test_a_missing_dashboard_stack_fails_in_one_line_before_any_work():
    from raytower.tune._adapter import check_dashboard

    check_dashboard()  # this environment has ray[default]
    with pytest.raises(RaytowerError, match=r"pip install 'ray\[default\]'") as e:
        check_dashboard(find_spec=lambda name: None)  # what ray[tune,train] alone installs
    assert "\n" not in str(e.value)
