"""MedIAnomaly's reconstruction baselines (methods/autoencoder.py, vae.py, dae.py): the
published settings and architecture, the VAE's loss as written, the DAE's corruption of its
training input only, the map as the per-pixel error, the quick budget and bad settings.
The contract itself is checked by tests/test_conformance.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from medad_bench.api import TrainSet, make_config
from medad_bench.api.conformance import add_lesions, smooth_images
from medad_bench.errors import UsageError
from medad_bench.methods._autoencoder import ConvAutoencoder, gaussian_kl, quick_size
from medad_bench.methods._budget import QUICK_IMAGES_SEEN
from medad_bench.methods._gan import to_model_input
from medad_bench.methods.autoencoder import Autoencoder
from medad_bench.methods.dae import Dae, DaeConfig, UNet, coarse_noise, group_count
from medad_bench.methods.vae import Vae

CPU = torch.device("cpu")
METHODS = [Autoencoder, Vae, Dae]


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_set(n: int = 16, size: int = 32, seed: int = 0) -> TrainSet:
    rng = np.random.default_rng(seed)
    return TrainSet(normal=smooth_images(n, size, 1, rng), unlabeled=smooth_images(4, size, 1, rng))


def fitted(cls: type, size: int = 32, iterations: int = 2, **overrides: object):
    config = make_config(cls, "quick", image_size=size, channels=1,
                         overrides={"iterations": iterations, "batch_size": 8, **overrides})
    return cls(config).fit(train_set(size=size), seed=0, device=CPU)


# ----------------------------------------------------------------------------- settings


def test_full_profiles_are_medianomalys_settings() -> None:
    """reconstruction/options.py, train_eval.sh, utils/losses.py, utils/dae_worker.py."""
    common = {"lr": 1e-3, "weight_decay": 0.0, "epochs": 250, "iterations": 0}
    ae = Autoencoder.profile_config("full", image_size=256, channels=1)
    assert dataclasses.asdict(ae) | common == dataclasses.asdict(ae)
    assert (ae.image_size, ae.batch_size, ae.base_width, ae.hidden, ae.latent) == (
        64, 64, 16, 1024, 16)
    vae = Vae.profile_config("full", image_size=256, channels=1)
    assert dataclasses.asdict(vae) == {**dataclasses.asdict(ae), "kl_weight": 0.005}
    dae = Dae.profile_config("full", image_size=256, channels=1)
    assert dataclasses.asdict(dae) | common == dataclasses.asdict(dae)
    assert (dae.image_size, dae.batch_size, dae.base_width) == (128, 16, 64)
    assert (dae.noise_std, dae.noise_resolution, dae.noise_center, dae.noise_foreground) == (
        0.2, 16, True, False)


def test_the_ae_is_medianomalys_network() -> None:
    """Encoder 16-32-64-64 (4x4 stride-2 convs without bias + BN), 1024-unit bottleneck to 16,
    mirrored decoder with a linear output layer; the count is summed layer by layer by hand."""
    net = ConvAutoencoder(1, 64)
    convs = 1 * 16 * 16 + 16 * 32 * 16 + 32 * 64 * 16 + 64 * 64 * 16  # each way
    norms = 2 * (16 + 32 + 64 + 64) + 2 * (64 + 32 + 16)
    dense = ((1024 * 1024 + 1024) + 2 * 1024 + (1024 * 16 + 16)  # 1024 -> 1024 -> 16
             + (16 * 1024 + 1024) + 2 * 1024 + (1024 * 1024 + 1024))  # 16 -> 1024 -> 1024
    assert params(net) == 2 * convs + norms + dense == 2_351_184
    assert net.encoder(torch.zeros(2, 1, 64, 64)).shape == (2, 64, 4, 4)
    last = net.decoder[-1]
    assert len(last) == 1 and isinstance(last[0], torch.nn.ConvTranspose2d)  # no BN / ReLU
    vae = ConvAutoencoder(1, 64, code_factor=2)  # the encoder's last layer emits mu, log_var
    assert params(vae) - params(net) == 1024 * 16 + 16
    assert vae.encode(torch.zeros(2, 1, 64, 64)).shape == (2, 32)


def test_the_dae_is_medianomalys_unet() -> None:
    """Five levels 64-1024, GroupNorm with get_groups' group counts, a 1x1 output conv."""
    net = UNet(1)
    assert [block[1].out_channels for block in net.down] == [64, 128, 256, 512, 1024]
    assert [block[3].num_groups for block in net.down] == [8, 16, 16, 32, 32]
    assert [group_count(c) for c in (4, 12, 1024)] == [2, 4, 32]
    assert net.last.kernel_size == (1, 1)
    out = UNet(2, base_width=4)(torch.zeros(3, 2, 32, 32))
    assert out.shape == (3, 2, 32, 32)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_quick_profile_spends_the_suites_budget(cls: type) -> None:
    config = cls.profile_config("quick", image_size=64, channels=1)
    seen = cls.images_seen(config)
    assert QUICK_IMAGES_SEEN - config.batch_size < seen <= QUICK_IMAGES_SEEN
    assert config.image_size == 32
    assert cls.images_seen(cls.profile_config("full", image_size=64, channels=1)) is None


