"""The `levit-np` command line: predict on files and folders, info, fetch; failures reported, never a traceback.

Its predictions are compared with `levit_np.predict`, itself checked against HF in test_predict.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import levit_np
from helpers import HF_VARIANTS
from levit_np.app.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Never the network, never the real cache or weights/: an empty HF cache and weights dir, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LEVIT_NP_WEIGHTS", str(tmp_path / "empty-weights"))


def save_images(folder: Path, names, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_predict_text(small, tmp_path, capsys):
    [path] = save_images(tmp_path, ["cat.png"])
    code, out, err = run(capsys, "predict", path, "--model", small, "--top-k", "3")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == path
    expected = levit_np.predict(path, model=small, top_k=3)
    assert lines[1:] == [f"  {p:.4f}  {label}" for label, p in expected]


def test_predict_json_several_files(small, tmp_path, capsys):
    paths = save_images(tmp_path, ["a.png", "b.jpg", "c.bmp"])
    code, out, _ = run(capsys, "predict", *paths, "--model", small, "--json", "--batch-size", "2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == paths
    batched = levit_np.predict(paths, model=small, batch_size=2)  # the same batches
    for record, expected in zip(records, batched, strict=True):
        assert [(d["label"], d["probability"]) for d in record["predictions"]] == expected


def test_predict_folder_with_failures(small, tmp_path, capsys):
    folder = tmp_path / "photos"
    good = save_images(folder, ["b.png", "a.jpg", "sub/c.png"])
    (folder / "broken.jpg").write_text("this is no JPEG")
    (folder / "notes.txt").write_text("skipped: not an image extension")
    save_images(folder, [".hidden/d.png"])
    code, out, err = run(capsys, "predict", str(folder), "--model", small, "--json", "--backend", "numpy")
    assert code == 1  # one image failed, the others still ran
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == sorted(good)
    assert all(len(r["predictions"]) == 5 for r in records)
    assert "1 of 4 inputs failed" in err and "broken.jpg: not an image file" in err
    assert "notes.txt" not in err and ".hidden" not in out


def test_predict_missing_file_and_empty_folder(small, tmp_path, capsys):
    [good] = save_images(tmp_path, ["ok.png"])
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "predict", str(tmp_path / "missing.png"), good, str(tmp_path / "empty"),
                         "--model", small)
    assert code == 1
    assert out.splitlines()[0] == good
    assert "2 of 3 inputs failed" in err
    assert f"image file not found: {tmp_path / 'missing.png'}" in err
    assert f"{tmp_path / 'empty'}: no image files" in err


def test_predict_only_bad_inputs_loads_no_model(tmp_path, capsys):
    # the default model is absent here: it must not even be looked for when no image is readable
    code, out, err = run(capsys, "predict", str(tmp_path / "missing.png"))
    assert code == 1 and out == ""
    assert "1 of 1 inputs failed" in err and "levit-np fetch" not in err


def test_predict_weights_missing_offline(tmp_path, capsys):
    [path] = save_images(tmp_path, ["cat.png"])
    code, out, err = run(capsys, "predict", path)  # default model, not cached, HF_HUB_OFFLINE=1
    assert code == 1 and out == ""
    assert err.startswith("levit-np: error: LeViT weights 'facebook/levit-128S' are not available")
    assert "levit-np fetch facebook/levit-128S" in err


def test_unknown_backend_is_a_usage_error_naming_the_choices(small, tmp_path, capsys):
    [path] = save_images(tmp_path, ["cat.png"])
    with pytest.raises(SystemExit) as info:
        main(["predict", path, "--model", str(small), "--backend", "nope"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["predict"], ["predict", "x.png", "--top-k", "0"], ["predict", "x.png",
                                  "--batch-size", "many"], ["frobnicate"], []])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: levit-np" in capsys.readouterr().err


def test_info(small, capsys):
    code, out, _ = run(capsys, "info", small, "--json")
    assert code == 0
    info = json.loads(out)
    model = levit_np.from_pretrained(small)
    assert info["architecture"] == "LevitForImageClassificationWithTeacher"
    assert info["variant"] is None  # hidden_sizes [32, 48, 64] is none of the released five
    assert info["parameters"] == model.num_parameters and info["image_size"] == 64
    assert info["num_labels"] == 10 and info["labels"][0] == "LABEL_0"
    assert info["weights"] == str(Path(small).resolve())
    assert info["weights_bytes"] == (Path(small) / "model.safetensors").stat().st_size
    code, out, _ = run(capsys, "info", small)
    assert code == 0 and "LevitForImageClassificationWithTeacher" in out and f"{model.num_parameters:,}" in out


def test_info_released_variant_from_cache(checkpoint, tmp_path, capsys, monkeypatch):
    # a 128S-shaped checkpoint in a fake HF cache: info names the variant and where the weights live
    _, path = checkpoint("LevitForImageClassificationWithTeacher", seed=0, **HF_VARIANTS["128S"])
    snapshot = tmp_path / "cache" / "models--facebook--levit-128S" / "snapshots" / ("a" * 40)
    shutil.copytree(path, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, out, _ = run(capsys, "info", "128S", "--json")
    info = json.loads(out)
    assert code == 0 and info["variant"] == "LeViT-128S" and info["weights"] == str(snapshot.resolve())
    assert info["model"] == "128S" and info["num_labels"] == 1000


def test_info_missing(capsys):
    code, _, err = run(capsys, "info", "facebook/levit-384")
    assert code == 1 and "python weights/fetch.py levit-384" in err


def test_fetch_offline(tmp_path, capsys):
    code, out, err = run(capsys, "fetch", "128S", "256", "--dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("HF_HUB_OFFLINE is set") == 2  # each name tried and reported


def test_python_dash_m_and_weights_fetch_script_without_traceback(tmp_path):
    # the real entry points, in fresh interpreters: a clean message and exit status 1, offline without weights
    [path] = save_images(tmp_path, ["cat.png"])
    env = dict(os.environ)
    fetch_script = tmp_path / "weights" / "fetch.py"  # a copy: it downloads next to itself, never into the repo
    fetch_script.parent.mkdir()
    shutil.copy(REPO / "weights" / "fetch.py", fetch_script)
    for cmd in ([sys.executable, "-m", "levit_np", "predict", path],
                [sys.executable, str(fetch_script), "128S"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "levit_np", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"levit-np {levit_np.__version__}"


def test_info_help_describes_the_command_and_its_model_argument(capsys):
    with pytest.raises(SystemExit) as info:
        main(["info", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "Describe a checkpoint: its variant, architecture, parameter count" in out
    assert "Hub id, released variant (128S, 128, 192, 256, 384) or checkpoint directory" in out
