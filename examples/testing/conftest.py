from pathlib import Path

import pytest
from shop import app

from jobsys import App


@pytest.fixture
def jobsys_app() -> App:
    return app


@pytest.fixture
def jobsys_topology() -> Path:
    return Path(__file__).with_name("topology.yaml")
