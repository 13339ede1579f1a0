"""scripts/offline_plots.py fetches what DVC's plots page would load from its CDN, no other."""

from __future__ import annotations

import re

from dvc_render.vega import VegaRenderer

from tests.conftest import script_module


def test_the_inlined_scripts_are_the_ones_dvc_asks_for() -> None:
    """A dvc-render upgrade that changes its vega versions must fail here, not offline."""
    wanted = set(re.findall(r"npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    script = script_module("offline_plots")
    assert {(name, version) for name, version, _, _ in script.PACKAGES} == wanted
