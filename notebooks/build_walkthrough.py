"""Build, execute and save notebooks/levit_walkthrough.ipynb (with its outputs) from the cells below.

    python notebooks/build_walkthrough.py            # rebuild + execute on a fresh kernel (~1 min) + export figures
    python notebooks/build_walkthrough.py --no-exec  # rebuild the cells only (outputs dropped)

The notebook is the artefact (committed with its outputs so it reads on GitHub); this file is its source: edit the
cells here, never the .ipynb by hand. tests/test_notebook.py checks the two agree and executes the notebook.
Cells tagged `figure:NAME` have their image exported to notebooks/figures/NAME.png (used by the README).
Needs the `notebook` extra: pip install -e ".[test,notebook]" (torch==2.13.0 first).
"""

# ruff: noqa: RUF001  (the markdown cells typeset multiplication and minus signs as such)
from __future__ import annotations

import argparse
import base64
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "levit_walkthrough.ipynb"
FIGURES = HERE / "figures"
KERNEL = "python3"
CELL_TIMEOUT = 600  # seconds; the whole notebook takes about a minute on two cores

CELLS: list = []


def md(text: str) -> None:
    CELLS.append(("markdown", textwrap.dedent(text).strip(), None))


def code(text: str, figure: str | None = None) -> None:
    CELLS.append(("code", textwrap.dedent(text).strip(), figure))


# =====================================================================================================================
md(r"""
# LeViT from NumPy ops, checked against Hugging Face at every step

**LeViT** (Graham et al. 2021, [arXiv 2104.01136](https://arxiv.org/abs/2104.01136)) is a vision transformer
"in ConvNet's clothing", designed for fast inference: a convolutional stem instead of a patch projection, a
pyramid of three stages whose token grid shrinks 14×14 → 7×7 → 4×4 like a CNN's feature maps, BatchNorm instead of
LayerNorm, Hardswish activations, a *learned attention bias* instead of positional embeddings, attention blocks that
downsample, and no class token (the tokens are averaged).

This notebook takes the model apart with the functions of [`levit_np`](../levit_np) — a pure NumPy implementation
that loads Hugging Face checkpoints — and puts every piece next to the matching module of HF Transformers'
`modeling_levit.py`. Each section ends with a one-line check: `max |levit_np − HF|` on the same input. Nothing is
redefined here: every LeViT function comes from `levit_np` (`levit_np/layers.py` is the readable reference).

| § | what | HF module it is checked against |
|---|---|---|
| 0 | the weights | — |
| 1 | the whole model as one signature; the five variants | `LevitForImageClassificationWithTeacher` |
| 2 | preprocessing a photo | `LevitImageProcessorPil` |
| 3 | the safetensors file | the model's `state_dict()` |
| 4 | the conv stem, Hardswish | `levit.patch_embeddings` |
| 5 | attention biases | `LevitAttention.attention_biases[:, attention_bias_idxs]` |
| 6 | one attention block, step by step | `LevitAttention` |
| 7 | the MLP, a full stage, the downsampling attention | `LevitMLPLayer`, `LevitStage`, `LevitAttentionSubsample` |
| 8 | pooling and the two classifier heads | `LevitClassificationLayer` |
| 9 | attention maps on the photo (`output_attentions=True`) | softmax recomputed from HF's own submodules |
| 10 | `predict`, the Numba backend, timings | HF logits |
| 11 | any input size: bias tables resized, a 448×800 input | `torch.nn.functional.interpolate` |

Stages are numbered 0, 1, 2 as in the code and the checkpoint keys (the paper says 1, 2, 3). Shapes: B batch,
N tokens, C channels, H heads, $d_k$ key dim, R grid side ($N = R^2$).
""")

code(r"""
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # from tqdm.auto, which transformers imports
""")

code(r"""
import os
import re
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers
from IPython.display import Markdown, display
from skimage import data as skdata

import levit_np
from levit_np import layers
from levit_np.checkpoint import expected_shapes, hf_layer_keys, load_checkpoint, read_safetensors
from levit_np.config import VARIANTS, LevitConfig, layer_plan
from levit_np.preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_shape

%config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 80, "image.interpolation": "nearest", "axes.titlesize": 9, "font.size": 8})
torch.set_grad_enabled(False)
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
T_START = time.perf_counter()

PARITY = {}  # every check of this notebook: name -> max |levit_np - HF|


def check(name, ours, ref, rtol=1e-4):
    # the one-line parity check that ends each section: same shape, max abs difference, small relative to the scale
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != HF {ref.shape}"
    err = float(np.abs(ours.astype(np.float64) - ref).max())
    scale = float(np.abs(ref).max())
    PARITY[name] = err
    print(f"{name:<42} max|levit_np - HF| = {err:.2g}   (HF values up to {scale:.3g})")
    assert err <= rtol * max(1.0, scale), f"{name}: parity lost"


def grid_ax(ax, title=None):
    # a token-grid image: no ticks, an optional title
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
""")

# =====================================================================================================================
md(r"""
## 0. The weights

The released checkpoint `facebook/levit-128S` is used when it is on disk: in `weights/levit-128S/` of this checkout
(`python weights/fetch.py levit-128S`) or in the Hugging Face cache (`levit-np fetch facebook/levit-128S`). The
notebook never downloads anything.

Without it, we build a **randomly initialised** LeViT-128S with Transformers, redraw *every* parameter and buffer
(HF's own init makes each BatchNorm an identity and each bias zero, which would hide exactly the mistakes a port
makes), and save it with `save_pretrained`. Then **the labels, predictions and attention maps below are
meaningless**, but every parity check holds just the same: both implementations read the same file.
""")

code(r"""
from levit_np.hub import WeightsNotFoundError, resolve
from levit_np.testing import build_hf

try:
    ckpt = resolve("facebook/levit-128S", download=False)  # weights/levit-128S/, then the HF cache; no download
    REAL = True
except WeightsNotFoundError:
    REAL = False

if REAL:
    hf = transformers.LevitForImageClassificationWithTeacher.from_pretrained(ckpt, dtype=torch.float32).eval()
else:
    # every parameter and buffer redrawn (BN statistics too), scaled so that activations stay O(1)
    hf = build_hf("LevitForImageClassificationWithTeacher", seed=0, num_labels=1000,
                  **{k: list(v) for k, v in VARIANTS["128S"].items()})
    ckpt = Path(tempfile.mkdtemp()) / "levit-128S-random"
    hf.save_pretrained(ckpt)

print(("REAL weights: facebook/levit-128S" if REAL else
       "RANDOM weights (facebook/levit-128S not found on disk): labels are meaningless, parity checks still hold")
      + f"\ncheckpoint directory: {ckpt}")
""")

