import sys
import textwrap

import numpy as np
import pytest

from medad_bench.api import TrainSet, available_methods, get_method, make_config, parse_method_list
from medad_bench.api import contract as api
from medad_bench.errors import UsageError


def test_builtin_methods_are_registered_with_both_profiles():
    methods = available_methods()
    assert {"padim", "patchcore"} <= set(methods)
    for cls in methods.values():
        assert cls.description and set(cls.uses) <= {"normal", "unlabeled"}
        for profile in api.PROFILES:
            config = make_config(cls, profile, image_size=64, channels=1)
            assert isinstance(config, cls.Config)


def test_quick_profile_uses_the_dataset_size_and_full_the_published_one():
    padim = get_method("padim")
    assert make_config(padim, "quick", image_size=48, channels=1).image_size == 48
    assert make_config(padim, "full", image_size=48, channels=1).image_size == 256


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(UsageError) as info:
        get_method("padin")
    assert "padim" in str(info.value) and "patchcore" in str(info.value)
    assert info.value.exit_code == 2


def test_method_lists_expand_all_and_validate_names():
    assert parse_method_list("all") == list(available_methods())
    assert parse_method_list("patchcore, padim,padim") == ["patchcore", "padim"]
    with pytest.raises(UsageError, match="Valid methods"):
        parse_method_list("padim,nope")
    with pytest.raises(UsageError, match="empty"):
        parse_method_list(" , ")


def test_config_overrides_are_checked():
    padim = get_method("padim")
    config = make_config(padim, "quick", image_size=32, channels=1, overrides={"n_features": 50})
    assert config.n_features == 50
    with pytest.raises(UsageError, match="no setting colour"):
        make_config(padim, "quick", image_size=32, channels=1, overrides={"colour": 1})
    with pytest.raises(UsageError, match="unknown profile"):
        make_config(padim, "medium", image_size=32, channels=1)


def test_trainset_rejects_flat_arrays():
    with pytest.raises(ValueError, match="N, C, H, W"):
        TrainSet(normal=np.zeros((4, 32, 32)), unlabeled=np.zeros((0, 1, 32, 32)))


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """A method from another installed package, announced through the entry-point group."""
    (tmp_path / "bench_plugin_demo.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import numpy as np
        from medad_bench.api import Method

        @dataclass(frozen=True)
        class Cfg:
            offset: float = 0.0

        class MeanIntensity(Method):
            name = "mean-intensity"
            description = "mean pixel value (a plug-in for tests)"
            Config = Cfg

            @classmethod
            def profile_config(cls, profile, *, image_size, channels):
                return Cfg()

            def fit(self, train, *, seed, device, progress=None):
                pass

            def score(self, images):
                return images.mean(axis=(1, 2, 3)) + self.config.offset
    '''))
    dist = tmp_path / "bench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-plugin-demo\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[medad_bench.methods]\nmean-intensity = bench_plugin_demo:MeanIntensity\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(api, "_DISCOVERED", False)
    monkeypatch.setattr(api, "_REGISTRY", dict(api._REGISTRY))
    try:
        cls = get_method("mean-intensity")
        assert cls.__module__ == "bench_plugin_demo"
        assert "padim" in available_methods()
    finally:
        sys.modules.pop("bench_plugin_demo", None)
