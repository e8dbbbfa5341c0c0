"""Checkpoint formats levit_np must read: half precision, old files with extra buffers, keys with and without the
`levit.` prefix; and the config it exposes. Each is checked against HF's own forward pass."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import levit_np
from helpers import HF_VARIANTS, SMALL, build_hf, compare_outputs, hf_forward, random_pixels, randomize_, save_hf
from levit_np.config import VARIANTS


def rewrite_weights(path, edit):
    """Apply `edit(dict of np arrays) -> dict` to path/model.safetensors in place."""
    f = f"{path}/model.safetensors"
    save_file(edit(load_file(f)), f, metadata={"format": "pt"})


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_are_upcast(checkpoint, tmp_path, half):
    hf, _ = checkpoint("LevitForImageClassificationWithTeacher", **HF_VARIANTS["128S"])
    path = save_hf(copy.deepcopy(hf).to(half), tmp_path)  # never cast the shared fixture
    # the reference: HF itself loading the same half-precision file, upcast to float32 (not the cast-back copy: HF's
    # LevitAttention caches its gathered bias table on the first eval call, and a copy keeps the unrounded one)
    hf_rounded = type(hf).from_pretrained(path, dtype=torch.float32).eval()
    model = levit_np.from_pretrained(path)
    x = random_pixels(2)
    compare_outputs(model(x, output_hidden_states=True), hf_forward(hf_rounded, x), type(hf).__name__)
    assert model(x).logits.dtype == np.float32


def test_old_checkpoints_with_bias_idxs_and_bn_counters_load(checkpoint, tmp_path):
    """Old files carry `attention_bias_idxs` (and num_batches_tracked): ignored, our tables are rebuilt."""
    hf, path = checkpoint("LevitForImageClassification", **SMALL)
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)

    def add_stale_buffers(t):
        for k in [k for k in t if k.endswith("attention_biases")]:
            n = t[k].shape[1]
            t[k.replace("attention_biases", "attention_bias_idxs")] = np.zeros((7, n), np.int64)  # wrong on purpose
        assert any(k.endswith("num_batches_tracked") for k in t)
        return t

    rewrite_weights(tmp_path, add_stale_buffers)
    x = random_pixels(2, 64)
    compare_outputs(levit_np.from_pretrained(tmp_path)(x, output_hidden_states=True), hf_forward(hf, x),
                    "LevitForImageClassification")


def test_classification_checkpoint_without_levit_prefix_loads(checkpoint, tmp_path):
    hf, path = checkpoint("LevitForImageClassificationWithTeacher", **SMALL)
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    rewrite_weights(tmp_path, lambda t: {k.removeprefix("levit."): v for k, v in t.items()})
    x = random_pixels(1, 64)
    compare_outputs(levit_np.from_pretrained(tmp_path)(x, output_hidden_states=True), hf_forward(hf, x),
                    "LevitForImageClassificationWithTeacher")


def test_architecture_is_inferred_from_keys_without_config_architectures(checkpoint, tmp_path):
    _, path = checkpoint("LevitForImageClassificationWithTeacher", **SMALL)
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert levit_np.from_pretrained(tmp_path).architecture == "LevitForImageClassificationWithTeacher"


def test_config_holds_what_the_forward_pass_uses(checkpoint):
    hf, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=5, **SMALL)
    c = levit_np.from_pretrained(path).config
    h = hf.config
    for name in ("hidden_sizes", "num_attention_heads", "depths", "key_dim", "mlp_ratio", "attention_ratio"):
        assert list(getattr(c, name)) == list(getattr(h, name)), name
    for name in ("image_size", "patch_size", "num_channels", "kernel_size", "stride", "padding"):
        assert getattr(c, name) == getattr(h, name), name
    assert c.id2label == h.id2label and all(isinstance(k, int) for k in c.id2label) and c.num_labels == 5
    # down_ops as HF's LevitConfig writes it: [Subsample, key_dim[0], hidden_sizes[s] // key_dim[0], 4, 2, 2]
    assert [[d.key_dim, d.num_attention_heads, d.attention_ratio, d.mlp_ratio, d.stride] for d in c.down_ops] == \
        [op[1:] for op in h.down_ops if op[0] == "Subsample"]
    assert c.resolutions == ((4, 4), (2, 2), (1, 1))  # (rows, columns) per stage


def test_down_ops_from_config_json_are_honoured(tmp_path):
    """HF reads down_ops from config.json (it does not recompute them): so must we."""
    hf = build_hf("LevitModel", hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
                  key_dim=[8, 8, 8], image_size=64)
    cfg = hf.config.to_dict()
    cfg["down_ops"] = [["Subsample", 4, 2, 2, 1, 2], ["Subsample", 8, 3, 3, 0, 2]]
    hf = randomize_(type(hf)(type(hf.config).from_dict(cfg)).eval(), seed=3)
    assert hf.encoder.stages[0].layers[-2].num_attention_heads == 2  # HF took our down_ops
    x = random_pixels(2, 64)
    compare_outputs(levit_np.from_pretrained(save_hf(hf, tmp_path))(x, output_hidden_states=True),
                    hf_forward(hf, x), "LevitModel")


def test_variant_table_matches_hf_test_table():
    for name, cfg in VARIANTS.items():
        assert {k: list(v) for k, v in cfg.items()} == HF_VARIANTS[name]


def test_float64_runs_in_float64_end_to_end(checkpoint):
    _, path = checkpoint("LevitForImageClassificationWithTeacher", **SMALL)
    model = levit_np.from_pretrained(path, dtype="float64")
    out = model(random_pixels(1, 64), output_hidden_states=True)  # float32 input is cast up
    assert model.dtype == np.float64
    assert {a.dtype for a in (out.logits, out.cls_logits, out.pooler_output, *out.hidden_states)} == {np.dtype("f8")}


def test_num_parameters_counts_what_torch_counts(checkpoint):
    for cls_name in ("LevitModel", "LevitForImageClassificationWithTeacher"):
        hf, path = checkpoint(cls_name, **HF_VARIANTS["128S"])
        assert levit_np.from_pretrained(path).num_parameters == sum(p.numel() for p in hf.parameters())
