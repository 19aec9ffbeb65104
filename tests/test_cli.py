"""The `bench` command end to end: real runs on a tiny synthetic set, a real SQLite MLflow
store, the report and the regression gate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from medad_bench.cli import cli

FAST = ["--dataset", "tiny", "--no-progress", "--weights", "padim=random",
        "--weights", "patchcore=random"]


def bench(*args, ok=True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def two_seed_store(tracking_uri):
    bench("run", "--methods", "padim,patchcore", "--seeds", "0,1", *FAST,
          "--tracking-uri", tracking_uri)
    return tracking_uri


def finished(uri):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench/tiny")
    return client, client.search_runs([experiment.experiment_id],
                                      filter_string="attributes.status = 'FINISHED'")


def test_run_logs_one_complete_mlflow_run_per_method_and_seed(two_seed_store, tmp_path):
    client, runs = finished(two_seed_store)
    assert sorted((r.data.params["method"], r.data.params["seed"]) for r in runs) == [
        ("padim", "0"), ("padim", "1"), ("patchcore", "0"), ("patchcore", "1")]
    run = next(r for r in runs if r.data.params["method"] == "padim")
    params, metric_values = run.data.params, run.data.metrics
    assert len(params["split_hash"]) == 64
    assert params["config.n_features"] == "100" and params["config.image_size"] == "32"
    assert params["backbone_weights"] == "random (requested)"
    assert params["weights.identity"] == "random" and params["identity.weights"] == "random"
    assert params["identity.device_type"] == "cpu" and params["identity.torch_threads"]
    assert params["identity.code_version"].startswith("code-")
    assert params["identity.version.timm"] and len(params["run_identity"]) == 16
    assert params["trained_on"] == "normal" and params["n_train_normal"] == "40"
    assert params["version.torch"] and params["version.anomalib"] and params["git_commit"]
    for name in ("auc", "precision", "recall", "specificity", "f1", "accuracy", "threshold"):
        assert name in metric_values
    # Cost of the run: a Python process with torch holds well over 100 MB; 40 images embedded.
    assert 100 < metric_values["peak_host_mb_fit"] <= metric_values["peak_host_mb"] < 8000
    assert metric_values["train_images_per_second"] == pytest.approx(
        40 / metric_values["fit_seconds"], rel=1e-6)
    assert "peak_gpu_mb" not in metric_values  # CPU run
    patchcore = next(r for r in runs if r.data.params["method"] == "patchcore").data.params
    assert patchcore["config.max_patches"] == "100000"
    assert int(patchcore["patches_kept"]) == 40 * int(patchcore["patches_per_image"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"scores.csv", "roc.csv", "config.json"} <= artifacts
    scores = pd.read_csv(client.download_artifacts(run.info.run_id, "scores.csv", str(tmp_path)))
    assert list(scores.columns) == ["image_id", "split", "subject_id", "label", "score"]
    assert scores.split.value_counts().to_dict() == {"test": 30, "val": 20}
    from sklearn.metrics import roc_auc_score

    test = scores[scores.split == "test"]
    assert roc_auc_score(test.label, test.score) == pytest.approx(metric_values["auc"])


def test_the_same_seed_twice_gives_the_same_auc(tracking_uri):
    bench("run", "--methods", "padim,patchcore", "--seeds", "5", *FAST,
          "--tracking-uri", tracking_uri)
    # --force: the same run key would otherwise be skipped as finished.
    bench("run", "--methods", "padim,patchcore", "--seeds", "5", *FAST, "--force",
          "--tracking-uri", tracking_uri)
    _, runs = finished(tracking_uri)
    by_method = {}
    for run in runs:
        by_method.setdefault(run.data.params["method"], []).append(run.data.metrics["auc"])
    assert set(by_method) == {"padim", "patchcore"}
    for aucs in by_method.values():
        assert len(aucs) == 2 and aucs[0] == aucs[1]


def test_report_markdown_and_latex(two_seed_store, isolated):
    result = bench("report", "--dataset", "tiny", "--tracking-uri", two_seed_store)
    text = (isolated / "results" / "reports" / "tiny.md").read_text()
    assert text.strip() == result.output.split("Written to")[0].strip()
    _, runs = finished(two_seed_store)
    assert runs[0].data.params["split_hash"] in text
    assert "2 seeds (0, 1)" in text
    rows = [line for line in text.splitlines() if line.startswith("| padim")
            or line.startswith("| patchcore")]
    assert len(rows) == 2 and all(" ± " in row for row in rows)
    # Exactly one bold cell per column (ties aside): six metric columns.
    assert 6 <= text.count("**") // 2 - 1 <= 12  # minus the caption's bold "Table 1."

    latex_path = isolated / "table.tex"
    bench("report", "--dataset", "tiny", "--format", "latex", "--out", str(latex_path),
          "--tracking-uri", two_seed_store)
    latex = latex_path.read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\bfseries", r"$\pm$"):
        assert rule in latex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: LaTeX compile check skipped")
    document = isolated / "doc.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                        f"{latex}\n\\end{{document}}\n")
    compiled = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                               document.name], cwd=isolated, capture_output=True, text=True,
                              timeout=120)
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    assert (isolated / "doc.pdf").stat().st_size > 1000


def _check(reference_path, reference, uri):
    reference_path.write_text(json.dumps(reference))
    return bench("check", "--dataset", "tiny", "--against", str(reference_path),
                 "--tracking-uri", uri, ok=False)


def test_check_passes_on_its_own_reference_and_fails_on_any_tampering(two_seed_store, isolated):
    path = isolated / "ref.json"
    bench("check", "--dataset", "tiny", "--update", "--against", str(path),
          "--tracking-uri", two_seed_store)
    recorded = json.loads(path.read_text())
    assert set(recorded["methods"]) == {"padim", "patchcore"}
    assert set(recorded["methods"]["padim"]["auc_by_seed"]) == {"0", "1"}
    assert recorded["methods"]["padim"]["weights"] == "random"
    passed = _check(path, recorded, two_seed_store)
    assert passed.exit_code == 0 and "within 0.02" in passed.output, passed.output

    def tampered(change):
        copy = json.loads(json.dumps(recorded))
        change(copy)
        return _check(path, copy, two_seed_store)

    # One seed up and the other down by the same amount: the mean is unchanged, both fail.
    def up_and_down(ref):
        ref["methods"]["padim"]["auc_by_seed"]["0"] -= 0.05
        ref["methods"]["padim"]["auc_by_seed"]["1"] += 0.05
    both = tampered(up_and_down)
    assert both.exit_code == 1
    assert "padim seed 0: AUC" in both.output and "rose 0.0500 above" in both.output
    assert "padim seed 1: AUC" in both.output and "fell 0.0500 below" in both.output
    assert "Intended? Update the reference" in both.output

    missing_seed = tampered(lambda ref: ref["methods"]["patchcore"]["auc_by_seed"]
                            .update({"2": 0.5}))
    assert missing_seed.exit_code == 1 and "patchcore: no finished run for seed(s) [2]" \
        in missing_seed.output

    missing_method = tampered(lambda ref: ref["methods"].update(
        {"alad": {"auc_by_seed": {"0": 0.6}, "weights": ""}}))
    assert missing_method.exit_code == 1
    assert "alad: no finished run for seed(s) [0]" in missing_method.output

    other_weights = tampered(lambda ref: ref["methods"]["padim"].update(
        weights="packaged:efficientnet-lite0-57934424.pth:sha256=5793"))
    assert other_weights.exit_code == 1
    assert "padim: loaded weights random, the reference packaged:" in other_weights.output

    other_data = tampered(lambda ref: ref.update(data_version="0000000000000000"))
    assert other_data.exit_code == 1 and "the images changed" in other_data.output


def test_tracking_uri_comes_from_the_environment(tracking_uri, monkeypatch, isolated):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    bench("run", "--methods", "padim", *FAST[:-2])
    assert len(finished(tracking_uri)[1]) == 1
    bench("report", "--dataset", "tiny")
    assert not (isolated / "results" / "mlflow.db").exists()


@pytest.mark.parametrize("args, code, needle", [
    (["run", "--methods", "pdim"], 2,
     "Valid methods: alad, alocc, anomalypro, autoencoder, "
     "brainomaly, dae, fanogan, ganomaly, padim, patchcore, reverse_distillation, stfpm, vae"),
    (["run", "--dataset", "nope"], 2, "Valid datasets:"),
    (["run", "--seeds", "0,x"], 2, "--seeds"),
    (["run", "--profile", "fast"], 2, "'fast' is not one of"),
    (["run", "--device", "tpu"], 2, "--device"),
    (["run", "--methods", "padim", "--set", "padim.colour=1", "--dataset", "tiny"], 2,
     "no setting colour"),
    (["run", "--methods", "padim", "--dataset", "covidx", "--data-root", "nowhere"], 1,
     "data root nowhere does not exist"),
    (["report", "--dataset", "tiny"], 1, "no finished runs"),
    (["run", "--methods", "padim", "--select", "last", "--dataset", "tiny"], 2,
     "--select applies to methods that select"),
    (["check", "--dataset", "tiny", "--against", "missing.json"], 1, "does not exist"),
    (["run", "--methods", "anomalypro", "--set", "anomalypro.iterations=2", "--dataset",
      "tiny"], 2, "anomalypro.iterations=2 make an invalid config: decay_iterations must be "
                  "within [0, iterations]. Change the --set values."),
    (["run", "--methods", "alad,padim", "--dataset", "tiny16"], 2,
     "padim needs images of at least 17 px (anomalib blurs its anomaly map with a 33-pixel "
     "Gaussian kernel); the dataset's image_size is 16. Raise image_size in the dataset card, "
     "or leave padim out of --methods."),
    (["run", "--methods", "ganomaly", "--dataset", "tiny16"], 2,
     "ganomaly needs images of at least 20 px"),
])
def test_bad_input_gives_one_clear_message(args, code, needle, tracking_uri, isolated):
    tiny = (isolated / "cards" / "tiny.toml").read_text()
    (isolated / "cards" / "tiny16.toml").write_text(
        tiny.replace('name = "tiny"', 'name = "tiny16"').replace("image_size = 32",
                                                                 "image_size = 16"))
    result = bench(*args, "--tracking-uri", tracking_uri, ok=False)
    assert result.exit_code == code, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_console_script_exit_code_and_help():
    script = Path(sys.executable).parent / "bench"
    done = subprocess.run([str(script), "run", "--methods", "nope"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Valid methods" in done.stderr
    helped = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--tracking-uri" in helped.stdout


def test_list_describes_methods_and_datasets():
    output = bench("list").output
    for needle in ("padim", "patchcore", "trains on: normal", "quick, full", "synthetic-easy",
                   "tiny", "covidx"):
        assert needle in output


def test_a_card_given_by_path_is_the_same_dataset_to_every_command(tmp_path, isolated):
    import numpy as np
    from PIL import Image

    root = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for name, level in (("normal", 70), ("abnormal", 170)):
        (root / name).mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(rng.normal(level, 25, (40, 36)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    # Outside every card folder, and named otherwise than its file: only the path finds it.
    card = tmp_path / "my" / "cards" / "brain.toml"
    card.parent.mkdir(parents=True)
    card.write_text(f'name = "scans"\ndescription = "a folder of PNGs"\nformat = "folder"\n'
                    f'channels = 1\nimage_size = 32\ndefault_data_root = "{root.as_posix()}"\n')
    uri = f"sqlite:///{tmp_path / 'cards.db'}"
    path = str(card.relative_to(isolated))
    ran = bench("run", "--methods", "padim", "--dataset", path, "--no-progress",
                "--weights", "padim=random", "--tracking-uri", uri)
    assert f"Table: bench report --dataset {path}" in ran.output
    by_path = bench("report", "--dataset", path, "--out", "-", "--tracking-uri", uri)
    by_name = bench("report", "--dataset", "scans", "--out", "-", "--tracking-uri", uri)
    assert "| padim" in by_path.output and "on scans" in by_path.output
    assert by_name.output == by_path.output
    written = bench("report", "--dataset", path, "--no-figures", "--no-log",
                    "--tracking-uri", uri)
    assert "results/reports/scans.md" in written.output
    bench("check", "--dataset", path, "--update", "--tracking-uri", uri)
    assert json.loads((isolated / "results/reference/scans.json").read_text())["dataset"] \
        == "scans"
    checked = bench("check", "--dataset", path, "--tracking-uri", uri)
    assert "All 1 seeds of 1 methods within" in checked.output
    assert "scans" in bench("data", "info", "--dataset", path).output


def test_perf_times_anomalypro_in_the_suite_against_a_bare_loop():
    """`bench perf` trains the same networks both ways and reports both rates and their
    ratio (the values themselves are machine noise; benchmarks, not tests, judge them)."""
    result = bench("perf", "--dataset", "tiny", "--iterations", "4", "--repeats", "1",
                   "--threads", "1")
    assert "repeat 1/1: train suite" in result.output
    medians = {line.split()[0]: float(line.split()[1]) for line in
               result.output.split("medians:")[1].strip().splitlines()}
    assert set(medians) == {"suite_train_images_per_s", "bare_train_images_per_s",
                            "train_ratio", "suite_score_images_per_s",
                            "bare_score_images_per_s", "score_ratio"}
    assert all(value > 0 for value in medians.values())
    assert medians["train_ratio"] == pytest.approx(
        medians["suite_train_images_per_s"] / medians["bare_train_images_per_s"], abs=2e-3)


def test_perf_methods_tables_the_engine_overhead_of_each_method():
    """One row per method: a trained method and a feature method, each against its bare loop."""
    result = bench("perf", "--methods", "autoencoder,padim", "--dataset", "tiny",
                   "--budget-scale", "0.01", "--repeats", "1", "--threads", "1")
    table = result.output.split("medians")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["autoencoder", "padim"]
    header = [cell.strip() for cell in table.splitlines()[1].split("|")[2:-1]]
    for row in rows:
        cells = dict(zip(header, (float(cell) for cell in row.split("|")[2:-1]), strict=True))
        # Only a trained method selects a checkpoint; every other figure is a time or a ratio.
        selecting, bare_selecting = cells.pop("selection_s"), cells.pop("bare_selection_s")
        assert (selecting > 0) == (bare_selecting > 0) == row.startswith("| autoencoder"), row
        assert all(value > 0 for value in cells.values()), row
        # The bare side with the protocol's scoring added takes longer than without it.
        assert cells["fit_ratio_same_scoring"] == pytest.approx(
            (cells["bare_fit_s"] + bare_selecting) / cells["suite_fit_s"], rel=0.2), row
        assert (cells["fit_ratio_same_scoring"] > cells["fit_ratio"]) == (bare_selecting > 0)
    assert "autoencoder repeat 1/1: fit suite" in result.output
    bad = bench("perf", "--methods", "nosuch", "--dataset", "tiny", ok=False)
    assert bad.exit_code != 0 and "nosuch" in bad.output