def test_epoch_schedules_count_whole_batches() -> None:
    method = Autoencoder(dataclasses.replace(Autoencoder.Config(), epochs=3))
    assert method.total_steps(train_set(n=150)) == 3 * (150 // 64)
    assert method.total_steps(train_set(n=10)) == 3  # one (smaller) batch per epoch


def test_quick_size_is_a_multiple_of_16() -> None:
    assert [quick_size(s) for s in (8, 20, 32, 50, 64, 256)] == [16, 16, 32, 32, 32, 32]


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_a_size_the_networks_cannot_halve_four_times_is_refused(cls: type) -> None:
    with pytest.raises(UsageError, match=r"image_size=40 make an invalid config.*multiple "
                                         r"of 16.*--set"):
        make_config(cls, "quick", image_size=64, channels=1, overrides={"image_size": 40})


# ----------------------------------------------------------------------------- the VAE


def test_gaussian_kl_is_medianomalys_formula() -> None:
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # -0.5 (1 + lv - mu^2 - e^lv) per dimension: 0.5 and 3.5 - ln 2; averaged, not summed.
    expected = torch.tensor([(0.5 + 3.5 - math.log(2.0)) / 2, 0.0])
    torch.testing.assert_close(gaussian_kl(mu, log_var), expected)


def test_vae_loss_is_reconstruction_plus_weighted_kl_of_a_sample() -> None:
    vae = fitted(Vae)
    vae.net.train()
    x = to_model_input(train_set().normal[:8], CPU, 32)
    state = vae.noise.get_state()
    loss, parts = vae._loss(x)
    vae.noise.set_state(state)  # the same eps, drawn again by hand
    mu, log_var = vae.net.encode(x).chunk(2, dim=1)
    eps = torch.randn(mu.shape, generator=vae.noise)
    reconstruction = F.mse_loss(vae.net.decode(mu + eps * torch.exp(0.5 * log_var)), x)
    kl = gaussian_kl(mu, log_var).mean()
    torch.testing.assert_close(loss, reconstruction + 0.005 * kl)
    torch.testing.assert_close(parts["kl"], kl)
    assert kl.item() > 0
    # Training samples z (two draws differ); prediction decodes mu (repeats exactly).
    assert not torch.equal(vae._loss(x)[0], vae._loss(x)[0])
    images = train_set(seed=1).normal
    np.testing.assert_array_equal(vae.score(images), vae.score(images))


# ----------------------------------------------------------------------------- the DAE


def test_dae_noise_is_coarse_centred_and_one_shift_per_batch() -> None:
    x = torch.zeros(64, 1, 64, 64)
    plain = coarse_noise(x, torch.Generator().manual_seed(0),
                         DaeConfig(noise_center=False))
    # A 16 x 16 grid upsampled to 64 px: neighbours differ by about a quarter of a grid step
    # (white noise: by sqrt(2) times its std).
    step = (plain[..., 1:] - plain[..., :-1]).std() / plain.std()
    assert float(step) < 0.6
    assert abs(float(plain.mean())) < 0.01 and 0.1 < float(plain.std()) < 0.2
    centred = coarse_noise(x, torch.Generator().manual_seed(0), DaeConfig())
    torch.testing.assert_close(centred, (plain - 0.5) * 2)  # MedIAnomaly's (ns - 0.5) * 2
    # One roll for the whole batch: the interpolation keeps nearly the full std near the grid
    # points and halves it between them, at the same (shifted) places in every image, so the
    # std over images varies from pixel to pixel; a roll per image would even it out.
    spread = plain.std(dim=0)[0]
    assert float(spread.max()) > 1.5 * float(spread.min())


def test_dae_noise_only_on_the_foreground_when_asked() -> None:
    x = torch.full((4, 1, 32, 32), -1.0)
    x[:, :, 8:24, 8:24] = 0.5
    noise = coarse_noise(x, torch.Generator().manual_seed(0),
                         DaeConfig(noise_foreground=True, noise_center=False))
    assert torch.all(noise[:, :, :8] == 0) and torch.all(noise[:, :, 8:24, 8:24] != 0)


def test_dae_corrupts_its_training_input_and_not_its_test_input() -> None:
    dae = fitted(Dae)
    seen: list[torch.Tensor] = []
    dae.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    dae.net.train()
    batch = dae.batches.get_state()
    dae._train_step(1)
    dae.batches.set_state(batch)
    clean = dae.images[dae.batches.next()]
    shift = seen[0] - clean
    assert float(shift.mean()) == pytest.approx(-1.0, abs=0.1)  # the centred noise
    assert float(shift.std()) > 0.05
    images = train_set(seed=1).normal
    seen.clear()
    dae.predict(images)
    torch.testing.assert_close(seen[0], to_model_input(images, CPU, 32))


# ----------------------------------------------------------------------------- score and map


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_the_map_is_the_per_pixel_squared_error_and_the_score_its_mean(cls: type) -> None:
    method = fitted(cls)
    rng = np.random.default_rng(3)
    images, _ = add_lesions(smooth_images(5, 32, 1, rng), rng)
    prediction = method.predict(images)
    with method.evaluating():
        x = to_model_input(images, CPU, 32)
        expected = ((x - method.net(x)) ** 2).mean(1).numpy()
    np.testing.assert_allclose(prediction.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prediction.scores, expected.mean((1, 2)), rtol=1e-5)


def test_maps_come_back_at_the_input_size_when_the_network_works_smaller() -> None:
    method = fitted(Autoencoder, size=64, image_size=32)
    images = train_set(n=3, size=64, seed=2).normal
    prediction = method.predict(images)
    assert prediction.maps.shape == (3, 64, 64)
    # The score is the mean of the working-size map; bilinear resizing keeps it nearly.
    np.testing.assert_allclose(prediction.maps.mean((1, 2)), prediction.scores, rtol=0.05)
