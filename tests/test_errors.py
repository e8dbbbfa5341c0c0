"""Bad input gives a clear ValueError/OSError, raised early, whose message names the file, key, field or shape."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import levit_np
from helpers import SMALL

KEY = "levit.encoder.stages.0.layers.0.module.queries_keys_values.linear.weight"


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A private, writable copy of a small valid checkpoint."""
    _, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SMALL)
    shutil.copytree(path, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_weights(path, edit):
    f = path / "model.safetensors"
    t = load_file(f)
    edit(t)
    save_file(t, f)


def edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (regex-escaped)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments))


# --- files --------------------------------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with raises(FileNotFoundError, tmp_path / "nope"):
        levit_np.from_pretrained(tmp_path / "nope")


def test_a_file_is_not_a_checkpoint(ckpt):
    with raises(NotADirectoryError, ckpt / "config.json", "directory"):
        levit_np.from_pretrained(ckpt / "config.json")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with raises(FileNotFoundError, "config.json"):
        levit_np.from_pretrained(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with raises(FileNotFoundError, "model.safetensors"):
        levit_np.from_pretrained(ckpt)


def test_pytorch_bin_only_says_to_convert(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with raises(FileNotFoundError, "model.safetensors", "pytorch_model.bin", "safetensors"):
        levit_np.from_pretrained(ckpt)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(ckpt, damage):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 64, "empty": b""}[damage])
    with raises(OSError, f, "safetensors"):
        levit_np.from_pretrained(ckpt)


def test_malformed_config_json(ckpt):
    (ckpt / "config.json").write_text('{"hidden_sizes": [32, 48, ')
    with raises(ValueError, "config.json", "JSON"):
        levit_np.from_pretrained(ckpt)


@pytest.mark.parametrize("field,value,fragment", [
    ("hidden_sizes", "wide", "hidden_sizes"),
    ("depths", [1, 1], "depths"),
    ("key_dim", [8, 0, 8], "key_dim"),
    ("num_attention_heads", [2, 3.5, 4], "num_attention_heads"),
    ("image_size", 72, "multiple of 16"),
    ("model_type", "vit", "model_type"),
    ("id2label", {"a": "cat"}, "id2label"),
    ("down_ops", [["Pool", 8, 4, 4, 2, 2]], "down_ops"),
])
def test_invalid_config_field_is_named(ckpt, field, value, fragment):
    edit_config(ckpt, lambda c: c.__setitem__(field, value))
    with raises(ValueError, "config.json", fragment):
        levit_np.from_pretrained(ckpt)


# --- tensors vs config --------------------------------------------------------------------------------------------

# Keys are named exactly as the file spells them (quoted), prefix and all; the heads never carry `levit.`
@pytest.mark.parametrize("key", [KEY, "levit.encoder.stages.0.layers.2.keys_values.batch_norm.bias",
                                 "levit.patch_embeddings.embedding_layer_1.convolution.weight",
                                 "classifier_distill.linear.weight"])
def test_missing_tensor_is_named(ckpt, key):
    edit_weights(ckpt, lambda t: t.pop(key))
    with raises(ValueError, f"'{key}'", "missing"):
        levit_np.from_pretrained(ckpt)


def test_missing_tensor_of_an_unprefixed_file_is_named_unprefixed(checkpoint, tmp_path):
    _, path = checkpoint("LevitModel", num_labels=10, **SMALL)  # a bare LevitModel: no `levit.` prefix
    shutil.copytree(path, tmp_path / "ckpt")
    key = KEY.removeprefix("levit.")
    edit_weights(tmp_path / "ckpt", lambda t: t.pop(key))
    with raises(ValueError, f"'{key}'", "missing"):
        levit_np.from_pretrained(tmp_path / "ckpt")


def test_wrong_shape_names_key_expected_and_found(ckpt):
    edit_weights(ckpt, lambda t: t.__setitem__(KEY, np.zeros((5, 32), np.float32)))
    with raises(ValueError, f"'{KEY}'", "(5, 32)", "(64, 32)"):  # 2 heads * (8+8+16) = 64
        levit_np.from_pretrained(ckpt)


def test_integer_tensor_is_refused(ckpt):
    edit_weights(ckpt, lambda t: t.__setitem__(KEY, t[KEY].astype(np.int32)))
    with raises(ValueError, f"'{KEY}'", "I32"):
        levit_np.from_pretrained(ckpt)


@pytest.mark.parametrize("field,value,fragment", [
    ("hidden_sizes", [40, 48, 64], "hidden_sizes=[40, 48, 64]"),  # a shape error by key, naming the config
    ("num_attention_heads", [4, 3, 4], "num_attention_heads"),
    ("depths", [2, 1, 1], "missing tensor"),  # more layers than the file has
    ("depths", [1, 1, 0], "unexpected tensor"),  # fewer layers than the file has
    ("id2label", {str(i): f"c{i}" for i in range(7)}, "num_labels=7"),
])
def test_config_that_disagrees_with_tensors(ckpt, field, value, fragment):
    edit_config(ckpt, lambda c: c.__setitem__(field, value))
    with raises(ValueError, "model.safetensors", fragment):
        levit_np.from_pretrained(ckpt)


def test_unknown_backend_and_dtype(ckpt):
    with raises(ValueError, "backend", "tpu"):
        levit_np.from_pretrained(ckpt, backend="tpu")
    with raises(ValueError, "dtype", "float16"):
        levit_np.from_pretrained(ckpt, dtype="float16")


# --- pixel_values -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64), (1, 3, 224, 224),
                                   (1, 3, 64, 48), (0, 3, 64, 64), (1, 64, 64, 3)])
def test_wrong_pixel_values_shape_says_what_is_expected(ckpt, shape):
    model = levit_np.from_pretrained(ckpt)
    with raises(ValueError, "(B, 3, 64, 64)", str(shape)):
        model(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.zeros((1, 3, 64, 64), np.uint8), [[[[0.0]]]], np.zeros((1, 3, 64, 64), object)])
def test_pixel_values_must_be_a_float_array(ckpt, bad):
    model = levit_np.from_pretrained(ckpt)
    with raises(ValueError, "pixel_values", "preprocess"):
        model(bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_weights_are_refused_naming_the_key(ckpt, bad, dtype):
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    f = ckpt / "model.safetensors"
    t = {k: v.to(getattr(torch, dtype)) for k, v in load_torch(f).items()}
    t[KEY][1, 2] = bad
    save_torch(t, f)
    with raises(ValueError, f"'{KEY}'", "NaN or infinite"):
        levit_np.from_pretrained(ckpt)


def test_weights_file_that_is_a_directory(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").mkdir()
    with raises(IsADirectoryError, ckpt / "model.safetensors", "directory"):
        levit_np.from_pretrained(ckpt)


def test_sharded_checkpoint_loads_like_the_whole_one(checkpoint, tmp_path):
    hf_model, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SMALL)
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    whole = levit_np.from_pretrained(path, backend="numpy")(x).logits
    np.testing.assert_array_equal(levit_np.from_pretrained(tmp_path / "sharded", backend="numpy")(x).logits, whole)


def test_sharded_index_naming_a_missing_shard(checkpoint, tmp_path):
    hf_model, _ = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SMALL)
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[0]
    shard.unlink()
    with raises(FileNotFoundError, shard.name):
        levit_np.from_pretrained(tmp_path / "sharded")
