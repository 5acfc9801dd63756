"""The ``jobsys`` pytest plugin, run the way a user's project runs it: the worked example of
docs/testing.md (examples/testing/) in a pytest session of its own, in memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testing"


def copy_example(pytester: pytest.Pytester) -> None:
    for file in EXAMPLE.iterdir():
        if file.is_file():
            shutil.copy(file, pytester.path / file.name)


def test_the_worked_example_passes_in_memory(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=5)


def test_a_project_without_its_fixtures_is_told_what_to_define(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(
        test_missing="async def test_it(jobsys_kit):\n    pass\n",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a `jobsys_app` fixture*"])


def test_a_topology_fixture_of_the_wrong_kind_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makeconftest(
        "import pytest\nfrom jobsys import App\n\n"
        "@pytest.fixture\ndef jobsys_app():\n    return App()\n\n"
        "@pytest.fixture\ndef jobsys_topology():\n    return 42\n"
    )
    pytester.makepyfile(test_wrong="async def test_it(jobsys_kit):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*must return a topology file's path or a LoadedTopology*"])
