"""Resolving Hub ids: a fake Hugging Face cache laid out as huggingface_hub lays it out, HF_HUB_OFFLINE=1, no network.

    <HF_HUB_CACHE>/models--facebook--levit-128S/
        blobs/<sha256>                              the file contents
        snapshots/<commit>/config.json              -> ../../blobs/<sha256> (relative symlinks)
        snapshots/<commit>/model.safetensors        -> ../../blobs/<sha256>
        refs/main                                   <commit>

The environment is set per test with monkeypatch; levit_np applies huggingface_hub's own constants to it at call time
(huggingface_hub itself reads it at import), which these tests check by changing it after huggingface_hub was imported.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import levit_np
from helpers import RTOL, SMALL, hf_forward, random_pixels, rel_err
from levit_np import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PR_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def add_to_cache(cache: Path, repo_id: str, source: str | Path, *, commit=COMMIT, ref="main",
                 files=("config.json", "model.safetensors")) -> Path:
    """Put `files` of checkpoint dir `source` into `cache` the way hf_hub_download stores them; returns snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name in files:
        data = (Path(source) / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty HF cache and weights dir, offline. Returns (cache_dir, weights_dir)."""
    cache, weights = tmp_path / "hf" / "hub", tmp_path / "weights"
    cache.mkdir(parents=True)
    weights.mkdir()
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LEVIT_NP_WEIGHTS", str(weights))
    monkeypatch.chdir(tmp_path)  # no ./facebook/levit-128S here
    return cache, weights


def test_hub_id_from_cache(env, small_hf):
    cache, _ = env
    hf_model, path = small_hf
    snapshot = add_to_cache(cache, "facebook/levit-128S", path)
    assert hub.resolve("facebook/levit-128S") == snapshot
    model = levit_np.from_pretrained("facebook/levit-128S")
    assert model.name == "facebook/levit-128S"
    x = random_pixels(2, 64, seed=1)
    ours = model(x).logits
    np.testing.assert_array_equal(ours, levit_np.from_pretrained(path)(x).logits)  # the very same weights
    assert rel_err(ours, hf_forward(hf_model, x).logits) <= RTOL["float32"]  # and HF's model agrees


@pytest.mark.parametrize("name", ["128S", "levit-128S", "levit-128s", "128s"])
def test_variant_names(env, small, name):
    snapshot = add_to_cache(env[0], "facebook/levit-128S", small)
    assert hub.hub_id(name) == "facebook/levit-128S"
    assert hub.resolve(name) == snapshot


def test_hf_home(env, small, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = add_to_cache(tmp_path / "home" / "hub", "facebook/levit-192", small)
    assert hub.hf_cache_dir() == tmp_path / "home" / "hub"
    assert hub.resolve("facebook/levit-192") == snapshot


@pytest.mark.parametrize("variables", [{}, {"XDG_CACHE_HOME": "xdg"}, {"HF_HOME": "home"},
                                       {"HUGGINGFACE_HUB_CACHE": "legacy"}, {"HF_HUB_CACHE": "hub", "HF_HOME": "h"},
                                       {"TRANSFORMERS_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "yes"}])
def test_cache_and_offline_flag_are_huggingface_hubs(tmp_path, variables):
    # what huggingface_hub's constants say in a fresh process with these variables, levit_np says too
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "XDG_"))}
    env.update({k: str(tmp_path / v) if k.endswith(("HOME", "CACHE")) else v for k, v in variables.items()})
    code = ("import json; from huggingface_hub import constants as c; from levit_np import hub; "
            "print(json.dumps([[c.HF_HUB_CACHE, c.HF_HUB_OFFLINE], [str(hub.hf_cache_dir()), hub.hf_offline()]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    theirs, ours = json.loads(out.stdout)
    assert ours == theirs


def test_other_owner(env, small):
    snapshot = add_to_cache(env[0], "someone/levit-finetuned", small)
    assert hub.resolve("someone/levit-finetuned") == snapshot


def test_weights_dir_comes_first(env, small):
    cache, weights = env
    add_to_cache(cache, "facebook/levit-128S", small)
    shutil.copytree(small, weights / "levit-128S")
    assert hub.resolve("facebook/levit-128S") == weights / "levit-128S"
    assert hub.resolve("128S") == weights / "levit-128S"


def test_weights_dir_only_for_released_checkpoints(env, small):
    # weights/levit-128S/ is facebook's: someone else's levit-128S must not silently load it
    cache, weights = env
    shutil.copytree(small, weights / "levit-128S")
    snapshot = add_to_cache(cache, "someone/levit-128S", small)
    assert hub.resolve("someone/levit-128S") == snapshot


def test_weights_dir_default_is_the_checkout(monkeypatch):
    monkeypatch.delenv("LEVIT_NP_WEIGHTS", raising=False)
    assert hub.weights_dir() == Path(levit_np.__file__).resolve().parents[1] / "weights"


def test_local_directory_comes_first(env, small, tmp_path):
    add_to_cache(env[0], "facebook/levit-128S", small)
    local = tmp_path / "facebook" / "levit-128S"  # ./facebook/levit-128S relative to the working directory
    shutil.copytree(small, local)
    assert hub.resolve("facebook/levit-128S") == Path("facebook/levit-128S")


def test_missing_local_path_is_not_a_hub_id(env, tmp_path):
    assert hub.hub_id(str(tmp_path / "nothing")) is None
    assert hub.hub_id("../up/model") is None and hub.hub_id("plain") is None
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        levit_np.from_pretrained(tmp_path / "nothing")


def test_not_cached_offline_says_how_to_get_them(env):
    with pytest.raises(hub.WeightsNotFoundError) as info:
        levit_np.from_pretrained("facebook/levit-256")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "HF_HUB_OFFLINE is set" in message
    assert "levit-np fetch facebook/levit-256" in message
    assert "python weights/fetch.py levit-256" in message
    assert "https://huggingface.co/facebook/levit-256" in message
    assert str(env[0]) in message and str(env[1] / "levit-256") in message


def test_default_model_offline(env):
    with pytest.raises(hub.WeightsNotFoundError, match="levit-np fetch facebook/levit-128S"):
        levit_np.predict(np.zeros((8, 8, 3), np.uint8))


def test_download_false_never_touches_the_network(env, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(hub.WeightsNotFoundError, match="downloading was not allowed"):
        hub.resolve("facebook/levit-384", download=False)


def test_incomplete_main_falls_back_to_a_cached_pr_revision(env, small):
    # repos whose safetensors live only in the conversion PR: main holds config.json alone, refs/pr/1 both files
    cache, _ = env
    add_to_cache(cache, "facebook/levit-128", small, files=("config.json",))
    pr = add_to_cache(cache, "facebook/levit-128", small, commit=PR_COMMIT, ref="refs/pr/1")
    assert hub.resolve("facebook/levit-128") == pr


def test_hub_unreachable(env, monkeypatch):
    # online, but the Hub cannot be reached: huggingface_hub raises LocalEntryNotFoundError (after its retries)
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(hub.WeightsNotFoundError, match="could not be reached(.|\n)*levit-np fetch"):
        hub.resolve("facebook/levit-128S")


def test_download_uses_the_conversion_pr_when_main_has_no_safetensors(env, small, monkeypatch, tmp_path):
    # the Hub's side of fetch(), faked: main has no model.safetensors, SFconvertbot's PR #2 has
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, *, revision, cache_dir, local_files_only, local_dir):
        calls.append((filename, revision, local_files_only))
        if revision == "main" and filename == "model.safetensors":
            raise EntryNotFoundError(f"{filename} not found")
        shutil.copy(Path(small) / filename, local_dir / filename)
        return str(local_dir / filename)

    class FakeApi:
        def get_repo_discussions(self, repo_id, **kw):
            assert kw == dict(author="SFconvertbot", discussion_type="pull_request", discussion_status="open")
            yield type("D", (), dict(title="Adding `safetensors` variant of this model", git_reference="refs/pr/2"))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (tmp_path / "dest" / "levit-384").mkdir(parents=True)
    got = hub.fetch("384", tmp_path / "dest")
    assert got == tmp_path / "dest" / "levit-384"
    assert calls == [("config.json", "main", False), ("model.safetensors", "main", False),
                     ("config.json", "refs/pr/2", False), ("model.safetensors", "refs/pr/2", False)]
    assert levit_np.from_pretrained(got).config.hidden_sizes == tuple(SMALL["hidden_sizes"])


def test_network_errors_become_weights_not_found(env, monkeypatch):
    # httpx's errors (a broken connection mid-download) are no OSErrors: still a clear WeightsNotFoundError
    import huggingface_hub

    class ReadError(Exception):
        pass

    def broken(*args, **kwargs):
        raise ReadError("connection reset by peer")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    with pytest.raises(hub.WeightsNotFoundError, match=r"the download failed \(ReadError: connection reset"):
        hub.resolve("facebook/levit-128S")


def test_repo_without_safetensors(env, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    def no_safetensors(repo_id, filename, **kwargs):
        raise EntryNotFoundError(f"{filename} not found")

    class NoPullRequests:
        def get_repo_discussions(self, repo_id, **kw):
            return iter(())

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_safetensors)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoPullRequests)
    with pytest.raises(hub.WeightsNotFoundError, match="has no model.safetensors"):
        hub.resolve("someone/levit-pickled")


def test_fetch_offline_says_so(env, tmp_path):
    with pytest.raises(hub.WeightsNotFoundError, match="HF_HUB_OFFLINE is set"):
        hub.fetch("128S", tmp_path / "dest")


def test_fetch_rejects_non_hub_names():
    with pytest.raises(ValueError, match="not a Hub model id"):
        hub.fetch("/some/dir")


def test_hub_libraries_are_imported_only_when_needed(small):
    # `import levit_np`, and loading a local directory, import neither huggingface_hub nor tqdm
    code = (f"import sys, levit_np\nlevit_np.from_pretrained({small!r})\n"
            f"print(' '.join(m for m in ('huggingface_hub', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
