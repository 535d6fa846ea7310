"""Configs and the retain questions load from a non-editable install, not only from the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PROBE = """
import moshi_knowledge, sys
from hydra import compose, initialize_config_module
from moshi_knowledge.config_schema import register
from moshi_knowledge.qa.retain import retain_items
register()
with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=["experiment=demo", "layout=mono_duplicate"])
print(moshi_knowledge.__file__)
print(cfg.layout._target_)
print(len(retain_items()))
"""


@pytest.mark.slow
def test_configs_load_from_a_wheel_install(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, cwd=tmp_path,
    )
    assert (target / "moshi_knowledge" / "conf" / "experiment" / "demo.yaml").is_file()
    packages = {p.parent.relative_to(REPO) for p in (REPO / "moshi_knowledge").rglob("__init__.py")}
    missing = [str(p) for p in packages if not (target / p / "__init__.py").is_file()]
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
        cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
    ).stdout.split()
    assert Path(out[0]).is_relative_to(target), out  # the installed copy, not the source tree
    assert out[1].endswith("MonoDuplicateLayout")
    assert out[2] == "30"  # the retain tier's questions ship as package data
