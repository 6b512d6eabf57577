"""Shared fixtures for the pure-torch solver tests (no ComfyUI import anywhere here)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import gmm` under any pytest import mode

import gmm as G  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bed() -> G.Bed:
    return G.Bed()
