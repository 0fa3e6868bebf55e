"""Demo head-phantom generator, torch (catalogue id "demo-torch"; env: torch==2.13.0, numpy 2.x).

A medigan-format model package: ``generate(model_file, num_samples, output_path, save_images, **custom)``.
It runs inside its own model env and imports only torch and numpy. The same trained DCGAN ships as
demo_numpy (.npz, numpy forward pass) and demo_tf (Keras 2 .h5); for equal latent vectors the three give the
same float images to within 1e-4.

- Latents: ``numpy.random.standard_normal((n, 100)).astype(float32)`` from numpy's global RNG (not torch's),
  so seeding numpy gives the same images in all three packages; or ``input_latent_vector=`` (shape (n, 100),
  (n, 100, 1, 1) as medigan's visualiser passes, or (100,)), whose rows then decide the number of samples
  (as in upstream medigan models, num_samples is ignored).
- Return (save_images=False): a list of 64x64x1 arrays, uint8 0-255 by default, or float32 in [-1, 1] (the
  raw tanh output) with ``output="float"``.
- save_images=True writes ``demo_<i>.png`` (8-bit greyscale PNG, written with zlib: the env has no Pillow)
  into output_path and returns None.
- Weights: ``generator.pt``, a plain state_dict (five ConvTranspose2d layers with bias, BatchNorm folded in)
  loaded with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

import functools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

LATENT_SIZE = 100
CHANNELS = (100, 128, 64, 32, 16, 1)
CHUNK_SAMPLES = 256
OUTPUTS = ("uint8", "float")


def build_generator():
    """The inference network: ConvTranspose2d(k=4) + ReLU blocks (4x4 -> 64x64), tanh output.

    Keys of its state_dict are "0.weight", "0.bias", "2.weight", ... "8.bias" (ReLUs hold no weights).
    """
    layers = []
    for index in range(len(CHANNELS) - 1):
        stride, pad = (1, 0) if index == 0 else (2, 1)
        layers.append(nn.ConvTranspose2d(CHANNELS[index], CHANNELS[index + 1], 4, stride, pad, bias=True))
        layers.append(nn.ReLU() if index < len(CHANNELS) - 2 else nn.Tanh())
    return nn.Sequential(*layers)


@functools.lru_cache(maxsize=2)
def _load(model_file):
    network = build_generator()
    network.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    return network.eval()


def _latents(num_samples, input_latent_vector):
    if input_latent_vector is None:
        if int(num_samples) != num_samples or num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
        return np.random.standard_normal((int(num_samples), LATENT_SIZE)).astype(np.float32)
    z = np.asarray(input_latent_vector, dtype=np.float32)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim == 4 and z.shape[2:] == (1, 1):
        z = z[:, :, 0, 0]  # medigan's visualiser passes (n, size, 1, 1), a DCGAN's NCHW input
    if z.ndim != 2 or z.shape[1] != LATENT_SIZE:
        raise ValueError(
            f"input_latent_vector must have shape (n, {LATENT_SIZE}), (n, {LATENT_SIZE}, 1, 1) or"
            f" ({LATENT_SIZE},), got {z.shape}: pass one row of {LATENT_SIZE} floats per sample"
        )
    return z


def _png_bytes(image):
    """Encode an H x W uint8 array as an 8-bit greyscale PNG (no Pillow in this env)."""
    height, width = image.shape

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def generate(
    model_file, num_samples, output_path, save_images, input_latent_vector=None, output="uint8", **custom
):
    """Generate head phantoms; see the module docstring for the contract."""
    custom.pop("condition", None)  # medigan's visualiser passes condition=None to every model
    if custom:
        raise ValueError(
            f"unknown argument(s) {sorted(custom)}: this model accepts input_latent_vector= and"
            f" output= ({' or '.join(OUTPUTS)})"
        )
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if save_images and output_path is None:
        raise ValueError("save_images=True needs output_path: pass the directory to write the PNGs into")
    network = _load(os.fspath(model_file))
    z = _latents(num_samples, input_latent_vector)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(z), CHUNK_SAMPLES):
            batch = torch.from_numpy(z[start : start + CHUNK_SAMPLES]).reshape(-1, LATENT_SIZE, 1, 1)
            chunks.append(network(batch).permute(0, 2, 3, 1).contiguous().numpy())
    floats = np.concatenate(chunks) if chunks else np.zeros((0, 64, 64, 1), dtype=np.float32)
    if output == "float" and not save_images:
        return list(floats)
    images = np.round((floats + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    if not save_images:
        return list(images)
    out_dir = Path(output_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        (out_dir / f"demo_{index}.png").write_bytes(_png_bytes(image[:, :, 0]))
    return None
