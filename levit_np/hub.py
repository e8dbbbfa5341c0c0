"""Where the weights come from: a local directory, this repo's `weights/<name>/`, or the Hugging Face Hub.

    resolve("facebook/levit-128S")   # -> a directory holding config.json + model.safetensors

`resolve(model)` tries, in order:
1. `model` as a local path (a directory written by HF `save_pretrained`);
2. for the five released checkpoints, `weights/<name>/` of this source checkout (or of $LEVIT_NP_WEIGHTS),
   e.g. weights/levit-128S/ for facebook/levit-128S;
3. the Hugging Face cache, downloading into it when online: `hf_hub_download` of config.json and
   model.safetensors, in the cache and with the offline flag of huggingface_hub's constants (HF_HOME /
   HF_HUB_CACHE, HF_HUB_OFFLINE), as the environment has them when called, not when huggingface_hub was imported.
   Some facebook/levit-* repos carry model.safetensors only in the Hub's automatic safetensors-conversion pull
   request (refs/pr/N); that revision is used when the main branch has no safetensors, as transformers does.
When none has the weights, `WeightsNotFoundError` (a FileNotFoundError) says exactly how to get them.

huggingface_hub is imported only when the Hub is actually needed, so `import levit_np` stays light.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .config import VARIANTS, short_repr

DEFAULT_MODEL = "facebook/levit-128S"
RELEASED = tuple(f"facebook/levit-{v}" for v in VARIANTS)  # the five checkpoints of the paper
FILES = (CONFIG_NAME, WEIGHTS_NAME)
REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"  # weights/ of a source checkout

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
_SHORT = {v.lower(): f"facebook/levit-{v}" for v in VARIANTS}  # "128s" and "levit-128s" -> facebook/levit-128S


class WeightsNotFoundError(FileNotFoundError):
    """The checkpoint is not local, not cached and cannot be downloaded; the message says how to get it."""


def resolve(model: str | os.PathLike, *, download: bool | None = None) -> Path:
    """A local directory, a Hub id ("facebook/levit-128S") or a variant name ("128S") -> checkpoint directory.

    download: None follows HF_HUB_OFFLINE (download unless it is set); False looks only in the cache.
    Raises WeightsNotFoundError with instructions when a Hub id cannot be resolved, ValueError when `model` is not a
    str / os.PathLike or is empty. A local path that does not exist and is no Hub id is returned as is, for the
    loader to report.
    """
    check_model_argument(model)
    path = Path(model)
    if path.exists():
        return path
    repo_id = hub_id(str(model))
    if repo_id is None:
        return path
    local = weights_dir() / repo_id.rsplit("/", 1)[-1]
    if repo_id in RELEASED and all((local / f).is_file() for f in FILES):
        return local
    return hub_snapshot(repo_id, download=download)


def check_model_argument(model) -> None:
    """ValueError unless `model` is a non-empty str or os.PathLike: saying what a model argument may be."""
    kinds = (f"a Hub id ({DEFAULT_MODEL!r}), a released variant name ({', '.join(VARIANTS)}) or a checkpoint "
             f"directory path")
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise ValueError(f"a model must be {kinds}; found {short_repr(model)} ({type(model).__name__})")
    if not model.strip():
        raise ValueError(f"a model must be {kinds}; found an empty name {model!r}")


def hub_id(name: str) -> str | None:
    """"owner/name" as is; a released variant ("128S", "levit-128S", any case) as facebook/levit-*; else None."""
    short = name.lower().removeprefix("levit-")
    if short in _SHORT:
        return _SHORT[short]
    return name if _HUB_ID.match(name) and ".." not in name else None


def weights_dir() -> Path:
    """Where local copies of the released checkpoints live: $LEVIT_NP_WEIGHTS, else weights/ of the checkout."""
    return Path(os.environ.get("LEVIT_NP_WEIGHTS") or REPO_WEIGHTS)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: huggingface_hub's `constants.HF_HUB_CACHE` (HF_HUB_CACHE, else HF_HOME/hub, ...)
    for the environment as it is now (`_hub_constants`)."""
    return Path(_hub_constants()["HF_HUB_CACHE"])


def hf_offline() -> bool:
    """huggingface_hub's `constants.HF_HUB_OFFLINE` (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) for the environment now."""
    return bool(_hub_constants()["HF_HUB_OFFLINE"])


def _hub_constants() -> dict:
    # huggingface_hub computes its constants from the environment once, when it is imported (by transformers, say,
    # long before a notebook or a test sets HF_HUB_OFFLINE). A fresh copy of its constants module (the imported one
    # stays as it is) applies its own rules to the environment at this call
    import importlib.util

    spec = importlib.util.find_spec("huggingface_hub.constants")
    constants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constants)
    return vars(constants)


def hub_snapshot(repo_id: str, *, download: bool | None = None) -> Path:
    """The cached snapshot of `repo_id` holding config.json + model.safetensors, downloading it if allowed."""
    offline = hf_offline() if download is None else not download
    try:
        return _fetch(repo_id, offline=offline, cache_dir=hf_cache_dir())
    except WeightsNotFoundError:
        cached = _cached_snapshot(repo_id, hf_cache_dir())  # e.g. a refs/pr/N revision fetched earlier
        if cached is not None:
            return cached
        raise


