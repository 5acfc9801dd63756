"""Handler apps and topologies the tests run workers on (importable by unit and integration
tests alike, and by worker subprocesses as ``tests.apps.MODULE:app``)."""
