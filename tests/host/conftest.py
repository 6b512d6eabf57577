"""Host layer: the pack loaded by a real ComfyUI (in-process).

ComfyUI is booted when this file is imported, so a missing host fails collection: in CI that is a
failure, never a skip. Run through `make test` or `scripts/py -m pytest`, which provision the host.
"""

from __future__ import annotations

import pytest

from testbed import comfyhost

BOOTED = comfyhost.boot()


@pytest.fixture(scope="session")
def host():
    return BOOTED


@pytest.fixture(scope="session")
def node_classes(host):
    return host["nodes"].NODE_CLASS_MAPPINGS
