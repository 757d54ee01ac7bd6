"""The objective tests run on the device chosen with ``--device`` (tests/conftest.py).

Every test here takes the ``device`` fixture through the autouse fixture below, which makes that device the
default for the tensors and modules the test creates (``torch.device`` as a context manager); seeded draws use
``torch.Generator(torch.get_default_device())``. On the CPU, the default, nothing changes. The reference tests
(``test_reference_*.py``) build their inputs on the CPU and move them with ``.to(device)`` themselves, so
they run outside that context.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _on_device(device: torch.device, request: pytest.FixtureRequest):
    if device.type == "cpu" or request.node.path.name.startswith("test_reference_"):
        yield
        return
    with device:
        yield
