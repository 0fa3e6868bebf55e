"""Demo head-phantom generator, numpy-only forward pass (catalogue id "demo-numpy").

A medigan-format model package: ``generate(model_file, num_samples, output_path, save_images, **custom)``.
It runs inside its own model env (numpy only) and must not import anything else: no Pillow, no torch.
The same trained DCGAN ships as demo_torch (torch state_dict) and demo_tf (Keras 2 .h5); for equal latent
vectors the three give the same float images to within 1e-4.

- Latents: ``numpy.random.standard_normal((n, 100)).astype(float32)`` from numpy's global RNG, so seeding
  numpy gives the same images in all three packages; or ``input_latent_vector=`` (shape (n, 100),
  (n, 100, 1, 1) as medigan's visualiser passes, or (100,)), whose rows then decide the number of samples
  (as in upstream medigan models, num_samples is ignored).
- Return (save_images=False): a list of 64x64x1 arrays, uint8 0-255 by default, or float32 in [-1, 1] (the
  raw tanh output) with ``output="float"``.
- save_images=True writes ``demo_<i>.png`` (8-bit greyscale PNG, written with zlib: the env has no Pillow)
  into output_path and returns None.
- Weights: ``generator.npz`` holding w0..w4 (ConvTranspose kernels, (in, out, 4, 4), BatchNorm folded in)
  and b0..b4 (biases), loaded with allow_pickle=False.
"""

import functools
import os
import struct
import zlib
from pathlib import Path

import numpy as np

LATENT_SIZE = 100
LAYER_COUNT = 5
STRIDES = (1, 2, 2, 2, 2)
PADDINGS = (0, 1, 1, 1, 1)
CHUNK_SAMPLES = 64  # forward-pass chunk: bounds the scatter-add patch buffer (about 17 MB per chunk)
OUTPUTS = ("uint8", "float")


@functools.lru_cache(maxsize=2)
def _load(model_file):
    with np.load(model_file, allow_pickle=False) as archive:
        return tuple(
            (archive[f"w{i}"].astype(np.float32), archive[f"b{i}"].astype(np.float32))
            for i in range(LAYER_COUNT)
        )


def _conv_transpose(x, weight, bias, stride, pad):
    """ConvTranspose2d on NHWC input; weight is torch's layout (in, out, k, k)."""
    n, h, w, _ = x.shape
    c_out, k = weight.shape[1], weight.shape[2]
    # Every input pixel contributes a k x k patch per output channel; scatter-add the patches.
    patches = np.tensordot(x, weight, axes=([3], [0]))  # (n, h, w, c_out, k, k)
    full_h, full_w = (h - 1) * stride + k, (w - 1) * stride + k
    out = np.zeros((n, full_h, full_w, c_out), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            out[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride, :] += (
                patches[..., i, j]
            )
    return out[:, pad : full_h - pad, pad : full_w - pad, :] + bias


def _forward(layers, z):
    x = z.reshape(len(z), 1, 1, LATENT_SIZE)
    for index, (weight, bias) in enumerate(layers):
        x = _conv_transpose(x, weight, bias, STRIDES[index], PADDINGS[index])
        x = np.tanh(x) if index == LAYER_COUNT - 1 else np.maximum(x, 0.0)
    return x.astype(np.float32)  # (n, 64, 64, 1)


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
    layers = _load(os.fspath(model_file))
    z = _latents(num_samples, input_latent_vector)
    floats = np.concatenate(
        [_forward(layers, z[i : i + CHUNK_SAMPLES]) for i in range(0, len(z), CHUNK_SAMPLES)]
        or [np.zeros((0, 64, 64, 1), dtype=np.float32)]
    )
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
