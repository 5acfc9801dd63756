"""``jobsys worker`` refuses bad arguments before it connects (no broker)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.cli import main
from tests.apps import worker_apps


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:OBJECT"),
        ("tests.integration.no_such_module:app", "cannot import"),
        ("tests.apps.worker_apps:PROBE", "is not a jobsys App"),
        ("tests.apps.worker_apps:nothere", "module 'tests.apps.worker_apps' has no"),
    ],
)
def test_worker_command_refuses_a_bad_app_target_with_exit_2(
    tmp_path: Path, target: str, message: str
) -> None:
    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main, ["worker", target, "--topology", str(tmp_path / "topology.yaml")]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_worker_command_refuses_a_queue_that_is_not_in_the_topology(tmp_path: Path) -> None:
    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "tests.apps.worker_apps:app",
            "--topology",
            str(tmp_path / "topology.yaml"),
            "--queue",
            "nope",
        ],
    )
    assert result.exit_code == 2
    assert "queue(s) not in the topology: nope" in result.output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            'raise RuntimeError("config missing: DATABASE_URL")\n',
            "cannot import 'broken_app': RuntimeError: config missing: DATABASE_URL "
            "(broken_app.py:1)",
        ),
        (
            "import sys\nsys.exit(3)\n",
            "cannot import 'broken_app': SystemExit: 3 (broken_app.py:2)",
        ),
        (
            "import no_such_dependency_xyz\n",
            "cannot import 'broken_app': ModuleNotFoundError: No module named "
            "'no_such_dependency_xyz' (broken_app.py:1)",
        ),
        (
            "from jobsys import App\napp = App()\n\n@app.handler('x')\ndef h():\n    pass\n",
            "must take (payload) or (payload, ctx) (broken_app.py:4)",
        ),
        ("def f(:\n", "cannot import 'broken_app': SyntaxError: invalid syntax"),
    ],
    ids=["raises", "exits", "missing-dependency", "bad-handler", "syntax"],
)
def test_an_app_that_fails_to_import_is_one_line_with_where_and_a_traceback_only_with_v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    worker_apps.loaded_topology(tmp_path)
    (tmp_path / "broken_app.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["worker", "broken_app:app", "--topology", str(tmp_path / "topology.yaml")]

    quiet = CliRunner().invoke(main, args)
    sys.modules.pop("broken_app", None)
    loud = CliRunner().invoke(main, [*args, "-v"])
    sys.modules.pop("broken_app", None)

    assert quiet.exit_code == loud.exit_code == 2
    assert quiet.stderr.strip().splitlines() == [f"error: {quiet.stderr.strip()[7:]}"]
    assert message in quiet.stderr
    assert "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in loud.stderr


def test_a_missing_app_module_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_apps.loaded_topology(tmp_path)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(
        main, ["worker", "myapp:app", "--topology", str(tmp_path / "topology.yaml")]
    )

    assert result.exit_code == 2
    assert f"no module 'myapp' in the current directory ({tmp_path})" in result.stderr
    assert "PYTHONPATH" in result.stderr
