"""LeViT hyper-parameters, read from the `config.json` that HF `save_pretrained` writes.

Only the fields the forward pass uses are kept. Everything is validated here, once, so that the forward pass can
trust its shapes: a bad config raises `ValueError` naming the field, never a NumPy error later on.
"""

from __future__ import annotations

import functools
import json
import numbers
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from .layers import as_grid, attention_bias_idxs  # the reference owns the grid and the bias-index rule

# The five released checkpoints (Graham et al. 2021, Table 1; facebook/levit-* on the Hub).
# All are LevitForImageClassificationWithTeacher with 1000 ImageNet labels; other fields take the defaults below.
VARIANTS = {
    "128S": dict(hidden_sizes=(128, 256, 384), num_attention_heads=(4, 6, 8), depths=(2, 3, 4), key_dim=(16, 16, 16)),
    "128": dict(hidden_sizes=(128, 256, 384), num_attention_heads=(4, 8, 12), depths=(4, 4, 4), key_dim=(16, 16, 16)),
    "192": dict(hidden_sizes=(192, 288, 384), num_attention_heads=(3, 5, 6), depths=(4, 4, 4), key_dim=(32, 32, 32)),
    "256": dict(hidden_sizes=(256, 384, 512), num_attention_heads=(4, 6, 8), depths=(4, 4, 4), key_dim=(32, 32, 32)),
    "384": dict(hidden_sizes=(384, 512, 768), num_attention_heads=(6, 9, 12), depths=(4, 4, 4), key_dim=(32, 32, 32)),
}

ARCHITECTURES = ("LevitModel", "LevitForImageClassification", "LevitForImageClassificationWithTeacher")

NUM_STAGES = 3  # HF's LevitConfig always has two down_ops, hence exactly three stages


@dataclass(frozen=True)
class Subsample:
    """One `down_ops` entry: the LevitAttentionSubsample (+ MLP) that ends a stage."""

    key_dim: int  # HF: key_dim[0] of the config, for both subsamples
    num_attention_heads: int  # HF: hidden_sizes[s] // key_dim[0]
    attention_ratio: int  # HF: 4
    mlp_ratio: int  # HF: 2 (0 = no MLP after the subsample)
    stride: int  # HF: 2


@dataclass(frozen=True)
class LevitConfig:
    hidden_sizes: tuple[int, ...] = (128, 256, 384)
    num_attention_heads: tuple[int, ...] = (4, 8, 12)
    depths: tuple[int, ...] = (4, 4, 4)
    key_dim: tuple[int, ...] = (16, 16, 16)
    mlp_ratio: tuple[int, ...] = (2, 2, 2)
    attention_ratio: tuple[int, ...] = (2, 2, 2)
    down_ops: tuple[Subsample, ...] = ()  # derived from key_dim / hidden_sizes when empty, as HF does
    image_size: int | tuple[int, int] = 224  # pixels: S for S x S (as config.json holds it), or (height, width)
    patch_size: int = 16
    num_channels: int = 3
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    architecture: str | None = None  # config.json "architectures"[0], when it names a LeViT class

    def __post_init__(self):
        _validate(self)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @functools.cached_property
    def plan(self) -> tuple[Stage, ...]:
        """`layer_plan(self)`, built once: the forward pass walks it on every call."""
        return layer_plan(self)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the input in pixels: image_size 224 -> (224, 224); (448, 800) as it is."""
        return as_grid(self.image_size)

    @property
    def resolutions(self) -> tuple[tuple[int, int], ...]:
        """Token grid (rows, columns) of each stage: 224 px -> ((14, 14), (7, 7), (4, 4)); 448 x 800 px ->
        ((28, 50), (14, 25), (7, 13))."""
        r = [tuple(side // self.patch_size for side in self.image_shape)]
        for sub in self.down_ops:
            r.append(tuple((side - 1) // sub.stride + 1 for side in r[-1]))  # HF: (resolution_in - 1) // stride + 1
        return tuple(r)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> LevitConfig:
        """Build from a parsed config.json; `source` names the file in error messages."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, found {type(d).__name__}")
        model_type = d.get("model_type", "levit")
        if model_type != "levit":
            raise ValueError(f"{source}: model_type is {short_repr(model_type)}, not 'levit'")
        kw = {}
        for name in PER_STAGE:
            if name in d:
                kw[name] = _int_tuple(d[name], f"{source}: {name}", NUM_STAGES)
        for name in ("patch_size", "num_channels", "kernel_size", "stride", "padding"):
            if name in d:
                kw[name] = _int(d[name], f"{source}: {name}")
        if "image_size" in d:  # HF writes an int; [height, width] for a non-square input (checked in _validate)
            kw["image_size"] = d["image_size"]
        if "down_ops" in d:
            kw["down_ops"] = _parse_down_ops(d["down_ops"], f"{source}: down_ops")
        kw["id2label"] = _parse_id2label(d, source)
        kw["architecture"] = _parse_architectures(d.get("architectures"), f"{source}: architectures")
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> LevitConfig:
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a config file (a checkpoint's config.json is the "
                                    f"JSON file HF save_pretrained writes)")
        if not path.is_file():
            if path.exists():  # a FIFO or a device: reading it could block forever
                raise OSError(f"{path} is not a regular file, not a config file")
            raise FileNotFoundError(f"config file not found: {path}")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: {size} bytes, too large for a config.json (at most {MAX_CONFIG_BYTES})")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number of more than 4300 digits
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: not a config: its JSON is nested too deeply to parse") from None
        return cls.from_dict(d, source=str(path))


