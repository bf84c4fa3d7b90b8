"""Repository-level checks: lint, types, and the README's settings table."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff")
                    .exists(), reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean() -> None:
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "models", "stream", "scripts"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for f in dataclasses.fields(Settings):
        assert f"`SEGMENTER_{f.name.upper()}`" in readme, f.name


def test_cli_explains_missing_settings() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SEGMENTER_")}
    out = subprocess.run([sys.executable, "-m", "stream.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "SEGMENTER_KAFKA is not set" in out.stderr
    env["SEGMENTER_KAFKA"] = "127.0.0.1:1"
    out = subprocess.run([sys.executable, "-m", "stream.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "SEGMENTER_REDIS_URL is not set" in out.stderr
    env["SEGMENTER_PARTITIONS"] = "many"
    out = subprocess.run([sys.executable, "-m", "stream.cli", "lag"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "SEGMENTER_PARTITIONS must be an integer" in out.stderr
