"""The suite as a normal package: build the wheel, install it into a fresh virtual
environment without the checkout, and use it from an empty folder.

The fresh environment gets the suite from the wheel only; its dependencies (torch, anomalib,
MLflow...) come from this environment's site-packages through a path entry, so the test needs
no network and no second copy of torch. Entries of that folder's own .pth files (this
checkout's editable install) are not processed, so the checkout cannot leak in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _source_copy(destination: Path) -> Path:
    """The checkout's source, without what building or running it leaves behind: setuptools
    builds in the source's build/ folder and never empties it, so a module moved or deleted
    since an earlier build would ship in the wheel beside its replacement."""
    leftovers = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                       "results", "reports", ".pytest_cache", ".ruff_cache")
    shutil.copytree(REPO, destination, ignore=leftovers)
    shutil.copytree(REPO / "results" / "reference", destination / "results" / "reference")
    return destination


def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BENCH_", "PYTHONPATH", "MLFLOW_TRACKING"))}
    wheels = tmp_path / "wheels"
    source = _source_copy(tmp_path / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)], tmp_path, env)
    (wheel,) = wheels.glob("medad_bench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith("top_level.txt")))
    assert top_level.decode().split() == ["medad_bench"]
    assert "medad_bench/datasets/synthetic.toml" in names
    assert "medad_bench/datasets/medmnist/pneumoniamnist.npz" in names
    assert "medad_bench/references/pneumoniamnist.json" in names
    assert "medad_bench/references/published/zhanglab.json" in names
    assert not [n for n in names if n.startswith(("benchmark/", "methods/", "tests/"))]
    # Every module in the wheel is one of the source's (nothing stale, nothing extra).
    sources = {f"medad_bench/{p.relative_to(REPO / 'benchmark').as_posix()}"
               for p in (REPO / "benchmark").rglob("*.py")}
    sources |= {f"medad_bench/methods/{p.relative_to(REPO / 'methods').as_posix()}"
                for p in (REPO / "methods").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == sources

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python, bench = venv / "bin" / "python", venv / "bin" / "bench"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
          "--disable-pip-version-check", str(wheel)], tmp_path, env)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = _run([str(python), "-c", "import medad_bench, medad_bench.methods.padim as p; "
                  "print(medad_bench.__file__); print(p.__file__)"], empty, env)
    assert str(site) in where and str(REPO) not in where
    listed = _run([str(bench), "list"], empty, env)
    assert "padim" in listed and "synthetic" in listed and "pneumoniamnist" in listed
    ran = _run([str(bench), "run", "--methods", "padim", "--dataset", "synthetic", "--seeds",
                "0", "--no-progress", "--threads", "1"], empty, env)
    assert "padim" in ran
    reported = _run([str(bench), "report", "--dataset", "synthetic", "--no-figures"], empty,
                    env)
    assert "| padim" in reported
    assert (empty / "results" / "reports" / "synthetic.md").is_file()
    assert (empty / "results" / "mlflow.db").is_file()  # the user's results: where they ran