# Upper bounds on config values. Each is far above any LeViT (the released ones: 224 px, depths <= 4, widths <= 768,
# 1000 labels) and keeps what is built from the config before the tensors are checked (the label dict, the layer
# plan, the attention bias index tables) small, so that an absurd config fails at once, naming its field.
MAX_LABELS = 1_000_000  # ImageNet-21k has 21,843 classes; a million default labels build in well under a second
MAX_DEPTH = 256  # blocks per stage (LeViT: 2 to 4)
MAX_IMAGE_SIZE = 1024  # pixels per side: a first-stage attention's bias index table has (H/16 * W/16)^2 entries,
#                        4096^2 at 1024 x 1024
MAX_SIZE = 65_536  # every other size: channels, heads, key_dim, ratios, kernel, stride, padding
MAX_DOWN_OPS = 1024  # down_ops entries, nearly all of them the [""] each HF model build appends
MAX_CONFIG_BYTES = 64 * 2**20  # bytes of config.json; a million labels in id2label take about 30 MB
PER_STAGE = ("hidden_sizes", "num_attention_heads", "depths", "key_dim", "mlp_ratio", "attention_ratio")


def short_repr(v) -> str:
    """A short repr of any value for error messages: long lists, deep nesting, long strings and huge numbers
    abridged (`preprocessing.shown` is another thing: a name as it is, quoted only where it could be misread)."""
    r = reprlib.Repr()
    r.maxlist = r.maxtuple = r.maxdict = 8
    r.maxstring = r.maxother = r.maxlong = 60
    r.maxlevel = 3
    try:
        return r.repr(v)
    except (ValueError, RecursionError):  # an int of more than 4300 digits; a structure nested too deeply
        return f"a {type(v).__name__}"


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be an integer, found {short_repr(v)}")
    return v


