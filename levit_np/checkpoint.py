"""Read a checkpoint directory written by HF `save_pretrained` into a nested dict of NumPy arrays.

Every tensor is checked against the shapes the config implies before the model is built, so a mismatch is
reported by key, with the expected and the found shape, rather than as a NumPy error in the forward pass.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import safetensors

from .config import NUM_STAGES, Layer, LevitConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"  # a sharded save_pretrained: {"weight_map": {key: shard file name}}

# safetensors dtype -> NumPy dtype (little-endian, as the format specifies). BF16 has no NumPy dtype: see _to_numpy.
_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "<u2"}
# Tensors old checkpoints carry that we never use: the bias index tables are rebuilt from the config.
_IGNORED_SUFFIXES = (".num_batches_tracked", ".attention_bias_idxs")


def load_checkpoint(path: str | Path, dtype=np.float32) -> tuple[LevitConfig, str, dict]:
    """Load `path/config.json` + `path/model.safetensors`. Returns (config, architecture, params).

    `params` is the weight tree in our own layout, which mirrors `config.plan` one to one:
    {"patch_embeddings": {...}, "stages": [{"blocks": [layer, ...], "downsample": [layer, ...]}, ...],
    "classifier": {...}, "classifier_distill": {...}}; each layer's dict is keyed as `Layer.shapes()` says.
    HF's layout (the `levit.` prefix, the `.module` of residual layers, the downsampling layers at the end of the
    previous stage's list) ends here.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory: expected a directory holding {CONFIG_NAME} and "
                                 f"{WEIGHTS_NAME}, as written by HF save_pretrained")
    config = LevitConfig.from_json(path / CONFIG_NAME)
    tensors, file = read_weights(path)
    architecture = config.architecture or _infer_architecture(tensors)
    flat = _check_against_config(tensors, config, architecture, file)
    return config, architecture, weight_tree({k: _to_numpy(t, dtype) for k, t in flat.items()}, config)


def weight_tree(arrays: dict[str, np.ndarray], config: LevitConfig) -> dict:
    """{HF key without `levit.`: array} (every key `expected_shapes` lists) -> our weight tree (`load_checkpoint`)."""
    def subtree(prefix: str) -> dict:  # every tensor under HF key `prefix`, nested by the rest of its key
        return _nest({k[len(prefix) + 1:]: a for k, a in arrays.items() if k.startswith(prefix + ".")})

    layers = iter(hf_layer_keys(config))
    params = {"patch_embeddings": subtree("patch_embeddings"),
              "stages": [{"blocks": [subtree(next(layers)[1]) for _ in stage.blocks],
                          "downsample": [subtree(next(layers)[1]) for _ in stage.downsample]}
                         for stage in config.plan]}
    for head in ("classifier", "classifier_distill"):
        if any(k.startswith(head + ".") for k in arrays):
            params[head] = subtree(head)
    return params


