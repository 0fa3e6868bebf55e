"""Convert the trained demo generator into the three shipped formats (.pt, .npz, Keras 2 .h5).

Owns conversion only. Reads the checkpoint written by train_phantom_dcgan.py and writes, under
medigan_iso/data/models/:
  demo_torch/generator.pt   torch.save of the folded state_dict (loads with torch.load(weights_only=True))
  demo_numpy/generator.npz  w0..w4 (in, out, 4, 4) kernels and b0..b4 biases, float32, no pickles
  demo_tf/generator.h5      Keras 2 functional model (tf.keras 2.12), built from the .npz in a TF venv
  demo_tf1/generator.pb     TensorFlow 1.15 frozen GraphDef (weights as constants), built from the .npz in a
                            Python 3.7 venv
Each BatchNorm (eval mode, running statistics) is folded into the preceding ConvTranspose2d:
  scale = gamma / sqrt(running_var + eps); W'[:, c] = W[:, c] * scale[c]; b'[c] = beta[c] - mean[c] * scale[c]
so all three formats hold the same five ConvTranspose layers with bias.

Usage (from the repository root; the first venv holds torch==2.13.0 + numpy, the second
tensorflow-cpu==2.12.1 + h5py, the third is a Python 3.7 venv with demo-tf1's pins, tensorflow==1.15.5
numpy==1.18.5 protobuf==3.20.3 h5py==2.10.0):

    python demo_models/convert.py --checkpoint /tmp/demo-train-out/checkpoint.pt \
        --tf-python /tmp/demo-tf/bin/python --tf1-python /tmp/demo-tf1/bin/python

The TF steps run as ``<tf-python> demo_models/convert.py keras --npz ... --out ...`` and
``<tf1-python> demo_models/convert.py tf1 --npz ... --out ...`` in subprocesses, since TF 2.12 needs numpy
1.2x, TF 1.15 needs Python 3.7 and numpy < 1.19, and torch 2.13 wants numpy 2. This file must stay
importable on Python 3.7 for that step. Not part of the medigan_iso wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "medigan_iso" / "data" / "models"
LATENT_SIZE = 100
STRIDES = (1, 2, 2, 2, 2)
PADDINGS = (0, 1, 1, 1, 1)


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fold(generator_state: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) per ConvTranspose layer, BatchNorm folded in; keys follow make_generator()'s layout."""
    import torch

    layers = []
    index = 0
    while f"{index}.weight" in generator_state:
        weight = generator_state[f"{index}.weight"].to(torch.float64)
        bn = f"{index + 1}.running_mean"
        if bn in generator_state:
            gamma = generator_state[f"{index + 1}.weight"].to(torch.float64)
            beta = generator_state[f"{index + 1}.bias"].to(torch.float64)
            mean = generator_state[bn].to(torch.float64)
            var = generator_state[f"{index + 1}.running_var"].to(torch.float64)
            scale = gamma / torch.sqrt(var + 1e-5)  # BatchNorm2d's default eps
            weight = weight * scale[None, :, None, None]
            bias = beta - mean * scale
            index += 3  # ConvTranspose, BatchNorm, ReLU
        else:
            bias = generator_state[f"{index}.bias"].to(torch.float64)
            index += 2  # ConvTranspose, Tanh
        layers.append((weight.to(torch.float32).numpy(), bias.to(torch.float32).numpy()))
    return layers


def export_torch_and_numpy(checkpoint: Path) -> None:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["generator"]
    layers = fold(state)

    demo_torch = _import_file("demo_torch", MODELS / "demo_torch" / "__init__.py")
    network = demo_torch.build_generator()
    folded = {}
    for i, (weight, bias) in enumerate(layers):
        folded[f"{2 * i}.weight"] = torch.from_numpy(weight.copy())
        folded[f"{2 * i}.bias"] = torch.from_numpy(bias.copy())
    network.load_state_dict(folded)  # strict: the key layout must match the package's network
    torch.save(network.state_dict(), MODELS / "demo_torch" / "generator.pt")

    arrays = {f"w{i}": w for i, (w, _) in enumerate(layers)} | {f"b{i}": b for i, (_, b) in enumerate(layers)}
    np.savez(MODELS / "demo_numpy" / "generator.npz", **arrays)

    # Check the fold against the training network in eval mode.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_phantom_dcgan import make_generator

    reference = make_generator()
    reference.load_state_dict(state)
    reference.eval()
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((64, LATENT_SIZE)).astype(np.float32))
    with torch.no_grad():
        expected = reference(z.reshape(-1, LATENT_SIZE, 1, 1))
        got = network.eval()(z.reshape(-1, LATENT_SIZE, 1, 1))
    print(f"fold check: max abs diff {float((expected - got).abs().max()):.2e}")