# =====================================================================================================================
md(r"""
## 1. The whole model as one signature

<center><code>pixel_values</code> (B, 3, 224, 224) &nbsp;⟼&nbsp; <code>logits</code> (B, 1000)</center>

```
pixel_values (1, 3, 224, 224)
 ├─ conv stem: 4 × [conv 3×3 stride 2 + BN], Hardswish between  → (1, 128, 14, 14) → 196 tokens (1, 196, 128)
 ├─ stage 0, 14×14 grid: 2 × [x + Attention(x), x + MLP(x)]      (4 heads)
 │    └─ downsampling attention 14×14 → 7×7, 128 → 256 ch + MLP  → (1, 49, 256)
 ├─ stage 1,  7×7 grid:  3 × [attention, MLP]                     (6 heads)
 │    └─ downsampling attention  7×7 → 4×4, 256 → 384 ch + MLP   → (1, 16, 384)
 ├─ stage 2,  4×4 grid:  4 × [attention, MLP]                     (8 heads)
 └─ mean over the 16 tokens → (1, 384) → two classifiers (BN + Linear) → their average → logits (1, 1000)
```

`levit_np.from_pretrained` reads `config.json` + `model.safetensors`; calling the model runs `levit_forward`.
""")

code(r"""
model = levit_np.from_pretrained(ckpt, backend="numpy")  # the readable reference (the default is "numba")
print(model)
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)  # any normalised image
out = model(x, output_hidden_states=True)
for field in ("logits", "cls_logits", "distillation_logits", "last_hidden_state", "pooler_output"):
    print(f"{field:<20} {getattr(out, field).shape}")
print("hidden_states       ", [h.shape for h in out.hidden_states])
""")

md(r"""
The five released variants differ in width, heads and depth. Parameters and multiply-adds are computed here from
`levit_np`'s own shape rules (`expected_shapes`, `layer_plan`); top-1 is ImageNet-1k from the paper (Table 3).
""")

code(r"""
def macs(c):
    # multiply-adds of one 224 px image: conv stem, every linear, q·kᵀ and p·v, the two heads
    ch, side, total = [3, *(c.hidden_sizes[0] // d for d in (8, 4, 2, 1))], c.image_size, 0
    for i in range(4):
        side //= 2
        total += side * side * ch[i + 1] * ch[i] * 9
    for L in (L for stage in layer_plan(c) for L in stage.layers):
        N, Nq, C, H, kd = L.num_tokens, np.prod(L.resolution_out), L.dim, L.num_attention_heads, L.key_dim
        vd = L.attention_ratio * kd
        if L.kind == "mlp":
            total += 2 * N * C * L.hidden_dim
        else:  # qkv (or kv + q) projections, attention, output projection
            total += (N * C * H * (2 * kd + vd) if L.kind == "attention" else N * C * H * (kd + vd) + Nq * C * H * kd)
            total += Nq * N * H * (kd + vd) + Nq * H * vd * L.out_dim
    return total + 2 * c.hidden_sizes[-1] * c.num_labels

TOP1 = {"128S": 76.6, "128": 78.6, "192": 80.0, "256": 81.6, "384": 82.6}
rows = ["| variant | hidden sizes | heads | depths | key dim | grids | params | M mult-adds | top-1 (paper) |",
        "|---|---|---|---|---|---|---|---|---|"]
for name, kw in VARIANTS.items():
    c = LevitConfig(**kw, id2label={i: str(i) for i in range(1000)})
    n = sum(np.prod(s) for k, s in expected_shapes(c, "LevitForImageClassificationWithTeacher").items()
            if not k.endswith(("running_mean", "running_var")))
    rows.append(f"| LeViT-{name} | {c.hidden_sizes} | {c.num_attention_heads} | {c.depths} | {c.key_dim[0]} | "
                f"{' → '.join(f'{r}²' for r, _ in c.resolutions)} | {n / 1e6:.2f} M | {macs(c) / 1e6:.0f} | "
                f"{TOP1[name]} % |")
display(Markdown("\n".join(rows)))
""")

md(r"""
**Check.** The same input through HF's `LevitForImageClassificationWithTeacher`. In float32 the two differ by
rounding (the matrix products of NumPy's OpenBLAS and torch's oneDNN sum in different orders); in float64 the
difference shrinks to ~1e-14, the rounding of doubles, which shows the arithmetic is the same.
""")

code(r"""
check("logits (float32)", out.logits, hf(torch.from_numpy(x)).logits)
model64 = levit_np.from_pretrained(ckpt, backend="numpy", dtype="float64")
hf64 = transformers.LevitForImageClassificationWithTeacher.from_pretrained(ckpt, dtype=torch.float64).eval()
check("logits (float64)", model64(x.astype(np.float64)).logits, hf64(torch.from_numpy(x.astype(np.float64))).logits,
      rtol=1e-10)
del model64, hf64
""")

# =====================================================================================================================
md(r"""
## 2. Preprocessing a photo

The photo is scikit-image's bundled `chelsea` cat (no download). `levit_np.preprocess` reproduces HF's
`LevitImageProcessor` (PIL path) bit for bit:

1. resize with Pillow bicubic so the short side is $\lfloor 256/224 \cdot 224 \rfloor = 256$;
2. center-crop 224 × 224;
3. $x \leftarrow \big(x/255 - \mu\big)/\sigma$ per channel, with the ImageNet mean $\mu = (0.485, 0.456, 0.406)$ and
   std $\sigma = (0.229, 0.224, 0.225)$; channels first.
""")

code(r"""
cat = skdata.chelsea()  # (300, 451, 3) uint8
pixel_values = levit_np.preprocess(cat)  # (1, 3, 224, 224) float32
print(cat.shape, cat.dtype, "->", pixel_values.shape, pixel_values.dtype)

h, w = resize_shape(*cat.shape[:2], 256)  # the resized size, (256, 384)
top, left = (h - 224) // 2, (w - 224) // 2  # the crop box, in resized pixels
sy, sx = cat.shape[0] / h, cat.shape[1] / w  # resized -> original pixels
shown = (pixel_values[0].transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN).clip(0, 1)  # undo the normalisation

fig, axs = plt.subplots(1, 3, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1.5, 1, 1.2]})
axs[0].imshow(cat)
axs[0].add_patch(plt.Rectangle((left * sx, top * sy), 224 * sx, 224 * sy, fill=False, ec="w", lw=2, ls="--"))
axs[0].set_title(f"input {cat.shape[1]}x{cat.shape[0]} and the crop (resized to {w}x{h} first)")
axs[1].imshow(shown)
axs[1].set_title("what the network sees: 224x224")
for c, col in enumerate("rgb"):
    axs[2].hist(pixel_values[0, c].ravel(), bins=60, histtype="step", color=col, label="RGB"[c])
axs[2].set_title("normalised values per channel")
axs[2].legend()
for ax in axs[:2]:
    ax.axis("off")
plt.tight_layout()
plt.show()
""")

code(r"""
check("pixel_values", pixel_values, transformers.LevitImageProcessorPil()(cat, return_tensors="np")["pixel_values"])
""")

