"""The ``jobsys`` pytest plugin's real-broker mode: the worked example of docs/testing.md run
with ``--jobsys-broker``, each test in a private vhost of the shared broker."""

from __future__ import annotations

import pytest

from jobsys.settings import Settings
from tests.unit.test_pytest_plugin import copy_example

pytest_plugins = ["pytester"]


def test_the_worked_example_runs_its_producer_tests_on_rabbitmq(
    pytester: pytest.Pytester, broker_settings: Settings
) -> None:
    copy_example(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "--jobsys-broker")
    # The two producer tests run on the broker; the three that inspect the kit are in-memory
    # tests and say so.
    result.assert_outcomes(passed=2, skipped=3)