def _int_tuple(v, what: str, length: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{what} must be a list of integers, found {short_repr(v)}")
    if len(v) != length:  # checked first: a list of a million entries fails at once
        raise ValueError(f"{what} must have {length} entries (one per stage), found {len(v)}: {short_repr(v)}")
    return tuple(_int(x, what) for x in v)


def _parse_down_ops(v, what: str) -> tuple[Subsample, ...]:
    # HF layout: [["Subsample", key_dim, heads, attention_ratio, mlp_ratio, stride], ..., [""]];
    # every HF model build appends one more [""], which marks "no downsampling after the last stage".
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{what} must be a list, found {short_repr(v)}")
    if len(v) > MAX_DOWN_OPS:
        raise ValueError(f"{what} has {len(v)} entries, more than the {MAX_DOWN_OPS} allowed: {short_repr(v)}")
    ops = []
    for i, op in enumerate(v):
        if isinstance(op, (list, tuple)) and len(op) >= 1 and op[0] == "":
            continue
        if not (isinstance(op, (list, tuple)) and len(op) == 6 and op[0] == "Subsample"):
            raise ValueError(f"{what}[{i}] must be ['Subsample', key_dim, heads, attention_ratio, mlp_ratio, stride]"
                             f" or [''], found {short_repr(op)}")
        ops.append(Subsample(*(_int(x, f"{what}[{i}]") for x in op[1:])))
    return tuple(ops)


def _parse_id2label(d: dict, source: str) -> dict[int, str]:
    # Without id2label, num_labels (default 2, PretrainedConfig's) makes LABEL_0, LABEL_1, ... as HF does. HF never
    # writes num_labels; when a config holds both and they disagree, HF warns and replaces the labels by LABEL_i:
    # which one was meant is unknown, so that is refused here.
    n = None if d.get("num_labels") is None else _num_labels(d["num_labels"], f"{source}: num_labels")
    raw = d.get("id2label")
    if raw is None:
        return {i: f"LABEL_{i}" for i in range(2 if n is None else n)}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: id2label must be an object, found {short_repr(raw)}")
    _num_labels(len(raw), f"{source}: the number of id2label entries")
    if n is not None and n != len(raw):
        raise ValueError(f"{source}: num_labels={n} disagrees with the {len(raw)} entries of id2label; remove one")
    id2label = {}
    for key, label in raw.items():
        i = _label_id(key)
        if i is None or i in id2label:
            raise ValueError(f"{source}: id2label keys must be the integers 0..{len(raw) - 1}, each once, found "
                             f"{short_repr(key)}")
        if not isinstance(label, str):
            raise ValueError(f"{source}: id2label[{short_repr(key)}] must be a string, found {short_repr(label)}")
        id2label[i] = label
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{source}: id2label keys must be 0..{len(id2label) - 1}, "
                         f"found {short_repr(sorted(id2label))}")
    return id2label


def _num_labels(v, what: str) -> int:
    n = _int(v, what)
    if not 0 <= n <= MAX_LABELS:
        raise ValueError(f"{what} must be in 0..{MAX_LABELS}, found {short_repr(n)}")
    return n


