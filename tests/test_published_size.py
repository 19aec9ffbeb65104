"""Issue 12, at the published size: the cache at the source's precision, every method reading
its training images batch by batch, PatchCore in bounded memory, per-run cost figures and
`bench plan`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medad_bench.api import TrainSet, available_methods, get_method, make_config
from medad_bench.cli import cli
from medad_bench.data import fixtures, load_card, pixels, prepare
from medad_bench.data.build import Decoding, decode_item, decode_stored
from medad_bench.data.images import ImageSet, dequantize, quantize
from medad_bench.engine import cost_plan as planning
from medad_bench.engine.resources import MemoryWatch
from medad_bench.methods import patchcore as pc

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import TINY_CARD

    folder = tmp_path_factory.mktemp("published")
    card = TINY_CARD.format(name="tiny", contrast=0.3).replace("n_normal = 40", "n_normal = 96")
    (folder / "tiny.toml").write_text(card)
    return prepare(load_card(str(folder / "tiny.toml")), cache_root=folder / "cache",
                   show_progress=False)


# ------------------------------------------------------------------------------ the cache

def test_cache_keeps_8_bit_pixels_at_a_quarter_of_float32(tiny):
    assert tiny.images.dtype == np.uint8 and tiny.meta["image_dtype"] == "uint8"
    file_bytes = (tiny.folder / "images.npy").stat().st_size
    assert file_bytes < tiny.images.size * 4 / 3.9  # a quarter of float32, plus the header
    train = tiny.train_set()
    assert isinstance(train.normal, ImageSet) and len(train.normal) == 96
    batch = train.normal[np.array([5, 0, 5])]
    assert batch.dtype == np.float32 and batch.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(batch[0], batch[2])
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    # The levels are exactly the stored integers over 255.
    np.testing.assert_array_equal(np.round(batch * 255), train.normal.raw(np.array([5, 0, 5])))


def test_bit_depth_16_gives_uint16_rows_and_another_data_version(tiny, tmp_path):
    text = tiny.card.text.replace('channels = 1', 'channels = 1\nbit_depth = 16')
    (tmp_path / "tiny16.toml").write_text(text.replace('name = "tiny"', 'name = "tiny16"'))
    deep = prepare(load_card(str(tmp_path / "tiny16.toml")), cache_root=tmp_path / "cache",
                   show_progress=False)
    assert deep.images.dtype == np.uint16 and deep.data_version != tiny.data_version
    # Same generator pixels, kept at 16 and 8 bits: one 8-bit level apart at most.
    eight, sixteen = tiny.images_of("test"), deep.images_of("test")
    assert np.abs(eight - sixteen).max() <= 0.5 / 255 + 1e-6


def test_bad_bit_depth_in_a_card_is_one_clear_error(tiny, tmp_path):
    from medad_bench.errors import BenchError

    (tmp_path / "bad.toml").write_text(tiny.card.text.replace("channels = 1",
                                                              "channels = 1\nbit_depth = 12"))
    with pytest.raises(BenchError, match="bit_depth must be 8 or 16"):
        load_card(str(tmp_path / "bad.toml"))


def test_quantize_round_trip_is_within_half_a_level():
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        back = dequantize(quantize(x, np.dtype(dtype)))
        assert back.dtype == np.float32 and np.abs(back - x).max() <= 0.5 / top + 1e-7


def test_image_set_views_join_and_read_in_batches():
    storage = quantize(np.random.default_rng(1).random((10, 1, 4, 4)), np.dtype(np.uint8))
    first, second = ImageSet(storage, [0, 2, 4]), ImageSet(storage, [7, 9])
    joined = first.concat(second)
    assert len(joined) == 5 and joined.shape == (5, 1, 4, 4)
    np.testing.assert_array_equal(np.asarray(joined), dequantize(storage[[0, 2, 4, 7, 9]]))
    assert [len(b) for b in joined.batches(2)] == [2, 2, 1]
    assert len(joined.subset(slice(0, 0))) == 0
    with pytest.raises(ValueError, match="same image store"):
        first.concat(ImageSet(storage.copy(), [1]))


# ------------------------------------------------------------------ reading in batches

class CountingImageSet(ImageSet):
    """Records how many rows each read takes from the store."""

    def __init__(self, storage, rows=None, log=None):
        super().__init__(storage, rows)
        self.log = [] if log is None else log

    def raw(self, key):
        out = super().raw(key)
        self.log.append(1 if np.ndim(out) == 3 else len(out))
        return out

    def subset(self, key):
        return CountingImageSet(self.storage, self.rows[key], self.log)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_reads_its_training_images_batch_by_batch(name, tiny):
    """No method reads a whole training set at once: at the published size set B is 10,031
    images. The largest read is one batch (or a scoring chunk), whatever the set's size."""
    cls = get_method(name)
    config = make_config(cls, "quick", image_size=32, channels=1)
    if hasattr(config, "weights"):
        config = dataclasses.replace(config, weights="random")
    config = dataclasses.replace(config, **cls.calibration_overrides(config, 1))
    log: list[int] = []
    rows_a, rows_b = tiny.rows("train_mixed"), tiny.rows("train_normal")
    train = TrainSet(normal=CountingImageSet(tiny.images, np.sort(rows_b), log),
                     unlabeled=CountingImageSet(tiny.images, np.sort(rows_a), log),
                     selection=tiny.images_of("test") if cls.uses_selection else None,
                     selection_normal_share=0.5 if cls.uses_selection else None,
                     selection_normals=tiny.images_of("val") if cls.uses_selection else None)
    cls(config).fit(train, seed=0, device=CPU)
    assert log, "the method read nothing from its training set"
    largest = max(getattr(config, f, 0) for f in ("batch_size", "score_batch_size"))
    assert max(log) <= max(largest, 64) < len(rows_b)