def fetch(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Download a checkpoint: into the HF cache (dest None), or into `dest/<name>/` (e.g. weights/levit-128S/).

    Returns the directory holding config.json + model.safetensors. Files already there are not downloaded again;
    with HF_HUB_OFFLINE set, nothing is downloaded (WeightsNotFoundError unless they are there already).
    """
    check_model_argument(name)
    repo_id = hub_id(os.fspath(name))
    if repo_id is None:
        raise ValueError(f"{name!r} is not a Hub model id (owner/name) nor a released variant "
                         f"({', '.join(VARIANTS)})")
    local_dir = None if dest is None else Path(dest) / repo_id.rsplit("/", 1)[-1]
    return _fetch(repo_id, offline=hf_offline(), cache_dir=hf_cache_dir(), local_dir=local_dir)


def how_to_get(repo_id: str, reason: str) -> str:
    """The message of WeightsNotFoundError: what was tried and the commands that fetch the weights."""
    name = repo_id.rsplit("/", 1)[-1]
    commands = [(f"levit-np fetch {repo_id}", "into the Hugging Face cache (HF_HOME / HF_HUB_CACHE)")]
    looked = f"for a local directory {repo_id!r}"
    if repo_id in RELEASED:
        commands.append((f"python weights/fetch.py {name}", f"into weights/{name}/ of a levit-np source checkout"))
        looked += f", for {weights_dir() / name}{os.sep}"
    width = max(len(c) for c, _ in commands)
    return (f"LeViT weights {repo_id!r} are not available: {reason}.\n"
            f"Looked {looked} and in the Hugging Face cache {hf_cache_dir()}.\n"
            f"To get them, run on a machine with internet access one of\n"
            + "".join(f"    {c:<{width}}   # {what}\n" for c, what in commands)
            + f"or download config.json and model.safetensors from https://huggingface.co/{repo_id} into a "
            f"directory and pass that directory as the model. Copy the cache or the directory to an offline "
            f"machine as needed.")


def _fetch(repo_id: str, *, offline: bool, cache_dir: Path, local_dir: Path | None = None) -> Path:
    """hf_hub_download both files from main, or from the safetensors-conversion PR when main has no safetensors.
    Every failure becomes a WeightsNotFoundError whose message says why and how to get the weights."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        try:
            return _download(repo_id, "main", offline=offline, cache_dir=cache_dir, local_dir=local_dir)
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):
                raise
            revision = _conversion_pr(repo_id)  # the Hub answered, but main lacks a file
            if revision is None:
                raise WeightsNotFoundError(how_to_get(repo_id, f"the Hub repo {repo_id} has no {WEIGHTS_NAME} "
                                                               f"(levit-np reads only safetensors)")) from None
            return _download(repo_id, revision, offline=offline, cache_dir=cache_dir, local_dir=local_dir)
    except WeightsNotFoundError:
        raise
    except LocalEntryNotFoundError as e:
        if not offline:
            reason = f"they are not in the cache and the Hugging Face Hub could not be reached ({e})"
        elif hf_offline():
            reason = "they are not in the cache, and HF_HUB_OFFLINE is set (unset it to download them)"
        else:
            reason = "they are not in the cache (downloading was not allowed)"
        raise WeightsNotFoundError(how_to_get(repo_id, reason)) from None
    except (GatedRepoError, RepositoryNotFoundError) as e:
        raise WeightsNotFoundError(how_to_get(repo_id, f"no local directory of that name, and no public model "
                                                       f"{repo_id!r} on the Hub ({type(e).__name__})")) from None
    except Exception as e:  # the network layer's own errors (httpx / requests) are not OSErrors: say what failed
        raise WeightsNotFoundError(how_to_get(repo_id, f"the download failed ({type(e).__name__}: {e})")) from e


def _download(repo_id, revision, *, offline, cache_dir, local_dir) -> Path:
    from huggingface_hub import hf_hub_download

    kw = dict(cache_dir=cache_dir, local_files_only=offline, local_dir=local_dir)
    config = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **kw))
    if local_dir is None:  # snapshots/<commit>/config.json: take the weights from that very commit
        revision = config.parent.name
    hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, **kw)  # lands next to config.json
    return config.parent


def _conversion_pr(repo_id: str) -> str | None:
    """The git reference (refs/pr/N) of the Hub bot's open "Adding `safetensors` variant" PR, if any."""
    from huggingface_hub import HfApi

    discussions = HfApi().get_repo_discussions(repo_id, author="SFconvertbot", discussion_type="pull_request",
                                               discussion_status="open")
    return next((d.git_reference for d in discussions if "safetensors" in d.title.lower()), None)


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """Any cached revision of `repo_id` with both files, main first, then the most recent (for refs/pr/N)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.utils import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return None
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            complete = [r for r in repo.revisions if {f.file_name for f in r.files} >= set(FILES)]
            complete.sort(key=lambda r: ("main" not in r.refs, -r.last_modified))
            if complete:
                return Path(complete[0].snapshot_path)
    return None
