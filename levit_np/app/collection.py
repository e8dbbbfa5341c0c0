"""The folder walk: command-line style arguments (files and folders) -> the image files to label.

    images, failures, any_folder = collect_images(["photos/", "extra.jpg"])

A folder is searched recursively for the files Pillow can open (by extension, hidden files and folders skipped),
sorted; a file is taken as it is (a missing one is reported with the other failures when it is read). Used by
`levit-np predict`, `levit-np distributed` and `distributed.predict_dataset`.
"""

from __future__ import annotations

from pathlib import Path

from ..preprocessing import shown


def collect_images(args: list[str]) -> tuple[list[str], list[tuple[str, str]], bool]:
    """Files and folders -> (image paths, (folder, message) for folders without images, any folder given)."""
    images, failures, folder = [], [], False
    for arg in args:
        if Path(arg).is_dir():
            folder = True
            files = image_files(Path(arg))
            if not files:
                failures.append((arg, f"{shown(arg)}: no image files in this folder"))
            images.extend(files)
        else:
            images.append(arg)  # a missing file is reported with the other failures
    return images, failures, folder


def image_files(folder: Path) -> list[str]:
    """Files under `folder` (recursively, hidden ones skipped) whose extension Pillow can open, sorted."""
    from PIL import Image

    Image.init()
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return sorted(str(f) for f in Path(folder).rglob("*")
                  if f.suffix.lower() in extensions and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def unique(images: list[str]) -> list[str]:
    """The images in order, each once (a file given twice, or inside two folders given, is labelled once)."""
    return list(dict.fromkeys(images))
