"""Fixtures shared by the unit tests of the NVML layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gpufleet.agent import fakenvml


@pytest.fixture
def driver() -> Iterator[Callable[[dict[str, Any]], fakenvml.FakeNvml]]:
    """Install a fake driver for a profile; uninstalled afterwards, and the fake must not have
    hit a bug of its own (an exception inside a ctypes callback)."""
    fakes: list[fakenvml.FakeNvml] = []

    def install(profile: dict[str, Any]) -> fakenvml.FakeNvml:
        fakes.append(fakenvml.install(profile))
        return fakes[-1]

    yield install
    fakenvml.uninstall()
    for fake in fakes:
        assert fake.internal_errors == []