# =====================================================================================================================
md(r"""
## 3. The safetensors file

A `.safetensors` file is an 8-byte header length, a JSON header (tensor name → dtype, shape, byte range) and the raw
little-endian bytes. `levit_np.checkpoint` reads it without torch, checks every tensor against the shape the
config implies (`expected_shapes`), and nests the keys into the dicts the layer functions take, in a tree that
mirrors `config.plan` (HF's layout ends in the loader):
`params["stages"][0]["blocks"][0]["queries_keys_values"]["linear"]["weight"]`.

Every linear of the encoder is `Linear(bias=False)` + `BatchNorm1d`, so each one stores a weight and four BatchNorm
vectors (the running mean and variance are statistics, not learned parameters). In the file, the residual blocks'
weights sit under `.module.` and the downsampling attention (not residual: no `.module.`) closes the previous stage's
list; in `params` each stage has its `"blocks"` and its `"downsample"`.
""")

code(r"""
tensors = read_safetensors(Path(ckpt) / "model.safetensors")  # {key: {"dtype", "shape", "data"}}
ORDER = ("levit.patch_embeddings.", "levit.encoder.", "classifier.", "classifier_distill.")  # the model's order


def order(key):  # then natural order inside: layers.10 after layers.9
    return ([i for i, p in enumerate(ORDER) if key.startswith(p)] or [len(ORDER)],
            [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)])


tensors = dict(sorted(tensors.items(), key=lambda kv: order(kv[0])))
show = ("embedding_layer_1.", "stages.0.layers.0.", "classifier.")
rows = ["| tensor | dtype | shape |", "|---|---|---|"]
rows += [f"| `{k}` | {t['dtype']} | {tuple(t['shape'])} |" for k, t in tensors.items()
         if any(p in k for p in show) and not k.endswith("num_batches_tracked")]
print(f"{len(tensors)} tensors, {sum(k.endswith('num_batches_tracked') for k in tensors)} of them BatchNorm step "
      f"counters (unused in eval mode). A selection: the first conv, stage 0's first attention, a classifier:")
display(Markdown("\n".join(rows)))
""")

code(r"""
def part(key):
    k = key.removeprefix("levit.")
    if k.startswith("patch_embeddings"):
        return "conv stem"
    if k.startswith("encoder.stages."):
        return f"stage {k.split('.')[2]}"
    return "classifier heads"

counts = {p: {"learned": 0, "BN statistics": 0} for p in ("conv stem", "stage 0", "stage 1", "stage 2",
                                                        "classifier heads")}
for k, t in tensors.items():
    kind = ("BN statistics" if k.endswith(("running_mean", "running_var")) else
            None if k.endswith(("num_batches_tracked", "attention_bias_idxs")) else "learned")
    if kind:
        counts[part(k)][kind] += int(np.prod(t["shape"]))
total = sum(c["learned"] for c in counts.values())
rows = ["| part | learned parameters | share | BN running statistics |", "|---|---:|---:|---:|"]
rows += [f"| {p} | {c['learned']:,} | {100 * c['learned'] / total:.1f} % | {c['BN statistics']:,} |"
         for p, c in counts.items()]
rows.append(f"| **total** | **{total:,}** | | {sum(c['BN statistics'] for c in counts.values()):,} |")
display(Markdown("\n".join(rows)))
print(f"HF counts {hf.num_parameters():,} parameters")
""")

md(r"""
**Check.** The nested NumPy params against HF's `state_dict()`, tensor by tensor (they are read from the same bytes,
so the difference must be exactly 0).
""")

code(r"""
config, architecture, params = load_checkpoint(ckpt)  # what from_pretrained does: config, class name, nested params

def leaf(tree, path):  # "projection.linear.weight" -> the array
    for part_ in path.split("."):
        tree = tree[part_]
    return tree

sd = hf.state_dict()
keys = expected_shapes(config, architecture)  # every HF key (without `levit.`) the file must hold
pairs = [(leaf(params, k), k) for k in keys if not k.startswith("encoder.")]  # stem and heads: the same path
layer_weights = [w for stage in params["stages"] for w in stage["blocks"] + stage["downsample"]]
for (layer, prefix), w in zip(hf_layer_keys(config), layer_weights, strict=True):  # the encoder: one dict a layer
    pairs += [(leaf(w, name), f"{prefix}.{name}") for name in layer.shapes()]
assert sorted(k for _, k in pairs) == sorted(keys)
print(architecture, f"- {len(keys)} tensors")
check(f"all {len(keys)} tensors", np.concatenate([a.ravel() for a, _ in pairs]),
      np.concatenate([sd.get("levit." + k, sd.get(k)).numpy().ravel() for _, k in pairs]))
""")

# =====================================================================================================================
md(r"""
## 4. The conv stem

Where ViT cuts the image into 16×16 patches and projects each one linearly, LeViT runs four 3×3 convolutions of
stride 2 — 224 → 112 → 56 → 28 → 14 — with channels 3 → 16 → 32 → 64 → 128 ($C_0/8, C_0/4, C_0/2, C_0$). The 14×14
output cells sit 16 pixels apart, like ViT's patches, but each one sees a 31×31 window (its receptive field), so
neighbouring "patches" overlap, and their features come from a small CNN rather than one linear map. Each
convolution has no bias and is followed by BatchNorm, in eval mode an affine map per channel with the stored
statistics:

$$\mathrm{BN}(y) = \gamma \, \frac{y - \mu_{\text{run}}}{\sqrt{\sigma^2_{\text{run}} + \varepsilon}} + \beta .$$

Between the convolutions (not after the last one) comes **Hardswish** (from MobileNetV3), a piecewise-quadratic
GELU look-alike that needs no exponential:

$$\mathrm{hswish}(x) = x \cdot \frac{\min(\max(x + 3, 0), 6)}{6}.$$
""")

code(r"""
t = np.linspace(-5, 5, 401, dtype=np.float32)
plt.figure(figsize=(5, 2.8))
plt.plot(t, layers.hardswish(t), lw=2.5, label="Hardswish (layers.hardswish)")
plt.plot(t, np.maximum(t, 0), "--", label="ReLU")
plt.plot(t, torch.nn.functional.gelu(torch.from_numpy(t)).numpy(), ":", lw=2, label="GELU")
plt.axvspan(-3, 3, color="0.93")
plt.text(0, 4.4, "quadratic on [-3, 3]", ha="center")
plt.legend()
plt.grid(alpha=0.3)
plt.title("activations")
plt.show()
""")

md(r"""
The stem, one convolution at a time with `layers.conv_bn` and `layers.hardswish` (the weights of conv *i* are
`params["patch_embeddings"]["embedding_layer_i"]`). Below: the first eight channels after each convolution.
""")

