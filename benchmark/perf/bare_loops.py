"""A bare PyTorch loop for every built-in method: the yardstick `bench perf --methods` holds the
suite against.

Each loop is what a researcher would write in a notebook around the method's own networks and
losses (imported from the method's module, or anomalib's where the method uses anomalib's):

- the training images converted once into one tensor in the model's range (channels_last where
  the method's config asks for it), batches drawn by index;
- the same optimisers, learning rates, batch size and number of steps as the config, each
  optimiser's update run multi-tensor ("foreach") as the suite runs it: the fast setting on a
  CPU, so that the yardstick is not slowed by the one Python-level update per tensor that
  PyTorch's CPU default does;
- scoring under `torch.inference_mode`, in batches of the method's scoring batch size, the
  image score only (no maps, no extras).

Nothing else: no held-out images, no checkpoints or model selection, no loss logging, no
progress, no resumable state, no learning-rate schedule or flips. What the suite adds on top of
this is what the ratio measures. The feature methods (PaDiM, PatchCore) run a plain timm
EfficientNet-Lite0 (or the configured backbone) forward with the same statistics, not
anomalib's model.

A loop is `fit(config, train, device, seed) -> score`, where `score(images)` maps [0, 1] images
(N, C, H, W) to one score per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medad_bench.api.contract import TrainSet
from medad_bench.api.training import multi_tensor
from medad_bench.methods._gan import bce, gradient_penalty, to_model_input, wgan_critic_loss

Scorer = Callable[[np.ndarray], np.ndarray]
BareLoop = Callable[[Any, TrainSet, torch.device, int], Scorer]

BARE_LOOPS: dict[str, BareLoop] = {}


def bare_loop(name: str) -> Callable[[BareLoop], BareLoop]:
    """Register the bare loop of the method called `name`."""
    def register(function: BareLoop) -> BareLoop:
        BARE_LOOPS[name] = function
        return function
    return register


def bare_loop_for(name: str) -> BareLoop:
    if name not in BARE_LOOPS:
        raise KeyError(f"no bare loop for method {name!r}; known: {', '.join(sorted(BARE_LOOPS))}")
    return BARE_LOOPS[name]


# -- shared pieces ----------------------------------------------------------------------------

def _as_input(images: np.ndarray, config: Any, device: torch.device) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] at the config's working size (channels_last where asked)."""
    x = to_model_input(np.asarray(images, dtype=np.float32), device, config.image_size)
    if getattr(config, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _on_device(net: nn.Module, config: Any, device: torch.device) -> nn.Module:
    net = net.to(device)
    if getattr(config, "channels_last", False):
        net = net.to(memory_format=torch.channels_last)
    return net.train()


def _draws(n: int, size: int, steps: int, device: torch.device) -> Iterator[torch.Tensor]:
    """`steps` batches of `size` random rows (with replacement) of a set of n."""
    for _ in range(steps):
        yield torch.randint(n, (min(size, n),), device=device)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _scorer(score_batch: Callable[[torch.Tensor], torch.Tensor],
            to_input: Callable[[np.ndarray], torch.Tensor], batch_size: int,
            networks: tuple[nn.Module, ...]) -> Scorer:
    """Score images in batches: networks in eval mode, inference mode, scores to NumPy."""
    def score(images: np.ndarray) -> np.ndarray:
        for net in networks:
            net.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                out.append(score_batch(to_input(images[start:start + batch_size])).float())
        return torch.cat(out).cpu().numpy()
    return score


def _steps(method_name: str, config: Any, train: TrainSet) -> int:
    from medad_bench.api.contract import get_method

    return get_method(method_name)(config).total_steps(train)


# -- reconstruction (MedIAnomaly's AE, VAE, DAE) ---------------------------------------------

def _reconstruction_loop(name: str, build: Callable[[Any, int], nn.Module],
                         loss: Callable[[nn.Module, torch.Tensor, Any, torch.Generator],
                                        torch.Tensor]) -> BareLoop:
    def fit(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
        torch.manual_seed(seed)
        noise = torch.Generator(device="cpu").manual_seed(seed + 2)
        net = _on_device(build(config, train.channels), config, device)
        optimizer = multi_tensor(torch.optim.Adam(net.parameters(), lr=config.lr,
                                                  weight_decay=config.weight_decay))
        images = _as_input(train.normal, config, device)
        for rows in _draws(len(images), config.batch_size, _steps(name, config, train), device):
            _step(optimizer, loss(net, images[rows], config, noise))

        def error(x: torch.Tensor) -> torch.Tensor:
            return ((x - net(x)) ** 2).flatten(1).mean(1)
        return _scorer(error, lambda a: _as_input(a, config, device), config.batch_size, (net,))
    return bare_loop(name)(fit)


def _autoencoder(config: Any, channels: int, code_factor: int = 1) -> nn.Module:
    from medad_bench.methods._autoencoder import ConvAutoencoder

    return ConvAutoencoder(channels, config.image_size, config.base_width, config.hidden,
                           config.latent, code_factor=code_factor)


def _vae_loss(net: nn.Module, x: torch.Tensor, config: Any,
              noise: torch.Generator) -> torch.Tensor:
    from medad_bench.methods._autoencoder import gaussian_kl

    mu, log_var = net.encode(x).chunk(2, dim=1)
    z = mu + torch.randn(mu.shape, generator=noise).to(x.device) * torch.exp(0.5 * log_var)
    return F.mse_loss(net.decode(z), x) + config.kl_weight * gaussian_kl(mu, log_var).mean()


def _dae_loss(net: nn.Module, x: torch.Tensor, config: Any,
              noise: torch.Generator) -> torch.Tensor:
    from medad_bench.methods.dae import coarse_noise

    return F.mse_loss(net(x + coarse_noise(x, noise, config)), x)


def _unet(config: Any, channels: int) -> nn.Module:
    from medad_bench.methods.dae import UNet

    return UNet(channels, config.base_width)


_reconstruction_loop("autoencoder", _autoencoder, lambda net, x, cfg, g: F.mse_loss(net(x), x))
_reconstruction_loop("vae", lambda cfg, c: _autoencoder(cfg, c, code_factor=2), _vae_loss)
_reconstruction_loop("dae", _unet, _dae_loss)


# -- GANs on a latent space (ALAD, ALOCC, f-AnoGAN, GANomaly) --------------------------------

@bare_loop("alad")
def alad(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.methods._gan import ImageEncoder, LatentDecoder
    from medad_bench.methods.alad import JointXZ, PairXX, PairZZ, _ema_update, _pair_losses, _pairs

    torch.manual_seed(seed)
    cfg, c = config, train.channels
    encoder = ImageEncoder(c, cfg.base_channels, cfg.image_size, cfg.latent).to(device)
    generator = LatentDecoder(cfg.latent, c, cfg.base_channels, cfg.image_size).to(device)
    critics = (JointXZ(c, cfg.base_channels, cfg.image_size, cfg.latent).to(device),
               PairXX(c, cfg.base_channels, cfg.image_size).to(device),
               PairZZ(cfg.latent).to(device))
    averages = [(live, _frozen_copy(live)) for live in (encoder, generator, critics[1])]
    betas = (cfg.beta1, cfg.beta2)
    encoder_and_generator = [*encoder.parameters(), *generator.parameters()]
    opt_ge = multi_tensor(torch.optim.Adam(encoder_and_generator, cfg.lr, betas))
    opt_d = multi_tensor(torch.optim.Adam([p for net in critics for p in net.parameters()],
                                          cfg.lr, betas))
    images = _as_input(train.normal, cfg, device)
    for rows in _draws(len(images), cfg.batch_size, cfg.iterations, device):
        x = images[rows]
        z = torch.randn(len(x), cfg.latent, device=device)
        with torch.no_grad():
            pairs = _pairs(encoder, generator, x, z)
        _step(opt_d, _pair_losses(*critics, pairs, real_label=1.0))
        _step(opt_ge, _pair_losses(*critics, _pairs(encoder, generator, x, z), real_label=0.0))
        with torch.no_grad():
            for live, average in averages:
                _ema_update(average, live, cfg.ema_decay)
    ema_encoder, ema_generator, ema_d_xx = (average for _, average in averages)

    def distance(x: torch.Tensor) -> torch.Tensor:
        rebuilt = ema_generator(ema_encoder(x))
        return torch.abs(ema_d_xx.features(x, x) - ema_d_xx.features(x, rebuilt)).sum(1)
    return _scorer(distance, lambda a: _as_input(a, cfg, device), cfg.score_batch_size,
                   (ema_encoder, ema_generator, ema_d_xx))


def _frozen_copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).requires_grad_(False)


@bare_loop("alocc")
def alocc(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.methods._gan import ImageEncoder
    from medad_bench.methods.alocc import Reconstructor

    torch.manual_seed(seed)
    cfg = config
    reconstructor = Reconstructor(train.channels, cfg.base_channels, cfg.image_size).to(device)
    critic = ImageEncoder(train.channels, cfg.base_channels, cfg.image_size, 1).to(device)
    opt_r = multi_tensor(torch.optim.RMSprop(reconstructor.parameters(), cfg.lr))
    opt_d = multi_tensor(torch.optim.RMSprop(critic.parameters(), cfg.lr))
    images = _as_input(train.normal, cfg, device)
    for rows in _draws(len(images), cfg.batch_size, cfg.iterations, device):
        x = images[rows]
        rebuilt = reconstructor(x + cfg.noise_sigma * torch.randn_like(x))
        _step(opt_d, bce(critic(x), 1) + bce(critic(rebuilt.detach()), 0))
        _step(opt_r, bce(critic(rebuilt), 1) + cfg.lambda_reconstruction * F.mse_loss(rebuilt, x))
    return _scorer(lambda x: 1.0 - torch.sigmoid(critic(reconstructor(x))).flatten(),
                   lambda a: _as_input(a, cfg, device), cfg.score_batch_size,
                   (reconstructor, critic))


@bare_loop("fanogan")
def fanogan(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.methods._gan import ImageEncoder, LatentDecoder
    from medad_bench.methods.fanogan import izi_f

    torch.manual_seed(seed)
    cfg, c = config, train.channels
    generator = LatentDecoder(cfg.latent, c, cfg.base_channels, cfg.image_size).to(device)
    critic = ImageEncoder(c, cfg.base_channels, cfg.image_size, 1, norm="layer").to(device)
    encoder = ImageEncoder(c, cfg.base_channels, cfg.image_size, cfg.latent).to(device)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = multi_tensor(torch.optim.Adam(generator.parameters(), cfg.lr, betas))
    opt_d = multi_tensor(torch.optim.Adam(critic.parameters(), cfg.lr, betas))
    opt_e = multi_tensor(torch.optim.Adam(encoder.parameters(), cfg.lr, betas))
    images = _as_input(train.normal, cfg, device)
    draws = _draws(len(images), cfg.batch_size, cfg.gan_iterations * cfg.critic_steps, device)
    for _ in range(cfg.gan_iterations):
        for _, rows in zip(range(cfg.critic_steps), draws, strict=False):
            real = images[rows]
            with torch.no_grad():
                fake = generator(torch.randn(len(real), cfg.latent, device=device))
            weights = torch.rand(len(real), 1, 1, 1, device=device)
            _step(opt_d, critic(fake).mean() - critic(real).mean()
                  + cfg.lambda_gp * gradient_penalty(critic, real, fake, weights))
        _step(opt_g, -critic(generator(torch.randn(cfg.batch_size, cfg.latent,
                                                   device=device))).mean())
    generator.eval().requires_grad_(False)
    critic.eval().requires_grad_(False)
    for rows in _draws(len(images), cfg.batch_size, cfg.encoder_iterations, device):
        x = images[rows]
        _step(opt_e, izi_f(x, generator(encoder(x)), critic, cfg.kappa).mean())
    return _scorer(lambda x: izi_f(x, generator(encoder(x)), critic, cfg.kappa),
                   lambda a: _as_input(a, cfg, device), cfg.score_batch_size,
                   (generator, critic, encoder))


@bare_loop("ganomaly")
def ganomaly(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
    from anomalib.models.image.ganomaly.torch_model import GanomalyModel

    torch.manual_seed(seed)
    cfg = config
    model = GanomalyModel(input_size=(cfg.image_size, cfg.image_size),
                          num_input_channels=train.channels, n_features=cfg.n_features,
                          latent_vec_size=cfg.latent_vec_size,
                          extra_layers=cfg.extra_layers).to(device).train()
    generator_loss = GeneratorLoss(cfg.w_adversarial, cfg.w_contextual, cfg.w_encoder)
    discriminator_loss = DiscriminatorLoss()
    betas = (cfg.beta1, cfg.beta2)
    opt_d = multi_tensor(torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr, betas=betas))
    opt_g = multi_tensor(torch.optim.Adam(model.generator.parameters(), lr=cfg.lr, betas=betas))
    images = _as_input(train.normal, cfg, device)
    for rows in _draws(len(images), cfg.batch_size, _steps("ganomaly", cfg, train), device):
        padded, fake, latent_i, latent_o = model(images[rows])
        pred_real, _ = model.discriminator(padded)
        pred_fake, _ = model.discriminator(fake)
        loss = generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
        opt_g.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        opt_g.step()
        pred_fake, _ = model.discriminator(fake.detach())
        _step(opt_d, discriminator_loss(pred_real, pred_fake))
    return _scorer(lambda x: model(x).pred_score, lambda a: _as_input(a, cfg, device),
                   cfg.batch_size, (model,))


# -- translation GANs (AnomalyPro, Brainomaly) -----------------------------------------------

@bare_loop("anomalypro")
def anomalypro(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.perf.throughput import bare_scores, bare_training

    generator = bare_training(config, train, device, seed)
    return lambda images: bare_scores(generator, images, config, device)


@bare_loop("brainomaly")
def brainomaly(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.methods._translation import PatchDiscriminator
    from medad_bench.methods.brainomaly import MapGenerator

    torch.manual_seed(seed)
    cfg, c = config, train.channels
    generator = _on_device(MapGenerator(c, cfg.base_channels, cfg.residual_blocks, cfg.upsample),
                           cfg, device)
    critic = _on_device(PatchDiscriminator(c, cfg.critic_base_channels, cfg.critic_layers),
                        cfg, device)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = multi_tensor(torch.optim.Adam(generator.parameters(), cfg.lr_g, betas))
    opt_d = multi_tensor(torch.optim.Adam(critic.parameters(), cfg.lr_d, betas))
    set_a, set_b = _as_input(train.unlabeled, cfg, device), _as_input(train.normal, cfg, device)
    size = cfg.batch_size
    for step in range(1, cfg.iterations + 1):
        a = set_a[torch.randint(len(set_a), (size,), device=device)]
        b = set_b[torch.randint(len(set_b), (size,), device=device)]
        with torch.no_grad():
            fake = generator(a)
        loss_d, _ = wgan_critic_loss(critic, b, fake, torch.rand(size, 1, 1, 1, device=device),
                                     cfg.lambda_gp)
        _step(opt_d, loss_d)
        if step % cfg.critic_steps_per_g == 0:
            _step(opt_g, -cfg.lambda_adv * critic(generator(a)).mean()
                  + cfg.lambda_id * torch.mean(torch.abs(b - generator(b))))
    return _scorer(lambda x: (torch.abs(x - generator(x)) / 2).mean(dim=(1, 2, 3)),
                   lambda a: _as_input(a, cfg, device), cfg.score_batch_size,
                   (generator, critic))


# -- teacher-student (STFPM, Reverse Distillation): anomalib's torch models ------------------

def _distillation_loop(name: str) -> BareLoop:
    def fit(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
        from medad_bench.api.contract import get_method
        from medad_bench.methods._anomalib import backbone_input
        from medad_bench.weights import load_weights, resolve_weights

        torch.manual_seed(seed)
        method = get_method(name)(config)  # its builders only: model, teacher, optimiser, loss
        model = method._build_model(train)
        load_weights(method._teacher(model).feature_extractor,
                     resolve_weights(config.backbone, config.weights))
        model = model.to(device).train()
        optimizer = multi_tensor(method._optimizer(model))
        images = backbone_input(train.normal, config.image_size, device)
        for rows in _draws(len(images), config.batch_size, method.total_steps(train), device):
            _step(optimizer, method._loss(*model(images[rows])))
        return _scorer(lambda x: model(x).pred_score.reshape(-1),
                       lambda a: backbone_input(a, config.image_size, device),
                       config.batch_size, (model,))
    return bare_loop(name)(fit)


_distillation_loop("stfpm")
_distillation_loop("reverse_distillation")


# -- pretrained features (PaDiM, PatchCore): a plain timm forward ----------------------------

def _timm_features(config: Any, device: torch.device) -> nn.Module:
    """The config's backbone as a timm feature model of its layers, no stage after the last
    one, with the same weights the method loads."""
    import timm

    from medad_bench.weights import load_weights, resolve_weights

    names = timm.create_model(config.backbone, features_only=True).feature_info.module_name()
    model = timm.create_model(config.backbone, pretrained=False, features_only=True,
                              out_indices=[names.index(layer) for layer in config.layers])
    load_weights(model, resolve_weights(config.backbone, config.weights))
    if hasattr(model, "_stage_out_idx"):  # EfficientNet runs every block unless cut
        model.blocks = model.blocks[:max(model._stage_out_idx)]
    return model.to(device).eval()


def _training_rows(config: Any, train: TrainSet, seed: int) -> np.ndarray:
    n, cap = len(train.normal), config.max_train_images
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 12]).choice(n, cap, replace=False))


def _in_batches(images: np.ndarray, rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield np.asarray(images[rows[start:start + size]], dtype=np.float32)


@bare_loop("padim")
def padim(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.methods._anomalib import backbone_input
    from medad_bench.methods.padim import RunningGaussian

    torch.manual_seed(seed)
    cfg = config
    features = _timm_features(cfg, device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        maps = features(x)
        first = maps[0]
        stacked = torch.cat([first, *(F.interpolate(m, size=first.shape[-2:], mode="nearest")
                                      for m in maps[1:])], 1)
        return stacked.index_select(1, chosen)

    gaussian = RunningGaussian()
    with torch.inference_mode():
        for batch in _in_batches(train.normal, _training_rows(cfg, train, seed), cfg.batch_size):
            x = backbone_input(batch, cfg.image_size, device)
            if gaussian.count == 0:
                widths = sum(m.shape[1] for m in features(x[:1]))
                chosen = torch.randperm(widths, device=device)[:cfg.n_features]
            gaussian.add(embed(x).flatten(2))
        mean, inverse = gaussian.mean_and_inverse()
        mean = mean.T  # (P, C)

    def score(x: torch.Tensor) -> torch.Tensor:
        emb = embed(x)
        batch, _, height, width = emb.shape
        delta = emb.flatten(2).permute(2, 0, 1) - mean[:, None]  # (P, B, C)
        distances = torch.einsum("pbc,pcd,pbd->bp", delta, inverse, delta).clamp_(min=0).sqrt()
        return _blurred_max(distances.reshape(batch, 1, height, width), x.shape[-2:])

    return _scorer(score, lambda a: backbone_input(a, cfg.image_size, device), cfg.batch_size,
                   (features,))


def _blurred_max(patch_map: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """anomalib's image score from a patch map: upsampled to the input, blurred with a
    Gaussian of sigma 4 (33-pixel kernel), its maximum."""
    from torchvision.transforms.functional import gaussian_blur

    full = F.interpolate(patch_map, size=tuple(size), mode="bilinear", align_corners=False)
    return gaussian_blur(full, kernel_size=33, sigma=4.0).amax(dim=(1, 2, 3))


@bare_loop("patchcore")
def patchcore(config: Any, train: TrainSet, device: torch.device, seed: int) -> Scorer:
    from medad_bench.api.contract import Progress
    from medad_bench.methods._anomalib import backbone_input
    from medad_bench.methods.patchcore import coreset_size, greedy_coreset

    torch.manual_seed(seed)
    cfg = config
    features = _timm_features(cfg, device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        maps = [F.avg_pool2d(m, 3, 1, 1) for m in features(x)]
        first = maps[0]
        stacked = torch.cat([first, *(F.interpolate(m, size=first.shape[-2:], mode="bilinear")
                                      for m in maps[1:])], 1)
        return stacked.permute(0, 2, 3, 1).reshape(len(x), -1, stacked.shape[1])  # (B, P, D)

    rows = _training_rows(cfg, train, seed)
    parts = []
    with torch.inference_mode():
        for batch in _in_batches(train.normal, rows, cfg.batch_size):
            patches = embed(backbone_input(batch, cfg.image_size, device))
            keep = patches.shape[1]
            if cfg.max_patches is not None and len(rows) * keep > cfg.max_patches:
                keep = max(1, cfg.max_patches // len(rows))
            if keep < patches.shape[1]:  # the same random share of every image's patches
                pick = torch.rand(patches.shape[:2], device=device).argsort(1)[:, :keep]
                patches = torch.gather(patches, 1, pick[..., None].expand(-1, -1,
                                                                          patches.shape[2]))
            parts.append(patches)
        bank = torch.cat(parts).reshape(-1, parts[0].shape[2])
        per_image = embed(backbone_input(train.normal[:1], cfg.image_size, device)).shape[1]
        size = coreset_size(cfg, len(rows) * per_image, len(bank))
        bank = bank[greedy_coreset(bank, size, seed=seed, progress=Progress())].contiguous()
    k = min(cfg.num_neighbors, len(bank))

    def score(x: torch.Tensor) -> torch.Tensor:
        emb = embed(x)
        # One image's (patches x bank) distances at a time: 40 MB at 256 px and 10,000 rows.
        patch_scores, nearest = (torch.stack(side) for side in zip(
            *(torch.cdist(patches, bank).min(1) for patches in emb), strict=True))
        worst = patch_scores.argmax(1)
        batch = torch.arange(len(emb), device=emb.device)
        if k == 1:
            return patch_scores[batch, worst]
        anchor = bank[nearest[batch, worst]]  # the bank patch nearest the worst test patch
        support = torch.cdist(anchor, bank).topk(k, largest=False).indices
        to_support = torch.cdist(emb[batch, worst][:, None], bank[support]).squeeze(1)
        return (1 - F.softmax(to_support, 1))[:, 0] * patch_scores[batch, worst]

    return _scorer(score, lambda a: backbone_input(a, cfg.image_size, device), cfg.batch_size,
                   (features,))


def covers(names: list[str]) -> list[str]:
    """The names without a bare loop (empty when every one has one)."""
    return [name for name in names if name not in BARE_LOOPS]


__all__ = ["BARE_LOOPS", "BareLoop", "Scorer", "bare_loop_for", "covers"]
