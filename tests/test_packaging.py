"""voicebot installed as a regular package, the way the container image installs it: everything it reads at run
time ships inside the wheel, and nothing it writes by default lands in the current folder or in site-packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel of this tree, built without network (setuptools from the venv) and installed into a folder."""
    folder = tmp_path_factory.mktemp("installed")
    wheels = folder / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."]
    subprocess.run(build, cwd=REPO, check=True, capture_output=True)
    [wheel] = wheels.glob("voicebot-*.whl")
    target = folder / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"models/manifest.toml", "samples/kb.json", "voicebot/data/intents.json"} <= names
    assert not any(name.startswith(("tests/", "samples/calls/")) for name in names)
    return target


def _run(site: Path, cwd: Path, env: dict[str, str], *code_or_args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEBOT_", "XDG_"))}
    done = subprocess.run(
        [sys.executable, *code_or_args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(site), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_installed_package_reads_its_own_files_and_writes_to_the_data_folder(installed: Path, tmp_path: Path):
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    data = tmp_path / "data"
    probe = (
        "import json, voicebot, models; from voicebot.kb import SAMPLE_KB, load_kb; "
        "from voicebot.intents import load_intent_examples; "
        "print(json.dumps([voicebot.__file__, str(SAMPLE_KB), len(load_kb(SAMPLE_KB)), "
        "len(models.load_manifest().artifacts), bool(load_intent_examples(None))]))"
    )
    module, sample_kb, entries, artifacts, intents = json.loads(_run(installed, cwd, {}, "-c", probe))
    assert Path(module).is_relative_to(installed) and Path(sample_kb).is_relative_to(installed)
    assert entries > 0 and artifacts > 0 and intents

    print_config = ("-m", "voicebot", "serve", "--print-config")
    config = json.loads(_run(installed, cwd, {"VOICEBOT_DATA_DIR": str(data)}, *print_config))
    assert config["store"]["url"] == f"sqlite:///{data / 'voicebot.db'}"
    assert config["models"]["dir"] == str(data / "models")
    # With no data folder set: the XDG one, absolute, whatever the current folder.
    config = json.loads(_run(installed, cwd, {"XDG_DATA_HOME": str(tmp_path / "xdg")}, *print_config))
    assert config["models"]["dir"] == str(tmp_path / "xdg" / "voicebot" / "models")
    in_data = {"VOICEBOT_DATA_DIR": str(data)}
    _run(installed, cwd, in_data, "-c", "from voicebot.store import open_store as o; from voicebot.data_dir import "
         "default_store_url as u; o(u()).close()")  # fmt: skip
    assert json.loads(_run(installed, cwd, in_data, "-m", "voicebot", "calls", "list", "--json")) == []
    assert (data / "voicebot.db").is_file()
    assert list(cwd.iterdir()) == []  # nothing written where it ran