code(r"""
stem = params["patch_embeddings"]
maps, h = [], pixel_values
for i in range(1, 5):
    h = layers.conv_bn(h, **stem[f"embedding_layer_{i}"])  # (B, Cin, S, S) -> (B, Cout, S/2, S/2)
    if i < 4:
        h = layers.hardswish(h)
    maps.append(h)

fig, axs = plt.subplots(4, 8, figsize=(11, 6.2))
for row, m in enumerate(maps):
    for c in range(8):
        axs[row, c].imshow(m[0, c], cmap="magma")
        grid_ax(axs[row, c])
    axs[row, 0].set_ylabel(f"conv {row + 1}\n{m.shape[2]}x{m.shape[3]}x{m.shape[1]}", rotation=0, ha="right",
                           va="center")
fig.suptitle("feature maps after each conv + BN (+ Hardswish), first 8 channels", y=0.99)
plt.tight_layout()
plt.show()
""", figure="stem_maps")

md(r"""
**Check** against `hf.levit.patch_embeddings`, conv by conv, and the whole stem with its flattening into tokens:
token $t = \text{row} \cdot 14 + \text{col}$, shape (1, 196, 128).
""")

code(r"""
emb, h_hf = hf.levit.patch_embeddings, torch.from_numpy(pixel_values)
for i, ours in enumerate(maps, 1):
    h_hf = getattr(emb, f"embedding_layer_{i}")(h_hf)
    h_hf = getattr(emb, f"activation_layer_{i}")(h_hf) if i < 4 else h_hf
    check(f"stem conv {i} {tuple(ours.shape)}", ours, h_hf)
tokens = layers.patch_embeddings(pixel_values, **stem)  # (1, 196, 128)
check("patch_embeddings -> tokens (1, 196, 128)", tokens, emb(torch.from_numpy(pixel_values)))
""")

# =====================================================================================================================
md(r"""
## 5. Attention biases: position without positional embeddings

LeViT adds no positional embedding to the tokens. Instead each attention head $h$ adds a learned number to the
attention score of a query cell $(a, b)$ and a key cell $(c, d)$ that depends only on their **offset**:

$$S^h_{(a,b),(c,d)} = \frac{q_{(a,b)} \cdot k_{(c,d)}}{\sqrt{d_k}} + B^h\big[\,|a-c|,\ |b-d|\,\big].$$

So a head stores a table of $R \times R$ numbers ($R^2 = 196$ on the 14×14 grid), `attention_biases` of shape
(H, R²), indexed by $\text{idx} = |a-c| \cdot R + |b-d|$. The bias is translation-invariant and symmetric under
flips; the table is gathered into a full (H, N, N) bias by an (N, N) index table. HF stores that index table as a
buffer; `levit_np` builds it (`layers.attention_bias_idxs`) and ignores any copy in the checkpoint.
""")

code(r"""
idx = layers.attention_bias_idxs(14)  # (196, 196): query token x key token -> offset index
idx7 = layers.attention_bias_idxs(7)
q_cell = (5, 4)  # a query cell on the cat's left eye (14x14 grid: 16 px per cell)
q = q_cell[0] * 14 + q_cell[1]

fig, axs = plt.subplots(1, 3, figsize=(11, 3.7))
im = axs[0].imshow(idx, cmap="viridis")
fig.colorbar(im, ax=axs[0], shrink=0.8)
axs[0].set_title("idx (196 x 196): query token ↓, key token →")
axs[0].set_xlabel("key")
axs[0].set_ylabel("query")
axs[1].imshow(idx[:42, :42], cmap="viridis")
for e in (13.5, 27.5):
    axs[1].axhline(e, color="w", lw=1)
    axs[1].axvline(e, color="w", lw=1)
axs[1].set_title("zoom on the first 3 grid rows: a 14x14 block per\n(query row, key row) pair, |Δcol| inside")
axs[1].set_xlabel("key")
axs[1].set_ylabel("query")
qa7 = (2, 4)  # a query cell of the 7x7 grid
axs[2].imshow(idx7[qa7[0] * 7 + qa7[1]].reshape(7, 7), cmap="viridis", vmin=0, vmax=48)
for (r, c), v in np.ndenumerate(idx7[qa7[0] * 7 + qa7[1]].reshape(7, 7)):
    axs[2].text(c, r, v, ha="center", va="center", color="w" if v < 30 else "k", fontsize=8)
grid_ax(axs[2], f"one row of idx on a 7x7 key grid, query {qa7}:\nidx = |a-c|·7 + |b-d|")
plt.tight_layout()
plt.show()
""", figure="bias_index")

md(r"""
The learned tables of the first attention block of stage 0 (4 heads). Top: each head's table as a function of the
offset $(|\Delta\text{row}|, |\Delta\text{col}|)$ — the origin, top left, is the query itself. Bottom: the bias that
table puts on every key cell for the query ★ on the cat's eye — four mirrored copies of the table, centred on ★.
""")

code(r"""
p0 = params["stages"][0]["blocks"][0]  # the first attention block
table = p0["attention_biases"]  # (4, 196)
bias = table[:, idx]  # (4, 196, 196): what is added to the scores
lim = np.abs(table).max()
fig, axs = plt.subplots(2, 4, figsize=(10, 5.2))
for hd in range(4):
    axs[0, hd].imshow(table[hd].reshape(14, 14), cmap="RdBu_r", vmin=-lim, vmax=lim)
    grid_ax(axs[0, hd], f"head {hd}: table B[|Δrow|, |Δcol|]")
    axs[1, hd].imshow(bias[hd, q].reshape(14, 14), cmap="RdBu_r", vmin=-lim, vmax=lim)
    axs[1, hd].plot(q_cell[1], q_cell[0], "k*", ms=10)
    grid_ax(axs[1, hd], f"head {hd}: bias around query ★")
fig.suptitle("learned attention biases, stage 0 block 0" + ("" if REAL else " (random weights)"))
plt.tight_layout()
plt.show()
""", figure="attention_biases")

code(r"""
m0 = hf.levit.encoder.stages[0].layers[0].module  # HF LevitAttention (inside its residual wrapper)
check("attention_bias_idxs (196, 196)", idx, m0.attention_bias_idxs)
check("gathered bias (4, 196, 196)", bias, m0.attention_biases[:, m0.attention_bias_idxs])
""")

# =====================================================================================================================
md(r"""
## 6. One attention block, step by step

Stage 0's first block: C = 128 channels, H = 4 heads, key dim $d_k = 16$, value dim $d_v = 2 d_k = 32$ (attention
ratio 2). With $\mathrm{LBN}(x) = \mathrm{BN}(xW)$ a bias-free linear followed by BatchNorm:

1. one projection gives queries, keys and values of all heads: $\mathrm{LBN}_{qkv}(x)$,
   (N, 128) → (N, H(2d_k + d_v)) = (N, 256);
2. the 256 channels are split **per head** — head $h$ owns channels $64h \ldots 64h+63$, laid out
   $[q \,|\, k \,|\, v]$ — not as [all queries | all keys | all values];
3. scores $S^h = Q^h K^{h\top} / \sqrt{d_k} + B^h$ — content plus position (§5);
4. $P^h = \mathrm{softmax}(S^h)$ over the keys;
5. $O = \mathrm{hswish}\big([P^1V^1, \ldots, P^HV^H]\big)$, heads concatenated, then the output projection
   $\mathrm{LBN}_{\text{proj}}(O)$: (N, 128) → (N, 128). Note the Hardswish *before* the projection.

The block is residual: $x \leftarrow x + \mathrm{Attention}(x)$.
""")