# ------------------------------------------------------------------- PatchCore, bounded

def test_nearest_in_chunks_equals_the_full_distance_matrix():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(70, 6, generator=generator)
    bank = torch.randn(130, 6, generator=generator)
    full = torch.cdist(queries, bank)
    expected_d, expected_i = full.topk(3, dim=1, largest=False)
    for chunk in (7, 100, 10_000):
        d, i = pc.nearest(queries, bank, 3, chunk)
        torch.testing.assert_close(d, expected_d, atol=1e-4, rtol=1e-4)
        assert torch.equal(i, expected_i)


def test_greedy_coreset_picks_the_farthest_point_each_step():
    embeddings = torch.randn(400, 12, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)  # anomalib's projection draws its signs from torch's global RNG
    chosen = pc.greedy_coreset(embeddings, 25, seed=0, progress=planning_progress())
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    torch.manual_seed(7)
    projection = SparseRandomProjection(eps=0.9, random_state=0)
    projection.fit(embeddings)
    features = projection.transform(embeddings)
    # Reference: the textbook loop on explicit distances, from the same first centre.
    picked = [int(chosen[0])]
    nearest = torch.linalg.norm(features - features[picked[0]], dim=1)
    for _ in range(24):
        picked.append(int(torch.argmax(nearest)))
        nearest = torch.minimum(nearest, torch.linalg.norm(features - features[picked[-1]],
                                                           dim=1))
    assert chosen.tolist() == picked and len(set(picked)) == 25


def planning_progress():
    from medad_bench.api import Progress

    return Progress()


def patchcore(tiny, **overrides):
    cls = get_method("patchcore")
    config = make_config(cls, "quick", image_size=32, channels=1,
                         overrides={"weights": "random", **overrides})
    method = cls(config)
    method.fit(tiny.train_set(), seed=0, device=CPU)
    return method


def test_patchcore_scoring_equals_anomalib_forward_when_nothing_is_dropped(tiny):
    from medad_bench.methods._anomalib import backbone_input

    method = patchcore(tiny, max_patches=None, distance_chunk=500)
    assert method.run_info["patches_kept"] == method.run_info["patches_total"]
    images = tiny.images_of("test")
    ours = method.predict(images)
    with torch.inference_mode():
        theirs = method.model(backbone_input(images, 32, CPU))
    np.testing.assert_allclose(ours.scores, theirs.pred_score.reshape(-1).numpy(), atol=2e-3,
                               rtol=1e-3)
    np.testing.assert_allclose(ours.maps, theirs.anomaly_map[:, 0].numpy(), atol=2e-3, rtol=1e-3)


