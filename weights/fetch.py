#!/usr/bin/env python
"""Download the released LeViT checkpoints from the Hugging Face Hub into weights/<name>/.

    python weights/fetch.py                 # all five: levit-128S, levit-128, levit-192, levit-256, levit-384
    python weights/fetch.py levit-128S 256  # some (a variant, levit-<variant> or a Hub id)

Each lands as weights/<name>/config.json + model.safetensors, where levit_np looks for it before the Hugging Face
cache (`levit_np.from_pretrained("facebook/levit-128S")` then works offline). Same as
`levit-np fetch --dir weights [NAME ...]`; plain `levit-np fetch` downloads into the Hugging Face cache instead.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a source checkout works without installing levit-np

from levit_np.app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["fetch", "--dir", str(HERE), *sys.argv[1:]]))