code(r"""
blk = config.plan[0].blocks[0]  # Layer(kind="attention", dim=128, ...)
H, kd, vd = blk.num_attention_heads, blk.key_dim, blk.attention_ratio * blk.key_dim
print(blk)

x0 = tokens  # (1, 196, 128), the stem's output for the cat
qkv = layers.linear_bn(x0, **p0["queries_keys_values"])  # (1, 196, 256)
qkv = qkv.reshape(1, 196, H, 2 * kd + vd).transpose(0, 2, 1, 3)  # (1, 4, 196, 64): per head [q | k | v]
q_, k_, v_ = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]  # (1,4,196,16) (1,4,196,16) (1,4,196,32)
content = q_ @ k_.swapaxes(-1, -2) * kd ** -0.5  # (1, 4, 196, 196)
position = p0["attention_biases"][:, blk.attention_bias_idxs]  # (4, 196, 196)
probs = layers.softmax(content + position)  # over keys
heads = (probs @ v_).transpose(0, 2, 1, 3).reshape(1, 196, H * vd)  # (1, 196, 128), head-major
branch = layers.linear_bn(layers.hardswish(heads), **p0["projection"])  # (1, 196, 128)
for name, a in [("qkv", qkv), ("q", q_), ("k", k_), ("v", v_), ("scores", content), ("probs", probs),
                ("heads", heads), ("out", branch)]:
    print(f"{name:<7}{a.shape}")
""")

code(r"""
from matplotlib.colors import ListedColormap

layout = np.tile(np.r_[np.zeros(kd), np.ones(kd), np.full(vd, 2)], H)  # 256 qkv channels: 0 = q, 1 = k, 2 = v
fig, ax = plt.subplots(figsize=(11, 1.1))
ax.imshow(layout[None], cmap=ListedColormap(["#d62728", "#1f77b4", "#2ca02c"]), aspect="auto")
for hd in range(H):
    ax.axvline(hd * (2 * kd + vd) - 0.5, color="k", lw=2)
    for off, name, width in [(0, "q", kd), (kd, "k", kd), (2 * kd, "v", vd)]:
        ax.text(hd * (2 * kd + vd) + off + width / 2 - 0.5, 0, f"{name}{hd}", ha="center", va="center", color="w")
ax.set_yticks([])
ax.set_xlabel("channel of the qkv projection (0 … 255)")
ax.set_title("the per-head split: [q | k | v] for head 0, then head 1, …")
plt.show()
""")

md(r"""
What head $h$ computes for the query ★ on the eye, over the 14×14 key grid: the content term
$q \cdot k / \sqrt{d_k}$ (minus its mean over the keys, which the softmax ignores), the position term $B^h$, and
the softmax of their sum.
""")

code(r"""
fig, axs = plt.subplots(3, 4, figsize=(9, 7))
for hd in range(H):
    c_row = content[0, hd, q] - content[0, hd, q].mean()  # a constant per query does not change the softmax
    for row, (a, name) in enumerate([(c_row, "content q·k/√d - mean"), (position[hd, q], "position bias"),
                                     (probs[0, hd, q], "softmax")]):
        axs[row, hd].imshow(a.reshape(14, 14), cmap="viridis" if row == 2 else "RdBu_r",
                            **({} if row == 2 else dict(vmin=-np.abs(a).max(), vmax=np.abs(a).max())))
        axs[row, hd].plot(q_cell[1], q_cell[0], "r*" if row == 2 else "k*", ms=9)
        grid_ax(axs[row, hd], f"head {hd}: {name}")
plt.tight_layout()
plt.show()
""")

code(r"""
ours, _ = layers.attention(x0, **p0, **blk.hyper())  # the same block as one function call
check("step by step vs layers.attention", branch, ours)
check("layers.attention vs HF LevitAttention", ours, m0(torch.from_numpy(x0)))
""")

# =====================================================================================================================
md(r"""
## 7. The MLP, a full stage, the downsampling attention

**MLP.** Per token, two linear+BN with a Hardswish between, expansion ratio 2 (ViT uses 4):
$x \leftarrow x + \mathrm{LBN}_{\text{down}}\big(\mathrm{hswish}(\mathrm{LBN}_{\text{up}}(x))\big)$, 128 → 256 → 128.
It is a 1×1 convolution in transformer clothing.
""")

code(r"""
x1 = x0 + branch  # after the first residual attention
p1 = params["stages"][0]["blocks"][1]
check("layers.mlp vs HF LevitMLPLayer", layers.mlp(x1, **p1), hf.levit.encoder.stages[0].layers[1].module(
    torch.from_numpy(x1)))
""")

md(r"""
**A full stage.** `config.plan` (`layer_plan(config)`) lists each stage's `blocks`: `depth` × (attention, MLP), both
residual; then, for stages 0 and 1, its `downsample`: the downsampling attention (no residual: it changes the shape)
and an MLP at the new width. The table gives each layer's key prefix in the checkpoint file.
""")

code(r"""
rows = ["| key | kind | channels | grid | heads x (d_k, d_v) |", "|---|---|---|---|---|"]
for L, key in hf_layer_keys(config):
    hk = (f"{L.num_attention_heads} x ({L.key_dim}, {L.attention_ratio * L.key_dim})" if L.kind != "mlp"
          else f"hidden {L.hidden_dim}")
    rows.append(f"| `{key}` | {L.kind} | {L.dim} → {L.out_dim} | {L.resolution[0]}² → {L.resolution_out[0]}² | "
                f"{hk} |")
display(Markdown("\n".join(rows)))
""")

code(r"""
h = tokens
stage0 = params["stages"][0]
for p, L in zip(stage0["blocks"] + stage0["downsample"], config.plan[0].layers, strict=True):
    if L.kind == "attention":
        h = h + layers.attention(h, **p, **L.hyper())[0]
    elif L.kind == "mlp":
        h = h + layers.mlp(h, **p)
    else:  # attention_subsample: (1, 196, 128) -> (1, 49, 256)
        sub_in = h  # its input, kept for the check below
        h = layers.attention_subsample(h, **p, **L.hyper())[0]
check(f"stage 0 {tokens.shape} -> {h.shape}", h, hf.levit.encoder.stages[0](torch.from_numpy(tokens)))
""")

md(r"""
**The downsampling ("shrink") attention** (`LevitAttentionSubsample`) halves the grid: the **queries** come only from
the cells at even rows and even columns — 7×7 = 49 of the 196 — through their own linear+BN, while **keys and
values** come from all 196 cells. It has $C_0 / d_k = 8$ heads, $d_k = 16$, a value dim of $4 d_k = 64$, and projects
to the next stage's 256 channels. The bias rule is the same with the query at $(2a, 2b)$ on the key grid:
$\text{idx} = |2a - c| \cdot 14 + |2b - d|$.
""")

