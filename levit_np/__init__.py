"""levit-np: LeViT (Graham et al. 2021) as a pure NumPy reference, loading Hugging Face safetensors checkpoints.

    import levit_np
    model = levit_np.from_pretrained("weights/levit-128S")   # config.json + model.safetensors
    out = model(pixel_values)                                 # (B, 3, 224, 224) float32 -> out.logits (B, 1000)
    levit_np.predict("cat.jpg")                               # [("tabby, tabby cat", 0.61), ...]
    pixel_values = levit_np.preprocess(["a.jpg", "b.png"])    # HF LevitImageProcessor, bit for bit
"""

from .app.prediction import predict
from .config import VARIANTS, LevitConfig
from .model import Levit, LevitOutput, from_pretrained
from .preprocessing import preprocess

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Cores for the numba backend's kernels and NumPy's BLAS (see levit_np.fast.set_num_threads)."""
    from .fast import set_num_threads as _set_num_threads  # imports numba only when asked

    _set_num_threads(n)


__all__ = [
    "VARIANTS",
    "Levit",
    "LevitConfig",
    "LevitOutput",
    "__version__",
    "from_pretrained",
    "predict",
    "preprocess",
    "set_num_threads",
]
