"""Measure the worst parity error against HF per released variant, dtype and backend; print a markdown table.

    python benchmarks/parity.py            # needs the test extra (torch, transformers)

Each HF LevitForImageClassificationWithTeacher has every parameter and buffer randomised (tests/helpers.py), goes
through save_pretrained -> levit_np.from_pretrained, and both run the same batch of 4 random inputs. The error is
max|ours - HF| / max(1, max|HF|), worst over logits, cls/distillation logits, pooler output and every hidden state.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import levit_np
from helpers import ALL_BACKENDS, HF_VARIANTS, build_hf, compare_outputs, hf_forward, random_pixels, save_hf

CLS = "LevitForImageClassificationWithTeacher"


def main():
    cols = [f"{b} {d}" for d in ("float32", "float64") for b in ALL_BACKENDS]
    print("| variant | " + " | ".join(cols) + " | top-1 equal |")
    print("|---" * (len(cols) + 2) + "|")
    for variant, cfg in HF_VARIANTS.items():
        hf = build_hf(CLS, seed=1, **cfg)
        row, top1 = [], True
        with tempfile.TemporaryDirectory() as tmp:
            path = save_hf(hf, tmp)
            for dtype in ("float32", "float64"):
                x = random_pixels(4, seed=7).astype(dtype)
                ref = hf_forward(hf, x)
                for backend in ALL_BACKENDS:
                    out = levit_np.from_pretrained(path, backend=backend, dtype=dtype)(x, output_hidden_states=True)
                    row.append(max(compare_outputs(out, ref, CLS, dtype).values()))  # asserts top-1 and tolerance
                    top1 &= bool((out.logits.argmax(-1) == ref.logits.numpy().argmax(-1)).all())
        print(f"| {variant} | " + " | ".join(f"{e:.1e}" for e in row) + f" | {'yes' if top1 else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