def export_keras(npz: Path, out: Path) -> None:
    """Build the Keras 2 model from the .npz and save it as HDF5 (runs in the TF venv)."""
    import tensorflow as tf

    with np.load(npz, allow_pickle=False) as archive:
        layers = [(archive[f"w{i}"], archive[f"b{i}"]) for i in range(len(STRIDES))]
    inputs = tf.keras.Input(shape=(LATENT_SIZE,), name="latent")
    x = tf.keras.layers.Reshape((1, 1, LATENT_SIZE))(inputs)
    convs = []
    for i, (weight, _) in enumerate(layers):
        # torch's padding=1 with k=4, s=2 crops one pixel per side: exactly Keras "same" for these shapes.
        conv = tf.keras.layers.Conv2DTranspose(
            weight.shape[1],
            4,
            strides=STRIDES[i],
            padding="valid" if PADDINGS[i] == 0 else "same",
            activation="tanh" if i == len(layers) - 1 else "relu",
            name=f"deconv{i}",
        )
        x = conv(x)
        convs.append(conv)
    model = tf.keras.Model(inputs, x, name="phantom_dcgan_generator")
    for conv, (weight, bias) in zip(convs, layers):
        # torch ConvTranspose2d kernel (in, out, kh, kw) -> Keras Conv2DTranspose kernel (kh, kw, out, in).
        conv.set_weights([weight.transpose(2, 3, 1, 0), bias])
    model.save(out, save_format="h5", include_optimizer=False)
    print(f"wrote {out} (tensorflow {tf.__version__}, numpy {np.__version__})")


def export_tf1_graph(npz: Path, out: Path) -> None:
    """Build a TF 1.15 graph from the .npz and save it frozen (weights as constants) as a GraphDef.

    Runs in the Python 3.7 / tensorflow==1.15.5 venv. The graph's input is ``latent:0`` (float32, (n, 100)),
    its output ``image:0`` (float32, (n, 64, 64, 1), tanh), the layout demo_tf1/__init__.py expects.
    """
    import tensorflow as tf

    with np.load(npz, allow_pickle=False) as archive:
        layers = [(archive[f"w{i}"], archive[f"b{i}"]) for i in range(len(STRIDES))]
    graph = tf.Graph()
    with graph.as_default():
        latent = tf.compat.v1.placeholder(tf.float32, (None, LATENT_SIZE), name="latent")
        x = tf.reshape(latent, (-1, 1, 1, LATENT_SIZE))
        size = 1
        for i, (weight, bias) in enumerate(layers):
            stride, pad = STRIDES[i], PADDINGS[i]
            size = (size - 1) * stride - 2 * pad + weight.shape[2]
            # torch ConvTranspose2d kernel (in, out, kh, kw) -> conv2d_transpose filter (kh, kw, out, in);
            # torch's padding=1 with k=4, s=2 is TF's "SAME" for these shapes, padding=0 is "VALID".
            kernel = tf.constant(weight.transpose(2, 3, 1, 0), name=f"deconv{i}/kernel")
            shape = tf.stack([tf.shape(x)[0], size, size, weight.shape[1]])
            x = tf.nn.conv2d_transpose(
                x, kernel, shape, strides=[1, stride, stride, 1], padding="VALID" if pad == 0 else "SAME"
            )
            x = tf.nn.bias_add(x, tf.constant(bias, name=f"deconv{i}/bias"))
            x = tf.tanh(x) if i == len(layers) - 1 else tf.nn.relu(x)
        tf.identity(x, name="image")
    # deterministic=True: node attributes are protobuf maps, serialised in hash order otherwise.
    out.write_bytes(graph.as_graph_def().SerializeToString(deterministic=True))
    # Check the frozen graph against the numpy forward pass of demo_numpy.
    demo_numpy = _import_file("demo_numpy", MODELS / "demo_numpy" / "__init__.py")
    z = np.random.RandomState(0).standard_normal((64, LATENT_SIZE)).astype(np.float32)
    expected = demo_numpy.generate(npz, 0, None, False, input_latent_vector=z, output="float")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(out.read_bytes())
    check = tf.Graph()
    with check.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=check) as session:
        got = session.run("image:0", {"latent:0": z})
    print(f"wrote {out} (tensorflow {tf.__version__}, numpy {np.__version__})")
    print(f"tf1 check: max abs diff vs demo_numpy {float(np.abs(np.stack(expected) - got).max()):.2e}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["keras"], ["tf1"]):
        parser = argparse.ArgumentParser(prog=f"convert.py {argv[0]}")
        parser.add_argument("--npz", type=Path, required=True)
        parser.add_argument("--out", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        (export_keras if argv[0] == "keras" else export_tf1_graph)(args.npz, args.out)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--tf-python", type=Path, required=True, help="python of a tensorflow-cpu==2.12.1 venv"
    )
    parser.add_argument(
        "--tf1-python", type=Path, required=True, help="python of a Python 3.7 tensorflow==1.15.5 venv"
    )
    args = parser.parse_args(argv)
    export_torch_and_numpy(args.checkpoint)
    for python, step, out in (
        (args.tf_python, "keras", MODELS / "demo_tf" / "generator.h5"),
        (args.tf1_python, "tf1", MODELS / "demo_tf1" / "generator.pb"),
    ):
        npz = MODELS / "demo_numpy" / "generator.npz"
        script = str(Path(__file__).resolve())
        subprocess.run([str(python), script, step, "--npz", str(npz), "--out", str(out)], check=True)
    for path in sorted(MODELS.glob("demo_*/generator.*")):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
