"""What ``import jobsys`` offers: every error a caller can catch, and every lazy name, resolve."""

from __future__ import annotations

import inspect

import jobsys
from jobsys import errors


def test_every_error_class_is_exported_from_the_package() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }
    assert defined - set(jobsys.__all__) == set()


def test_every_exported_name_resolves() -> None:
    for name in jobsys.__all__:
        assert getattr(jobsys, name) is not None, name