def test_patchcore_holds_at_most_max_patches_and_says_so(tiny):
    method = patchcore(tiny, max_patches=300)
    info = method.run_info
    assert info["patches_total"] == 96 * info["patches_per_image"] > 300
    assert info["patches_kept"] == 96 * (300 // 96) <= 300
    # The bank is the exact algorithm's size (10% of all patches), drawn from those held.
    assert len(method.model.memory_bank) == int(info["patches_total"] * 0.1) < 300
    other = patchcore(tiny, max_patches=300)
    np.testing.assert_array_equal(method.score(tiny.images_of("test")),
                                  other.score(tiny.images_of("test")))


def test_feature_methods_embed_at_most_max_train_images(tiny):
    method = patchcore(tiny, max_train_images=20)
    assert method.run_info["patches_total"] == 20 * method.run_info["patches_per_image"]
    assert method.run_info["train_images_available"] == 96
    assert any("random 20 of the 96" in w for w in method.warnings)


# --------------------------------------------------------------------- fast 8-bit decoding

def test_8_bit_fast_path_matches_the_float_path_within_one_level(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(tmp_path / "deep.png")
    decoding = Decoding(size=32, channels=1, drop_top_fraction=0.08)
    fast, native = decode_stored((str(tmp_path / "gray.png"), "image"), decoding)
    slow, _ = decode_item((str(tmp_path / "gray.png"), "image"), decoding)
    assert native == (90, 70) and fast[0][1].dtype == np.uint8
    diff = np.abs(fast[0][1].astype(int) - quantize(slow[0][1], np.dtype(np.uint8)))
    assert diff.max() <= 1
    # A 16-bit PNG is not for the 8-bit path: the float path reads all its bits.
    assert pixels.read_square_8bit(tmp_path / "deep.png", size=32, channels=1) is None


def test_covidx_fixture_of_the_published_size_has_the_published_counts(tmp_path):
    assert fixtures.covidx_composition(15_864)[:2] == (15_464, 400)
    n_train, n_test, share = fixtures.covidx_composition(80)
    fixtures.write_covidx(tmp_path, n_train=n_train, n_test=n_test, size=16,
                          train_positive_share=share, exact_shares=True)
    labels = [line.split()[2] for line in (tmp_path / "train.txt").read_text().splitlines()]
    assert labels.count("positive") == round(share * n_train)
    tests = (tmp_path / "test.txt").read_text().splitlines()
    assert sum(line.split()[2] == "positive" for line in tests) == round(n_test / 2)


# ---------------------------------------------------------------------- cost and plan

def test_memory_watch_sees_a_large_allocation_and_resets_between_runs():
    watch = MemoryWatch(CPU).start()
    before = watch.peak_host_bytes()
    block = np.ones(50 * 2**20 // 8)  # 50 MB, touched
    grown = watch.peak_host_bytes()
    assert grown - before >= 40 * 2**20
    del block
    watch.start()
    if watch.resettable:  # Linux: the next run's peak does not inherit this one's
        assert watch.peak_host_bytes() < grown
    assert watch.process_peak_bytes() >= grown - 4 * 2**20  # kernel counters lag by pages


def test_estimate_multiplies_measured_rates_by_the_run_work():
    cls = get_method("alocc")
    config = make_config(cls, "quick", image_size=32, channels=1)
    cost = planning.MethodCost("alocc", "quick", 32, 1, fixed_seconds=2.0,
                               seconds_per_train_image=0.001, seconds_per_score_image=0.01,
                               peak_host_mb=900.0, peak_gpu_mb=None)
    counts = planning.SplitCounts(10_031, 5_233, 200, 200)
    run = planning.estimate(cls, config, cost, counts)
    assert run.fit_seconds == pytest.approx(2.0 + cls.images_seen(config) * 0.001)
    assert run.score_seconds == pytest.approx(400 * 0.01)
    assert run.peak_host_mb == 900.0 and run.peak_gpu_mb is None


def test_patchcore_plan_grows_with_the_patches_kept_up_to_the_budget():
    cls = get_method("patchcore")
    measured = {"patches_per_image": 1024.0, "embedding_dims": 152.0,
                "seconds_per_coreset_term": 1e-9}
    config = make_config(cls, "quick", image_size=256, channels=1)
    small = cls.plan_extra(config, 50, measured)
    large = cls.plan_extra(config, 10_031, measured)
    assert small[0] == pytest.approx(5_120 * 51_200 * 1e-9)
    assert large[0] == pytest.approx(10_000 * 100_000 * 1e-9)  # bounded by max_patches
    assert large[1] == 100_000 * (152 + pc.johnson_lindenstrauss_dims(100_000)) * 4


def test_covidx_card_states_its_protocol_counts():
    counts = planning.protocol_counts(load_card("covidx"))
    assert counts == planning.SplitCounts(10_031, 5_233, 200, 200)


def test_plan_calibrates_then_estimates_and_says_what_is_missing(tmp_path):
    costs = tmp_path / "costs.json"
    runner = CliRunner()
    missing = runner.invoke(cli, ["plan", "--methods", "alocc", "--dataset", "tiny",
                                  "--costs", str(costs)])
    assert missing.exit_code != 0 and "--calibrate" in missing.output
    done = runner.invoke(cli, ["plan", "--methods", "alocc,padim", "--dataset", "tiny",
                               "--seeds", "0,1", "--calibrate", "--costs", str(costs)])
    assert done.exit_code == 0, done.output
    table = json.loads(costs.read_text())["costs"]
    assert set(table) == {"alocc/quick/32px/1ch", "padim/quick/32px/1ch"}
    assert all(row["seconds_per_train_image"] > 0 for row in table.values())
    assert "grid: 4 runs" in done.output and "alocc" in done.output
    again = runner.invoke(cli, ["plan", "--methods", "alocc", "--dataset", "tiny",
                                "--costs", str(costs)])
    assert again.exit_code == 0 and "grid: 1 runs" in again.output


def test_cuda_plan_without_a_gpu_needs_a_measured_table():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(cli, ["plan", "--methods", "padim", "--dataset", "tiny",
                                      "--device", "cuda"])
    assert result.exit_code != 0 and "--costs FILE" in result.output