code(r"""
sub_L, sub_p = config.plan[0].downsample[0], params["stages"][0]["downsample"][0]
sub_i = len(config.plan[0].blocks)  # its index in HF's list of stage 0's layers
sub_idx = sub_L.attention_bias_idxs  # (49, 196) = layers.attention_bias_idxs(14, 7, stride=2)
qa = (2, 2)  # query (2, 2) of the 7x7 grid sits on key cell (4, 4)
qi = qa[0] * 7 + qa[1]

is_query = np.zeros((14, 14))
is_query[::2, ::2] = 1
fig, axs = plt.subplots(1, 3, figsize=(11, 3.8))
axs[0].imshow(is_query, cmap="Greys", vmin=0, vmax=1.6)
for n, (r, c) in enumerate(np.argwhere(is_query)):
    axs[0].text(c, r, n, ha="center", va="center", color="w", fontsize=6)
grid_ax(axs[0], "the 49 query cells (dark, numbered)\nof the 14x14 grid; keys: all 196")
axs[1].imshow(sub_idx[qi].reshape(14, 14), cmap="viridis")
axs[1].plot(4, 4, "r*", ms=12)
grid_ax(axs[1], f"idx of query {qa} (★ = key cell (4, 4)):\n|2a-c|·14 + |2b-d|")
b = sub_p["attention_biases"][0, sub_idx[qi]].reshape(14, 14)
axs[2].imshow(b, cmap="RdBu_r", vmin=-np.abs(b).max(), vmax=np.abs(b).max())
axs[2].plot(4, 4, "k*", ms=12)
grid_ax(axs[2], "head 0: its learned bias for that query")
plt.tight_layout()
plt.show()
""", figure="downsampling")

code(r"""
hf_sub = hf.levit.encoder.stages[0].layers[sub_i]  # HF LevitAttentionSubsample; sub_in: its input (1, 196, 128)
check("query cells (1, 49, 128)", sub_in.reshape(1, 14, 14, 128)[:, ::2, ::2].reshape(1, 49, 128),
      hf_sub.queries_subsample(torch.from_numpy(sub_in)))
check("attention_subsample (1, 49, 256)", layers.attention_subsample(sub_in, **sub_p, **sub_L.hyper())[0],
      hf_sub(torch.from_numpy(sub_in)))
""")

# =====================================================================================================================
md(r"""
## 8. The heads: pooling, two classifiers, their average

No class token: after stage 2 the 16 tokens are **averaged** (no final norm), $\bar z = \frac{1}{16}\sum_t z_t$.
Two classifiers, each BatchNorm then a Linear *with* bias, read $\bar z$. LeViT is trained DeiT-style: the
`classifier` learns from the labels, `classifier_distill` from a RegNetY-16GF teacher's predictions. At inference
the model returns their mean:

$$\text{logits} = \tfrac12\Big(\mathrm{Lin}_{\text{cls}}\big(\mathrm{BN}_{\text{cls}}(\bar z)\big) +
\mathrm{Lin}_{\text{dist}}\big(\mathrm{BN}_{\text{dist}}(\bar z)\big)\Big).$$
""")

code(r"""
out_cat = model(pixel_values, output_hidden_states=True, output_attentions=True)  # the whole cat, once
hf_cat = hf(torch.from_numpy(pixel_values), output_hidden_states=True)

z = out_cat.last_hidden_state  # (1, 16, 384)
pooled = z.mean(axis=1)  # (1, 384)
cls = layers.classification_layer(pooled, **params["classifier"])  # (1, 1000)
dist = layers.classification_layer(pooled, **params["classifier_distill"])
logits = (cls + dist) / 2

plt.figure(figsize=(4, 3.4))
plt.scatter(cls[0], dist[0], s=4, alpha=0.5)
for i in np.argsort(-logits[0])[:3]:
    plt.annotate(config.id2label[i][:18], (cls[0, i], dist[0, i]), fontsize=7)
plt.xlabel("classifier logit")
plt.ylabel("classifier_distill logit")
plt.title("the two heads on the cat, 1000 classes")
plt.grid(alpha=0.3)
plt.show()
""")

code(r"""
check("last_hidden_state (1, 16, 384)", z, hf_cat.hidden_states[-1])
check("classifier", cls, hf_cat.cls_logits)
check("classifier_distill", dist, hf_cat.distillation_logits)
check("logits = mean of the two", logits, hf_cat.logits)
""")

# =====================================================================================================================
md(r"""
## 9. Attention maps on the photo

HF's LeViT cannot return its attention probabilities; `levit_np` can: `model(x, output_attentions=True).attentions`
is a tuple with one (B, H, N_q, N_k) array per attention block, in forward order — here 2 + 1 + 3 + 1 + 4 = 11
blocks (the downsampling ones have 49 or 16 queries).
""")

code(r"""
att = out_cat.attentions
blocks = [L for stage in config.plan for L in stage.layers if L.kind != "mlp"]  # one per entry of `att`
stage_of = [s for s, stage in enumerate(config.plan) for L in stage.layers if L.kind != "mlp"]
for i, (a, L, s) in enumerate(zip(att, blocks, stage_of, strict=True)):
    print(f"attentions[{i:>2}] {L.kind:<20} stage {s}  {a.shape}")
""")

md(r"""
For the query on the cat's left eye, where each head of the last attention block of each stage looks, drawn over
the photo: the cells of the 14×14, 7×7 and 4×4 grids are 16, 32 and 64 px apart (the last grid overhangs the
224 px image: its cells sit on every other cell of the 7×7 one).
""")

code(r"""
eye = (80, 70)  # pixel (row, col) of the left eye in the 224 crop
last = {stage_of[i]: i for i, L in enumerate(blocks) if L.kind == "attention"}  # last residual attention of each stage
fig, axs = plt.subplots(3, 8, figsize=(12, 5))
for row, (stage, i) in enumerate(last.items()):
    (R, _), a = blocks[i].resolution, att[i][0]
    pitch = config.patch_size * 2 ** stage  # pixels between cell centres: 16, 32, 64
    cell = (eye[0] // pitch) * R + eye[1] // pitch
    for hd in range(8):
        ax = axs[row, hd]
        ax.axis("off")
        if hd < a.shape[0]:
            ax.imshow(shown)
            ax.imshow(a[hd, cell].reshape(R, R), cmap="inferno", alpha=0.6, extent=(0, R * pitch, R * pitch, 0),
                      interpolation="bilinear")
            ax.set_xlim(0, 224)
            ax.set_ylim(224, 0)
            ax.plot(eye[1], eye[0], "c*", ms=8)
            ax.set_title(f"stage {stage} ({R}x{R}), head {hd}", fontsize=7)
fig.suptitle("attention of the query ★ in the last block of each stage" + ("" if REAL else " (random weights)"))
plt.tight_layout()
plt.show()
""", figure="attention_maps")

