"""Random checkpoints for tests, benchmarks and the notebook: an HF LeViT with every parameter and buffer redrawn.

HF's default init makes every BatchNorm an identity and every bias zero, which hides exactly the bugs a port makes
(BN axis, running statistics, bias-table indexing); so every float parameter and buffer is redrawn here, scaled so
that activations stay O(1) through the whole network. Needs torch and transformers (`pip install levit-np[test]`);
they are imported inside the functions, so `import levit_np` never imports them.
"""

from __future__ import annotations

import math
from pathlib import Path

from .config import VARIANTS

WITH_TEACHER = "LevitForImageClassificationWithTeacher"


def hf_config(num_labels: int = 1000, down_ops=None, **config_kw):
    """A transformers.LevitConfig; drop_path_rate=0 (levit-384's 0.1 fails transformers 5.x's strict validation,
    and eval ignores it anyway). `down_ops` ([["Subsample", key_dim, heads, attention_ratio, mlp_ratio, stride],
    ...]) replaces the ones HF derives from key_dim and hidden_sizes, as a config.json that holds them does."""
    import transformers

    config_kw.setdefault("drop_path_rate", 0)
    config = transformers.LevitConfig(num_labels=num_labels, **config_kw)
    if down_ops is not None:  # the constructor always derives them; from_dict keeps the given ones
        config = transformers.LevitConfig.from_dict({**config.to_dict(), "down_ops": down_ops})
    return config


def randomize_(model, seed: int = 0):
    """Redraw every float parameter and buffer of an HF LeViT in place; returns the model."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(t, lo=None, hi=None, std=None):
        new = (torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo if std is None
               else torch.randn(t.shape, generator=g, dtype=torch.float64) * std)
        t.copy_(new.to(t.dtype))

    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.dtype.is_floating_point:
                continue  # num_batches_tracked, attention_bias_idxs
            if name.endswith("running_var"):
                draw(t, 0.5, 2.0)
            elif name.endswith("running_mean"):
                draw(t, std=0.2)
            elif name.endswith("batch_norm.weight"):
                draw(t, 0.5, 1.5)
            elif name.endswith("batch_norm.bias") or name.endswith("linear.bias"):
                draw(t, std=0.2)
            elif name.endswith("attention_biases"):
                draw(t, std=1.0)
            elif name.endswith("weight"):  # linear (out, in) / conv (out, in, k, k)
                draw(t, std=1 / math.sqrt(t[0].numel()))
            else:
                raise AssertionError(f"randomize_: no rule for {name}")
    return model


def build_hf(cls_name: str = WITH_TEACHER, seed: int = 0, num_labels: int = 1000, **config_kw):
    """An eval-mode HF LeViT of class `cls_name` with every parameter and buffer randomised."""
    import transformers

    cls = getattr(transformers, cls_name)
    return randomize_(cls(hf_config(num_labels=num_labels, **config_kw)).eval(), seed)


def save_hf(model, path, dtype=None) -> str:
    """save_pretrained (optionally cast to the torch `dtype` first); returns the directory as str."""
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(path))
    return str(path)


def random_checkpoint(path, variant: str = "128S", cls_name: str = WITH_TEACHER, seed: int = 0, **config_kw) -> Path:
    """Write a randomised checkpoint of a released variant's shape ("128S", ..., "384") to `path`; returns it."""
    config_kw = {**{k: list(v) for k, v in VARIANTS[variant].items()}, **config_kw}
    save_hf(build_hf(cls_name, seed=seed, **config_kw), path)
    return Path(path)