def _label_id(key) -> int | None:
    """An id2label key: JSON's "0", "1", ... (ASCII digits) or, from Python, an int; None for anything else."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= len(str(MAX_LABELS)):
        return int(key)
    return None


def _parse_architectures(v, what: str) -> str | None:
    """config.json "architectures" (a list of class names, or null) -> the first LeViT class it names, if any."""
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise ValueError(f"{what} must be a list of class names, found {short_repr(v)}")
    return next((a for a in v if a in ARCHITECTURES), None)


def _check_ints(c: LevitConfig, name: str, low: int, high: int) -> None:
    """Config field `name` (an int or a tuple of them) is made of integers in low..high."""
    v = getattr(c, name)
    values = v if isinstance(v, tuple) else (v,)
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in values):
        raise ValueError(f"{name} must be made of integers, found {short_repr(v)}")
    if not all(low <= x <= high for x in values):
        raise ValueError(f"{name} must be in {low}..{high}, found {short_repr(list(v) if isinstance(v, tuple) else v)}")


def _validate(c: LevitConfig) -> None:
    for name in PER_STAGE:
        v = getattr(c, name)
        if not isinstance(v, (tuple, list)) or len(v) != NUM_STAGES:
            raise ValueError(f"{name} must have {NUM_STAGES} entries (one per stage), found {short_repr(v)}")
        object.__setattr__(c, name, tuple(v))  # a list given in Python becomes a tuple, as from_dict makes it
        low = 0 if name in ("depths", "mlp_ratio") else 1
        _check_ints(c, name, low, MAX_DEPTH if name == "depths" else MAX_SIZE)
    _check_image_size(c)
    for name in ("patch_size", "num_channels", "kernel_size", "stride"):
        _check_ints(c, name, 1, MAX_SIZE)
    _check_ints(c, "padding", 0, MAX_SIZE)
    _check_labels(c)
    if c.architecture is not None and c.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)} or None, found "
                         f"{short_repr(c.architecture)}")
    if not c.down_ops:  # HF LevitConfig.__post_init__
        kd, hs = c.key_dim[0], c.hidden_sizes
        object.__setattr__(c, "down_ops", tuple(Subsample(kd, hs[s] // kd, 4, 2, 2) for s in range(NUM_STAGES - 1)))
    if len(c.down_ops) != NUM_STAGES - 1:
        raise ValueError(f"down_ops must have {NUM_STAGES - 1} 'Subsample' entries, found {len(c.down_ops)}")
    for s, sub in enumerate(c.down_ops):
        if min(sub.key_dim, sub.num_attention_heads, sub.attention_ratio, sub.stride) < 1 or sub.mlp_ratio < 0:
            raise ValueError(f"down_ops[{s}] has a non-positive entry: {sub}")
        if max(sub.key_dim, sub.num_attention_heads, sub.attention_ratio, sub.mlp_ratio, sub.stride) > MAX_SIZE:
            raise ValueError(f"down_ops[{s}] has an entry over {MAX_SIZE}: {sub}")
    # The conv stem must land exactly on the token grid the attention biases are built for, along both axes.
    stem, grid = [], []
    for pixels in c.image_shape:
        side = pixels
        for _ in range(4):
            side = (side + 2 * c.padding - c.kernel_size) // c.stride + 1
        stem.append(side)
        grid.append(pixels // c.patch_size)
    if stem != grid or min(grid) < 1:
        raise ValueError(f"image_size {short_repr(c.image_size)} gives a {stem[0]}x{stem[1]} grid after the conv stem "
                         f"but image_size // patch_size = {grid[0]}x{grid[1]}; with the 3x3/stride-2 stem, each side "
                         f"of image_size must be a multiple of {c.patch_size}")


def normalize_image_size(v, what: str = "image_size") -> int | tuple[int, int]:
    """An input size as given, an integer S (S x S) or a (height, width) pair of them, -> its one form: the integer
    for a square ((224, 224) is 224, as config.json says), else the (height, width) tuple. ValueError naming `what`
    and the value unless each side is an integer in 1..MAX_IMAGE_SIZE. (That each side is a multiple of the patch
    size is the config's check: it depends on the stem.)"""
    def side(x) -> int:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise ValueError(f"{what} must be an integer or a (height, width) pair of integers, found {short_repr(v)}")
        if not 1 <= x <= MAX_IMAGE_SIZE:
            raise ValueError(f"{what} must be in 1..{MAX_IMAGE_SIZE} per side, found {short_repr(v)}")
        return int(x)

    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an integer or a (height, width) pair, found {len(v)} entries: "
                             f"{short_repr(v)}")
        height, width = side(v[0]), side(v[1])
        return height if height == width else (height, width)
    return side(v)


def _check_image_size(c: LevitConfig) -> None:
    object.__setattr__(c, "image_size", normalize_image_size(c.image_size))


def _check_labels(c: LevitConfig) -> None:
    labels = c.id2label
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise ValueError(f"id2label must be a dict of at most {MAX_LABELS} labels, found {short_repr(labels)}")
    if set(labels) != set(range(len(labels))) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"id2label must map 0..{len(labels) - 1} to label strings, found {short_repr(labels)}")


