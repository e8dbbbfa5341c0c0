"""The folder walk: command-line style arguments (files and folders) -> the image files to label.

    images, failures, any_folder = collect_images(["photos/", "extra.jpg"])

A folder is searched recursively for the files Pillow can open (by extension, hidden files and folders skipped),
sorted; a file is taken as it is (a missing one is reported with the other failures when it is read). Used by
`levit-np predict`, `levit-np distributed` and `distributed.predict_dataset`.
"""

from __future__ import annotations

import os
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
    """Files under `folder` (recursively, hidden files and folders skipped) whose extension Pillow can open, sorted.
    The walk keeps its own stack of folders (no recursion: a tree of any depth), does not descend into symlinked
    folders (a link back up would loop), and skips folders it may not read, as Path.rglob does."""
    from PIL import Image

    Image.init()
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    found, folders = [], [str(Path(folder))]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                        found.append(entry.path)
        except OSError:  # unreadable, or gone since it was listed
            continue
    return sorted(found)


def unique(images: list[str]) -> list[str]:
    """The images in order, each once (a file given twice, or inside two folders given, is labelled once)."""
    return list(dict.fromkeys(images))
