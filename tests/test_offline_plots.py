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


def test_the_clone_s_local_dvc_config_is_private(tmp_path, monkeypatch) -> None:
    """`.dvc/config.local` may hold a remote's credentials: `make setup` makes it mode 600,
    new or already there (DVC rewrites an existing file in place, keeping its mode)."""
    script = script_module("offline_plots")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    (tmp_path / ".dvc").mkdir()
    script.private_local_config()
    local = tmp_path / ".dvc/config.local"
    assert local.stat().st_mode & 0o777 == 0o600
    local.write_text("[plots]\n")
    local.chmod(0o644)
    script.private_local_config()
    assert local.stat().st_mode & 0o777 == 0o600
    assert local.read_text() == "[plots]\n"
