"""A short run of the seeded randomized soak (`make soak` runs a long one): see tests/soak.py."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER
from tests.soak import Soak

pytestmark = pytest.mark.faults


async def test_a_short_randomized_soak(control_plane: LocalControlPlane,
                                       reconciler_kubeconfig: Path) -> None:
    seed = int(os.environ.get("NIMBUS_SOAK_SEED") or random.randrange(2**32))
    print(f"soak seed {seed}: replay with NIMBUS_SOAK_SEED={seed}")
    namespace = f"soak-{uuid.uuid4().hex[:8]}"
    async with control_plane.async_client() as api:
        (await api.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
         ).raise_for_status()
        run = Soak(control_plane, api, namespace, reconciler_kubeconfig, RECONCILER_USER, seed)
        await run.run(steps=int(os.environ.get("NIMBUS_SOAK_STEPS", "60")))
    print(f"steps: { {name: run.done.count(name) for name in sorted(set(run.done))} }")
