"""Train the demo DCGAN on procedural head phantoms (torch, CPU, seeded; under 10 minutes on one core).

Owns training only: writes a torch checkpoint (generator + discriminator state_dicts; BatchNorm
statistics recomputed at the end) and a JSON log; convert.py turns the generator into the three shipped
formats. Not part of the medigan_iso wheel.

Usage (from the repository root, in a venv holding torch==2.13.0, numpy and pillow):

    python demo_models/train_phantom_dcgan.py --out /tmp/demo-train-out

Reproducible: the data set, the initial weights and the minibatch order all come from --seed, and the
number of steps is fixed (not a time budget). The thread count is pinned (default 1, the setting of the
shipped weights) because float reductions depend on it.

Recipe: DCGAN generator (BatchNorm, ReLU, tanh); discriminator with spectral norm and a minibatch-stddev
channel; hinge loss; Adam 2e-4, betas (0.5, 0.999); batch 64; 2000 steps over 8000 phantoms; plus a
diversity floor on the generator (see the training loop), without which this data set collapsed to one
phantom; BatchNorm statistics are recomputed for the final weights. The log of the run behind the shipped
weights is demo_models/train_log_shipped.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantoms import phantoms

LATENT_SIZE = 100
GEN_CHANNELS = (128, 64, 32, 16)  # 4x4 -> 8x8 -> 16x16 -> 32x32, then 64x64x1
DISC_CHANNELS = (16, 32, 64, 128)  # 32x32 -> 16x16 -> 8x8 -> 4x4, then a logit


def make_generator() -> nn.Sequential:
    """The training-time generator: ConvTranspose (no bias) + BatchNorm + ReLU blocks, tanh output.

    Layout: ConvTranspose2d(100 -> 128, k4 s1 p0) gives 4x4, then k4 s2 p1 doubles H and W each block.
    convert.py folds each BatchNorm (eval mode) into the preceding ConvTranspose as a per-channel scale
    and a bias, so the shipped network is five ConvTranspose layers with bias.
    """
    layers: list[nn.Module] = []
    c_in = LATENT_SIZE
    for i, c_out in enumerate(GEN_CHANNELS):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        layers += [
            nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        ]
        c_in = c_out
    layers += [nn.ConvTranspose2d(c_in, 1, 4, 2, 1, bias=True), nn.Tanh()]
    return nn.Sequential(*layers)


class MinibatchStddev(nn.Module):
    """Appends the batch's mean feature standard deviation as one channel (Karras et al. 2018).

    It lets the discriminator see a collapsed batch: an earlier run of this script with a BatchNorm
    discriminator collapsed to one phantom within 1000 steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(dim=0, unbiased=False).mean().expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return torch.cat([x, std], dim=1)


def make_discriminator() -> nn.Sequential:
    """Spectrally normalised convolutions (Miyato et al. 2018), no BatchNorm, minibatch stddev at 4x4."""
    sn = nn.utils.parametrizations.spectral_norm
    layers: list[nn.Module] = []
    c_in = 1
    for c_out in DISC_CHANNELS:
        layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
        c_in = c_out
    layers += [MinibatchStddev(), sn(nn.Conv2d(c_in + 1, 1, 4, 1, 0)), nn.Flatten()]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016): N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Sequential, *, generator: torch.Generator, batches: int = 50) -> None:
    """Replace BatchNorm running statistics with exact population averages for the final weights.

    The exponential moving averages collected during training lag behind the weights; eval-mode samples are
    cleaner when the statistics match the final network (cumulative average over fresh latents).
    """
    for m in gen.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    gen.train()
    for _ in range(batches):
        gen(torch.randn(256, LATENT_SIZE, 1, 1, generator=generator))
    gen.eval()


