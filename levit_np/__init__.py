"""levit-np: LeViT (Graham et al. 2021) as a pure NumPy reference, loading Hugging Face safetensors checkpoints.

    import levit_np
    model = levit_np.from_pretrained("weights/levit-128S")   # config.json + model.safetensors
    out = model(pixel_values)                                 # (B, 3, 224, 224) float32 -> out.logits (B, 1000)
"""

from .config import VARIANTS, LevitConfig
from .model import Levit, LevitOutput, from_pretrained

__version__ = "0.1.0"
__all__ = ["Levit", "LevitConfig", "LevitOutput", "VARIANTS", "from_pretrained", "__version__"]
