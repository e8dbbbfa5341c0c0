"""`import levit_np` and a NumPy forward pass must not pull in torch or transformers; the fast path imports no model."""

import subprocess
import sys

from test_layering import import_graph

from helpers import random_pixels


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_levit_np_imports_no_framework():
    loaded = modules_after("import levit_np")
    assert "levit_np" in loaded
    assert not {"torch", "transformers"} & loaded


def test_loading_and_running_a_model_imports_no_framework(checkpoint, tmp_path):
    _, path = checkpoint("LevitForImageClassification", hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2],
                         depths=[1, 1, 1], key_dim=[8, 8, 8], image_size=64)
    import numpy as np
    np.save(tmp_path / "x.npy", random_pixels(1, 64))
    loaded = modules_after(f"import levit_np, numpy as np\n"
                           f"m = levit_np.from_pretrained({str(path)!r}, backend='numpy')\n"
                           f"assert m(np.load({str(tmp_path / 'x.npy')!r})).logits.shape == (1, 1000)")
    assert not {"torch", "transformers"} & loaded


def test_the_fast_path_imports_neither_the_model_nor_the_backend_module():
    """levit_np.backend builds the numba backend from levit_np.fast (and the model runs it): the fast path imports
    none of them back, at top level or inside a function (tests/test_layering.py checks the whole package)."""
    graph = import_graph()
    fast = [m for m in graph if m == "levit_np.fast" or m.startswith("levit_np.fast.")]
    assert len(fast) > 10
    back = {"levit_np", "levit_np.model", "levit_np.backend"}
    assert {m: sorted(graph[m] & back) for m in fast} == {m: [] for m in fast}