md(r"""
How far the heads look: the mean distance, in pixels, between a query and the keys it attends to,
$\sum_k P_{qk}\,\lVert \text{pos}_q - \text{pos}_k \rVert$ averaged over the queries, per head of every block.
""")

code(r"""
plt.figure(figsize=(7, 3))
for i, (a, L) in enumerate(zip(att, blocks, strict=True)):
    (R, _), (Rq, _) = L.resolution, L.resolution_out  # square grids at 224 px
    cell = config.patch_size * 2 ** stage_of[i]  # cell pitch in pixels
    kpos = np.stack(np.divmod(np.arange(R * R), R), 1) * cell  # key cell centres (row, col), pixels
    qpos = np.stack(np.divmod(np.arange(Rq * Rq), Rq), 1) * cell * L.stride  # query cells on the key grid
    dist_px = np.linalg.norm(qpos[:, None] - kpos[None], axis=-1)  # (Nq, Nk)
    mean_dist = (a[0] * dist_px).sum(-1).mean(-1)  # (H,)
    plt.scatter(np.full(len(mean_dist), i), mean_dist, c="C1" if L.kind != "attention" else "C0", s=14)
plt.xticks(range(len(blocks)), [f"s{s}{'↓' if L.kind != 'attention' else ''}"
                                for L, s in zip(blocks, stage_of, strict=True)])
plt.xlabel("attention block (↓ = downsampling)")
plt.ylabel("mean attention distance (px)")
plt.grid(alpha=0.3)
plt.title("attention distance per head" + ("" if REAL else " (random weights)"))
plt.show()
""")

md(r"""
**Check.** HF has no attention output, so its probabilities are recomputed in torch from HF's own submodules
(`queries_keys_values` or `keys_values` + `queries`, `attention_biases[:, attention_bias_idxs]`, `scale`) on the very
input each HF block receives during a forward pass (a forward hook), then compared with all 11 of ours.
""")

code(r"""
from transformers.models.levit.modeling_levit import LevitAttention, LevitAttentionSubsample

hf_probs = []

def hook(module, inputs, _):
    hs = inputs[0]
    B, N, _ = hs.shape
    nh, dk = module.num_attention_heads, module.key_dim
    if isinstance(module, LevitAttention):
        qq, kk, _ = module.queries_keys_values(hs).view(B, N, nh, -1).split([dk, dk, module.attention_ratio * dk], 3)
    else:
        kk, _ = module.keys_values(hs).view(B, N, nh, -1).split([dk, module.attention_ratio * dk], 3)
        qq = module.queries(module.queries_subsample(hs)).view(B, -1, nh, dk)
    scores = qq.transpose(1, 2) @ kk.permute(0, 2, 3, 1) * module.scale
    hf_probs.append((scores + module.attention_biases[:, module.attention_bias_idxs]).softmax(-1).numpy())

handles = [m.register_forward_hook(hook) for m in hf.modules()
           if isinstance(m, (LevitAttention, LevitAttentionSubsample))]
hf(torch.from_numpy(pixel_values))
for hd in handles:
    hd.remove()
assert len(hf_probs) == len(att) == 11
check("all 11 attention maps", np.concatenate([a.ravel() for a in att]),
      np.concatenate([a.ravel() for a in hf_probs]), rtol=1e-3)  # softmax amplifies the float32 rounding
""")

# =====================================================================================================================
md(r"""
## 10. `predict`, and the Numba backend

`levit_np.predict(images, model=...)` is preprocessing + the forward pass + a softmax + the top-k labels. It takes
paths, PIL images or uint8 arrays, and a Hub id, a checkpoint directory or an already loaded model.
""")

code(r"""
preds = levit_np.predict(cat, model=model, top_k=5)
for label, prob in preds:
    print(f"{prob:7.2%}  {label}")

fig, axs = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [1, 1.6]})
axs[0].imshow(cat)
axs[0].axis("off")
axs[1].barh([lab[:40] for lab, _ in preds][::-1], [p for _, p in preds][::-1], color="C0")
axs[1].set_xlim(0, 1)
axs[1].set_xlabel("probability")
axs[1].set_title("levit_np.predict: top 5" + ("" if REAL else " — RANDOM weights, labels meaningless"))
plt.tight_layout()
plt.show()
""", figure="predictions")

code(r"""
hf_top = torch.softmax(hf_cat.logits[0].double(), -1).topk(5)
assert [label for label, _ in preds] == [config.id2label[int(i)] for i in hf_top.indices], "top-5 differs from HF"
check("top-5 probabilities", np.array([p for _, p in preds]), hf_top.values)
""")

md(r"""
**The Numba backend** (`backend="numba"`, `levit_np/fast/`) runs the same forward pass, with every BatchNorm
folded into the linear or convolution before it and every bias table gathered once, at load, and parallel Numba
kernels that fuse the small steps (bias, Hardswish, softmax) into the matrix products around them. It must give the
same answer. Its first call compiles the kernels (cached on disk afterwards).
""")

code(r"""
t0 = time.perf_counter()
fast = levit_np.from_pretrained(ckpt, backend="numba")
out_fast = fast(pixel_values, output_attentions=True)
print(f"load + first call (compiles, or loads the kernel cache): {time.perf_counter() - t0:.1f} s")
check("numba logits vs HF", out_fast.logits, hf_cat.logits)
check("numba attentions vs HF", np.concatenate([a.ravel() for a in out_fast.attentions]),
      np.concatenate([a.ravel() for a in hf_probs]), rtol=1e-3)
print("numba vs numpy: max |logits difference| =", float(np.abs(out_fast.logits - out_cat.logits).max()))
assert levit_np.predict(cat, model=fast, top_k=5)[0][0] == preds[0][0]
""")

md(r"""
Timings on this machine (best of a few runs; the numbers depend on the CPU and on what else runs on it):
""")

code(r"""
def best_ms(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)

runners = {"levit_np, numpy": lambda xb: model(xb), "levit_np, numba": lambda xb: fast(xb),
           "HF Transformers (torch)": lambda xb: hf(torch.from_numpy(xb))}
rows = ["| backend | batch 1: ms | batch 8: ms per image |", "|---|---:|---:|"]
batch8 = np.repeat(pixel_values, 8, axis=0)
for name, run in runners.items():
    one = best_ms(lambda run=run: run(pixel_values), 5)
    eight = best_ms(lambda run=run: run(batch8), 3) / 8
    rows.append(f"| {name} | {one:.1f} | {eight:.1f} |")
display(Markdown("\n".join(rows)))
print(f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}; "
      f"numba threads {levit_np.fast.get_num_threads()}")
""")

