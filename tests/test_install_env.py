"""`make setup`'s installer hands pip's own settings to uv (scripts/install_env.py): the same
indexes, find-links and constraints as `pip install` would use, read back from a real pip."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _installer():
    path = REPO / "scripts" / "install_env.py"
    spec = importlib.util.spec_from_file_location("install_env", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_settings_from_a_config_file_and_the_environment_become_uv_flags(tmp_path,
                                                                             monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                      "find-links = /wheels/a /wheels/b\n"
                      "constraint = /etc/constraints.txt\n")
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    # An environment variable overrides the file, as it does for pip itself.
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///local/simple file:///more/simple")
    monkeypatch.setenv("PIP_CONSTRAINT", "/env/constraints.txt")
    installer = _installer()
    settings = installer.pip_settings()
    assert settings["constraint"] == "/env/constraints.txt"
    arguments = installer.uv_arguments(settings)
    pairs = list(zip(arguments[::2], arguments[1::2], strict=True))
    assert pairs == [("--index-strategy", "unsafe-best-match"),
                     ("--index-url", "https://mirror.example/simple"),
                     ("--extra-index-url", "file:///local/simple"),
                     ("--extra-index-url", "file:///more/simple"),
                     ("--find-links", "/wheels/a"), ("--find-links", "/wheels/b"),
                     ("--constraint", "/env/constraints.txt")]


def test_it_refuses_a_python_outside_a_virtual_environment():
    """Installing into the system's Python by mistake would change the machine, not .venv."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}"
    done = subprocess.run([str(base), str(REPO / "scripts" / "install_env.py"), ".[dev]"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "virtual environment's python" in done.stderr
