"""A gate that holds on any machine: runs pin their torch threads, and `bench check` refuses to
judge AUCs made in another environment (threads, torch version, device) than the reference's."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.report.table import select_runs


def bench(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_pinned_threads_are_recorded_and_another_count_is_not_comparable(tracking_uri,
                                                                         isolated):
    before = torch.get_num_threads()
    try:
        bench("run", "--dataset", "tiny", "--methods", "padim", "--weights", "padim=random",
              "--threads", "1", "--no-progress", "--tracking-uri", tracking_uri)
    finally:
        torch.set_num_threads(before)
    runs = select_runs(tracking_uri, "tiny", statistics=False).runs
    assert runs.torch_threads.tolist() == ["1"]
    reference = isolated / "reference.json"
    bench("check", "--dataset", "tiny", "--update", "--against", str(reference),
          "--tracking-uri", tracking_uri)
    recorded = json.loads(reference.read_text())
    assert recorded["identity"]["torch_threads"] == "1"
    assert recorded["identity"]["device"] == "cpu"
    bench("check", "--dataset", "tiny", "--against", str(reference), "--tracking-uri",
          tracking_uri)
    # The same runs against a reference recorded with 2 threads: no rise or fall is claimed.
    recorded["identity"]["torch_threads"] = "2"
    recorded["methods"]["padim"]["auc_by_seed"]["0"] += 0.3
    reference.write_text(json.dumps(recorded))
    result = bench("check", "--dataset", "tiny", "--against", str(reference),
                   "--tracking-uri", tracking_uri, code=1)
    assert ("not comparable: the reference was recorded with torch threads 2, the runs were "
            "made with torch threads 1") in result.output
    assert "--threads 2" in result.output
    assert "NOT COMPARABLE" in result.output and "FELL" not in result.output


def test_threads_and_ray_do_not_mix():
    result = bench("run", "--dataset", "tiny", "--methods", "padim", "--threads", "1",
                   "--executor", "ray", code=2)
    assert "--threads applies to --executor local" in result.output


def test_a_reference_from_another_cpu_model_is_not_judged_and_this_cpus_own_is_used(
        tracking_uri, isolated):
    from medad_bench.check.gate import cpu_reference_path
    from medad_bench.tracking import cpu_model

    bench("run", "--dataset", "tiny", "--methods", "padim", "--weights", "padim=random",
          "--no-progress", "--tracking-uri", tracking_uri)
    runs = select_runs(tracking_uri, "tiny", statistics=False).runs
    assert runs.cpu.tolist() == [cpu_model()]
    main = isolated / "tiny.json"
    bench("check", "--dataset", "tiny", "--update", "--against", str(main),
          "--tracking-uri", tracking_uri)
    recorded = json.loads(main.read_text())
    assert recorded["identity"]["cpu"] == cpu_model()
    # The main reference made on another CPU model, with another number: not judged, and the
    # message names the file that would hold this CPU's own numbers.
    recorded["identity"]["cpu"] = "OtherVendor family 1 model 2 AVX2"
    recorded["methods"]["padim"]["auc_by_seed"]["0"] += 0.3
    main.write_text(json.dumps(recorded))
    own = cpu_reference_path(main, cpu_model())
    result = bench("check", "--dataset", "tiny", "--against", str(main), "--tracking-uri",
                   tracking_uri, code=1)
    assert "NOT COMPARABLE" in result.output and "FELL" not in result.output
    assert f"--update --against {own}" in result.output
    bench("check", "--dataset", "tiny", "--update", "--against", str(own),
          "--tracking-uri", tracking_uri)
    passed = bench("check", "--dataset", "tiny", "--against", str(main), "--tracking-uri",
                   tracking_uri)
    assert f"of {own}; same weights" in passed.output
    # A reference that does not record its CPU (recorded before it was) is still judged, and a
    # fall says which CPU file would hold this machine's numbers.
    own.unlink()
    del recorded["identity"]["cpu"]
    main.write_text(json.dumps(recorded))
    result = bench("check", "--dataset", "tiny", "--against", str(main), "--tracking-uri",
                   tracking_uri, code=1)
    assert "FELL" in result.output or "ROSE" in result.output
    assert "does not record the CPU it was made on" in result.output