# =====================================================================================================================
md(r"""
## 11. Any input size: the bias tables resized

Everything in LeViT but the attention biases is independent of the input size: convolutions and linears apply to
any number of pixels and tokens. Each bias table, though, is a function of the offset $(|\Delta\text{row}|,
|\Delta\text{col}|)$ on the one $R \times R$ grid it was trained on (§5). To run the 224 px checkpoint on a 448×800
image (a detection-sized input; token grids 28×50 → 14×25 → 7×13), `from_pretrained(ckpt, image_size=(448, 800))`
resizes each head's table to the new grid $(R_h, R_w)$ by bicubic interpolation over that offset grid, exactly as
`torch.nn.functional.interpolate(table.reshape(1, H, R, R), size=(R_h, R_w), mode="bicubic",
align_corners=False)` does (`levit_np/resize.py`), and indexes it with $|\Delta\text{row}| \cdot R_w +
|\Delta\text{col}|$. The table is *stretched*: the bias at offset $(\Delta r, \Delta c)$ of the new grid is the old
table's at about $(\Delta r \cdot 14/28,\ \Delta c \cdot 14/50)$, as if the image were the same scene seen at a
finer pitch. Whether the checkpoint's accuracy survives that depends on the checkpoint; fine-tuning at the new size
is the usual cure.
""")

code(r"""
from levit_np import resize

wide = levit_np.from_pretrained(ckpt, backend="numba", image_size=(448, 800))  # height, width
print(wide)
print("token grids per stage:", wide.config.resolutions)
table_wide = resize.resize_bias_table(table, (14, 14), (28, 50))  # stage 0 block 0: (4, 196) -> (4, 1400)

fig, axs = plt.subplots(1, 2, figsize=(11, 2.9), gridspec_kw={"width_ratios": [14, 50]})
axs[0].imshow(table[0].reshape(14, 14), cmap="RdBu_r", vmin=-lim, vmax=lim)
grid_ax(axs[0], "head 0 at 224 px: 14x14 offsets")
axs[1].imshow(table_wide[0].reshape(28, 50), cmap="RdBu_r", vmin=-lim, vmax=lim)
grid_ax(axs[1], "the same table resized for 448x800: 28x50 offsets (|Δrow| down, |Δcol| across)")
plt.tight_layout()
plt.show()
""")

md(r"""
**Check.** Our NumPy bicubic against torch's own `interpolate` on that table (the same arithmetic, so they differ
by float32 rounding only), and what the resized model computes: the cat, preprocessed to 448×800 (resized to cover
512×914, HF's 256/224 margin on both sides, then centre-cropped), its per-stage feature maps (B, C, h, w) — the
form detection and segmentation heads consume — and where two heads of stage 0's last attention block look from
the eye ★, now over a 28×50 grid.
""")

code(r"""
from levit_np.preprocessing import resize_box, resize_to_cover

ref_wide = torch.nn.functional.interpolate(torch.from_numpy(table).reshape(1, 4, 14, 14), size=(28, 50),
                                           mode="bicubic", align_corners=False).reshape(4, 1400)
check("bias table resized to 28x50 vs torch", table_wide, ref_wide)

pixels_wide = levit_np.preprocess(cat, image_size=(448, 800))  # (1, 3, 448, 800)
out_wide = wide(pixels_wide, output_attentions=True, output_feature_maps=True)
print("feature_maps:", [f.shape for f in out_wide.feature_maps])

# the eye, from the 224 crop (§9) back to the photo, then into the 448x800 crop
rh, rw = resize_to_cover(*cat.shape[:2], resize_box((448, 800)))  # the resized photo, (607, 914)
top_w, left_w = (rh - 448) // 2, (rw - 800) // 2
eye_photo = ((eye[0] + top) * sy, (eye[1] + left) * sx)  # pixel in the 300x451 photo
eye_wide = (eye_photo[0] * rh / cat.shape[0] - top_w, eye_photo[1] * rw / cat.shape[1] - left_w)
shown_wide = (pixels_wide[0].transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN).clip(0, 1)
last0 = max(j for j, L in enumerate(blocks) if L.kind == "attention" and stage_of[j] == 0)  # stage 0, last block
(Rh, Rw), a = wide.config.resolutions[0], out_wide.attentions[last0][0]  # (4, 1400, 1400)
cell = (int(eye_wide[0]) // 16) * Rw + int(eye_wide[1]) // 16

fig, axs = plt.subplots(1, 2, figsize=(11, 3.5))
for hd, ax in enumerate(axs):  # two of the four heads
    ax.imshow(shown_wide)
    ax.imshow(a[hd, cell].reshape(Rh, Rw), cmap="inferno", alpha=0.6, extent=(0, 800, 448, 0),
              interpolation="bilinear")
    ax.plot(eye_wide[1], eye_wide[0], "c*", ms=8)
    grid_ax(ax, f"448x800, stage 0 ({Rh}x{Rw}), head {hd}")
fig.suptitle("attention of the query ★ at the new size" + ("" if REAL else " (random weights)"))
plt.tight_layout()
plt.show()
""")

# =====================================================================================================================
md(r"""
## Summary of the parity checks

Every check of this notebook, float32 unless marked: the largest absolute difference between `levit_np` and HF
Transformers on the same input.
""")

code(r"""
rows = ["| check | max abs difference |", "|---|---:|"] + [f"| {k} | {v:.2g} |" for k, v in PARITY.items()]
display(Markdown("\n".join(rows)))
print(f"{len(PARITY)} checks; weights: {'REAL facebook/levit-128S' if REAL else 'RANDOM'}; "
      f"notebook ran in {time.perf_counter() - T_START:.0f} s")
""")

md(r"""
---
This notebook is generated: edit `notebooks/build_walkthrough.py` and run `python notebooks/build_walkthrough.py`
(it executes the notebook on a fresh kernel, saves it with its outputs and exports the README figures to
`notebooks/figures/`). `tests/test_notebook.py` runs it top to bottom in CI.
""")


# =====================================================================================================================
def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source, figure in CELLS:
        if kind == "markdown":
            nb.cells.append(new_markdown_cell(source))
        else:
            cell = new_code_cell(source)
            if figure:
                cell.metadata["tags"] = [f"figure:{figure}"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding does not churn the diff
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell on a fresh `python3` kernel in notebooks/; raises nbclient's CellExecutionError on an error."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def export_figures(nb: nbformat.NotebookNode, dest: Path = FIGURES) -> list[Path]:
    """The last PNG output of each cell tagged `figure:NAME` -> dest/NAME.png."""
    written = []
    for cell in nb.cells:
        for tag in cell.get("metadata", {}).get("tags", []):
            if tag.startswith("figure:"):
                pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
                if pngs:
                    dest.mkdir(exist_ok=True)
                    path = dest / f"{tag.removeprefix('figure:')}.png"
                    path.write_bytes(base64.b64decode(pngs[-1]))
                    written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-exec", action="store_true", help="write the cells without executing them")
    args = ap.parse_args(argv)
    nb = build()
    if not args.no_exec:
        t0 = time.perf_counter()
        execute(nb)
        print(f"executed in {time.perf_counter() - t0:.0f} s")
        for path in export_figures(nb):
            print("wrote", path.relative_to(HERE.parent))
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK.relative_to(HERE.parent)} ({NOTEBOOK.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