@dataclass(frozen=True)
class Layer:
    """One layer of the encoder: the kind of layer, its widths, its token grid and its hyper-parameters."""

    kind: str  # "attention" | "mlp" (both residual) | "attention_subsample" (the downsampling attention)
    dim: int  # channels in
    out_dim: int  # channels out (differs from dim only for attention_subsample)
    resolution: tuple[int, int]  # (rows, columns) of the input token grid; a side R is taken as (R, R)
    hidden_dim: int = 0  # mlp: dim * mlp_ratio
    num_attention_heads: int = 0
    key_dim: int = 0
    attention_ratio: int = 0
    stride: int = 1  # attention_subsample: query stride

    def __post_init__(self):
        object.__setattr__(self, "resolution", as_grid(self.resolution))

    @property
    def resolution_out(self) -> tuple[int, int]:
        """(rows, columns) of the output grid: the queries' grid, every stride-th cell in both directions."""
        return tuple((side - 1) // self.stride + 1 for side in self.resolution)

    @property
    def num_tokens(self) -> int:
        """N of the input tokens (B, N, C): rows * columns."""
        return self.resolution[0] * self.resolution[1]

    @functools.cached_property
    def attention_bias_idxs(self):
        """(Nq, Nk) index into this attention layer's (H, Rh*Rw) bias table (see layers.attention_bias_idxs)."""
        return attention_bias_idxs(self.resolution, self.resolution_out, self.stride)

    def hyper(self) -> dict:
        """Keyword arguments the layer function takes besides its weights."""
        if self.kind == "mlp":
            return {}
        h = dict(num_attention_heads=self.num_attention_heads, key_dim=self.key_dim,
                 attention_ratio=self.attention_ratio, attention_bias_idxs=self.attention_bias_idxs)
        if self.kind == "attention_subsample":
            h.update(stride=self.stride, resolution=self.resolution)
        return h

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected tensor shapes, keyed by their path inside the layer's weights ("projection.linear.weight")."""
        def linear_bn(name, cin, cout):
            bn = {f"{name}.batch_norm.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")}
            return {f"{name}.linear.weight": (cout, cin), **bn}

        C, H, kd, vd = self.dim, self.num_attention_heads, self.key_dim, self.attention_ratio * self.key_dim
        if self.kind == "mlp":
            return {**linear_bn("linear_up", C, self.hidden_dim), **linear_bn("linear_down", self.hidden_dim, C)}
        bias = {"attention_biases": (H, self.num_tokens)}  # one entry per offset (|Δrow|, |Δcol|) on the grid
        if self.kind == "attention":
            return {**linear_bn("queries_keys_values", C, H * (2 * kd + vd)), **linear_bn("projection", H * vd, C),
                    **bias}
        return {**linear_bn("keys_values", C, H * (kd + vd)), **linear_bn("queries", C, H * kd),
                **linear_bn("projection", H * vd, self.out_dim), **bias}


@dataclass(frozen=True)
class Stage:
    """One stage: its residual blocks on one token grid, then (stages 0 and 1) the downsampling to the next grid."""

    blocks: tuple[Layer, ...]  # depth x (attention, mlp), all (B, Rh*Rw, C) -> (B, Rh*Rw, C)
    downsample: tuple[Layer, ...]  # (attention_subsample, mlp): (B, Rh*Rw, C) -> (B, Rh'*Rw', C'); () for the last

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Blocks then downsampling: the order HF's LevitStage holds them in."""
        return self.blocks + self.downsample


def layer_plan(c: LevitConfig) -> tuple[Stage, ...]:
    """The encoder's layers, stage by stage, in the order HF's LevitStage builds them."""
    stages = []
    for s in range(NUM_STAGES):
        C, R, blocks, downsample = c.hidden_sizes[s], c.resolutions[s], [], []
        for _ in range(c.depths[s]):
            blocks.append(Layer("attention", C, C, R, num_attention_heads=c.num_attention_heads[s],
                                key_dim=c.key_dim[s], attention_ratio=c.attention_ratio[s]))
            if c.mlp_ratio[s] > 0:
                blocks.append(Layer("mlp", C, C, R, hidden_dim=C * c.mlp_ratio[s]))
        if s < NUM_STAGES - 1:  # LevitAttentionSubsample, then an MLP at the new width
            sub, C2 = c.down_ops[s], c.hidden_sizes[s + 1]
            down = Layer("attention_subsample", C, C2, R, num_attention_heads=sub.num_attention_heads,
                         key_dim=sub.key_dim, attention_ratio=sub.attention_ratio, stride=sub.stride)
            downsample.append(down)
            if sub.mlp_ratio > 0:
                downsample.append(Layer("mlp", C2, C2, down.resolution_out, hidden_dim=C2 * sub.mlp_ratio))
        stages.append(Stage(tuple(blocks), tuple(downsample)))
    return tuple(stages)