def save_preview(gen: nn.Sequential, z: torch.Tensor, path: Path) -> None:
    from PIL import Image

    was_training = gen.training
    gen.eval()
    with torch.no_grad():
        x = gen(z)[:, 0].numpy()
    gen.train(was_training)
    rows = 4
    cols = len(x) // rows
    grid = x[: rows * cols].reshape(rows, cols, 64, 64).transpose(0, 2, 1, 3).reshape(rows * 64, cols * 64)
    Image.fromarray(np.round((grid + 1) * 127.5).clip(0, 255).astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (checkpoint, log, previews)"
    )
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--num-real", type=int, default=8000, help="phantoms in the training set")
    parser.add_argument("--steps", type=int, default=2000, help="generator updates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--diversity-weight", type=float, default=4.0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    real = torch.from_numpy(phantoms(args.num_real, rng=np.random.default_rng(args.seed)))[:, None]
    t_data = time.perf_counter() - t0
    print(f"data: {tuple(real.shape)} in {t_data:.1f} s", flush=True)

    gen, disc = make_generator(), make_discriminator()
    gen.apply(init_weights)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batch_gen = torch.Generator().manual_seed(args.seed + 1)
    fixed_z = torch.randn(32, LATENT_SIZE, 1, 1, generator=batch_gen)
    bs = args.batch_size

    log: list[dict[str, float]] = []
    perm = torch.randperm(len(real), generator=batch_gen)
    cursor = 0
    for step in range(1, args.steps + 1):
        if cursor + bs > len(perm):
            perm = torch.randperm(len(real), generator=batch_gen)
            cursor = 0
        x_real = real[perm[cursor : cursor + bs]]
        cursor += bs
        if torch.rand((), generator=batch_gen) < 0.5:  # mirror augmentation: heads are left-right symmetric
            x_real = x_real.flip(-1)
        z = torch.randn(bs, LATENT_SIZE, 1, 1, generator=batch_gen)
        x_fake = gen(z)

        opt_d.zero_grad(set_to_none=True)
        # Hinge loss, as in SNGAN.
        loss_d = torch.relu(1.0 - disc(x_real)).mean() + torch.relu(1.0 + disc(x_fake.detach())).mean()
        loss_d.backward()
        opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        # Diversity floor: the mean pixel distance between paired samples of a fake batch must not fall
        # below that of a real batch. Two earlier runs of this script collapsed to a single phantom
        # without it; an unbounded mode-seeking term (Mao et al. 2019) instead rewarded pixel noise.
        half = bs // 2
        spread_fake = (x_fake[:half] - x_fake[half:]).abs().mean()
        spread_real = (x_real[:half] - x_real[half:]).abs().mean()
        loss_g = -disc(x_fake).mean() + args.diversity_weight * torch.relu(spread_real - spread_fake)
        loss_g.backward()
        opt_g.step()

        if step % 100 == 0 or step == 1:
            entry = {
                "step": step,
                "loss_d": loss_d.item(),
                "loss_g": loss_g.item(),
                "spread_fake": spread_fake.item(),
                "spread_real": spread_real.item(),
                "elapsed_s": time.perf_counter() - t0,
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if step % 250 == 0:
            save_preview(gen, fixed_z, args.out / f"preview_{step:05d}.png")

    recalibrate_batchnorm(gen, generator=batch_gen)
    save_preview(gen, fixed_z, args.out / "preview_final.png")
    torch.save(
        {"generator": gen.state_dict(), "discriminator": disc.state_dict()}, args.out / "checkpoint.pt"
    )
    # GAN losses are noisy step to step: report the last logged step and the mean of the last 5 logs.
    tail = log[-1]
    window = log[-5:]
    summary = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": bs,
        "num_real": args.num_real,
        "threads": args.threads,
        "diversity_weight": args.diversity_weight,
        "torch": torch.__version__,
        "data_s": t_data,
        "total_s": time.perf_counter() - t0,
        "final_loss_d": tail["loss_d"],
        "final_loss_g": tail["loss_g"],
        "mean_last5_loss_d": sum(e["loss_d"] for e in window) / len(window),
        "mean_last5_loss_g": sum(e["loss_g"] for e in window) / len(window),
        "log": log,
    }
    (args.out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {summary['total_s']:.0f} s; loss_d {tail['loss_d']:.3f} loss_g {tail['loss_g']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