def random_weights(config: LevitConfig, architecture: str, dtype=np.float32, seed: int = 0) -> dict:
    """A weight tree of random numbers for `config` (no file, no torch): for timing and for compiling kernels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in expected_shapes(config, architecture).items():
        scale = 1 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.2
        arrays[key] = (rng.standard_normal(shape) * scale).astype(dtype)
        if key.endswith(("running_var", "batch_norm.weight")):
            arrays[key] = np.abs(arrays[key]) + dtype(0.5)
    return weight_tree(arrays, config)


def hf_layer_keys(config: LevitConfig) -> list[tuple[Layer, str]]:
    """(layer, HF key prefix of its weights) for every encoder layer, in `config.plan` order.

    HF's LevitStage s lists its blocks, then the downsampling of stages 0 and 1; residual layers wrap their weights
    in `.module`, the downsampling attention does not.
    """
    keys = []
    for s, stage in enumerate(config.plan):
        for i, layer in enumerate(stage.layers):
            key = f"encoder.stages.{s}.layers.{i}"
            keys.append((layer, key if layer.kind == "attention_subsample" else key + ".module"))
    return keys


def read_weights(path: Path) -> tuple[dict[str, dict], Path]:
    """Every tensor of a checkpoint directory, from model.safetensors or, when it is sharded, from the shards its
    index lists; and the file to name in errors."""
    index = path / INDEX_NAME
    if (path / WEIGHTS_NAME).exists() or not index.is_file():
        return read_safetensors(path / WEIGHTS_NAME), path / WEIGHTS_NAME
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {e}") from None
    tensors = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ValueError(f"{index}: shard {shard!r} is not a file name in {path}")
        for key, t in read_safetensors(path / shard).items():
            if key in tensors:
                raise ValueError(f"{index}: tensor {key!r} appears in more than one shard")
            tensors[key] = t
    return tensors, index


def read_safetensors(path: Path) -> dict[str, dict]:
    """{key: {"dtype", "shape", "data"}} for every tensor of a safetensors file; OSError naming a bad file."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a safetensors weights file")
    if not path.is_file():
        hint = ""
        if (path.parent / "pytorch_model.bin").exists():
            hint = (" (found pytorch_model.bin: levit-np reads only safetensors; convert with "
                    "`model.save_pretrained(dir, safe_serialization=True)` in transformers)")
        raise FileNotFoundError(f"weights file not found: {path}{hint}")
    try:  # safetensors checks the header (its size, every tensor's extent against the file) before any data is read
        with safetensors.safe_open(path, framework="numpy"):
            pass
    except safetensors.SafetensorError as e:
        raise OSError(f"{path}: not a valid safetensors file, truncated or corrupt? ({e})") from None
    with path.open("rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        # mapped, not read: only the tensors the config asks for are touched, each once (checked, then converted)
        data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[8 + header_size:]
    return {key: {"dtype": t["dtype"], "shape": t["shape"], "data": data[t["data_offsets"][0]:t["data_offsets"][1]]}
            for key, t in header.items() if key != "__metadata__"}


def _infer_architecture(tensors) -> str:
    keys = [k.removeprefix("levit.") for k in tensors]
    if any(k.startswith("classifier_distill.") for k in keys):
        return "LevitForImageClassificationWithTeacher"
    if any(k.startswith("classifier.") for k in keys):
        return "LevitForImageClassification"
    return "LevitModel"


def expected_shapes(config: LevitConfig, architecture: str) -> dict[str, tuple[int, ...]]:
    """Every tensor key (without `levit.`) the checkpoint must hold, with its shape."""
    shapes = {}
    c0, k = config.hidden_sizes[0], config.kernel_size
    stem = [config.num_channels, c0 // 8, c0 // 4, c0 // 2, c0]
    for i in range(4):
        key = f"patch_embeddings.embedding_layer_{i + 1}"
        shapes[f"{key}.convolution.weight"] = (stem[i + 1], stem[i], k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.batch_norm.{p}"] = (stem[i + 1],)
    for layer, key in hf_layer_keys(config):
        shapes.update({f"{key}.{name}": shape for name, shape in layer.shapes().items()})
    heads = {"LevitModel": (), "LevitForImageClassification": ("classifier",),
             "LevitForImageClassificationWithTeacher": ("classifier", "classifier_distill")}[architecture]
    C, n = config.hidden_sizes[NUM_STAGES - 1], config.num_labels
    for head in heads if n > 0 else ():  # HF uses nn.Identity (no weights) when num_labels == 0
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{head}.batch_norm.{p}"] = (C,)
        shapes[f"{head}.linear.weight"] = (n, C)
        shapes[f"{head}.linear.bias"] = (n,)
    return shapes


def _check_against_config(tensors, config, architecture, file) -> dict[str, dict]:
    """The tensors the config implies, keyed without `levit.`; errors name each key as the file spells it."""
    flat, spelling = {}, {}
    for key, t in tensors.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        name = key.removeprefix("levit.")
        if name in flat:
            raise ValueError(f"{file}: tensor {name!r} appears both with and without the 'levit.' prefix")
        flat[name], spelling[name] = t, key
    prefixed = any(k.startswith("levit.") for k in spelling.values())

    def spelled(name):  # a key as this file spells it (or would: the heads never carry the prefix)
        if name in spelling:
            return spelling[name]
        return f"levit.{name}" if prefixed and not name.startswith("classifier") else name

    want = expected_shapes(config, architecture)
    missing = [k for k in want if k not in flat]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{file}: missing tensor {spelled(missing[0])!r}{more} for a {architecture} with this "
                         f"config.json")
    unexpected = [k for k in flat if k not in want]
    if unexpected:
        raise ValueError(f"{file}: unexpected tensor {spelled(unexpected[0])!r} ({len(unexpected)} in all): "
                         f"config.json (depths={list(config.depths)}, architecture {architecture}) disagrees with "
                         f"the weights")
    for key, shape in want.items():
        found = tuple(flat[key]["shape"])
        if found != shape:
            raise ValueError(f"{file}: tensor {spelled(key)!r} has shape {found}, but config.json implies {shape} "
                             f"(hidden_sizes={list(config.hidden_sizes)}, "
                             f"num_attention_heads={list(config.num_attention_heads)}, "
                             f"key_dim={list(config.key_dim)}, num_labels={config.num_labels})")
        if flat[key]["dtype"] not in _DTYPES:
            raise ValueError(f"{file}: tensor {spelled(key)!r} has dtype {flat[key]['dtype']}, expected a float "
                             f"type ({', '.join(_DTYPES)})")
        if not _all_finite(flat[key]):
            raise ValueError(f"{file}: tensor {spelled(key)!r} holds NaN or infinite values: the checkpoint is "
                             f"broken (every prediction would be NaN)")
    return flat


def _all_finite(t: dict) -> bool:
    raw = np.frombuffer(t["data"], dtype=_DTYPES[t["dtype"]])
    if t["dtype"] == "BF16":  # exponent bits all ones: inf or NaN
        return not ((raw & 0x7F80) == 0x7F80).any()
    return bool(np.isfinite(raw).all())


def _to_numpy(t: dict, dtype) -> np.ndarray:
    raw = np.frombuffer(t["data"], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    if t["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(dtype)  # always a fresh, writable, native-endian copy


def _nest(flat: dict[str, np.ndarray]) -> dict:
    """{"a.b": x} -> {"a": {"b": x}}: dotted keys become nested dicts."""
    root = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = root
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return root
