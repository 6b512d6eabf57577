"""Shared fixtures for the pure-torch solver tests (no ComfyUI import anywhere here)."""

from __future__ import annotations

import pytest
import torch

from testbed import gmm as G

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bed() -> G.Bed:
    return G.Bed()
