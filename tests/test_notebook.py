"""notebooks/levit_walkthrough.ipynb: executes top to bottom on a fresh kernel without error (its own cells assert
every parity check), is exactly what notebooks/build_walkthrough.py builds, and is committed with its outputs.

Needs the `notebook` extra (nbclient, nbformat, ipykernel, matplotlib, scikit-image).
"""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "notebooks" / "build_walkthrough.py"
CELL_TIMEOUT = 300  # seconds per cell; the whole notebook takes about a minute on two cores


def load_generator():
    spec = importlib.util.spec_from_file_location("build_walkthrough", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(gen.NOTEBOOK, as_version=4)


def test_notebook_is_what_the_generator_builds(committed):
    built = gen.build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        "notebooks/levit_walkthrough.ipynb is out of date: run `python notebooks/build_walkthrough.py`"
    assert committed.metadata.kernelspec.name == gen.KERNEL


def test_committed_notebook_keeps_its_outputs(committed):
    assert gen.NOTEBOOK.stat().st_size < 3_000_000, "keep the notebook small: fewer or smaller figures"
    code = [c for c in committed.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "commit the notebook executed once, top to bottom"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    for cell in code:  # every tagged figure is in the notebook and exported for the README
        for tag in cell.metadata.get("tags", []):
            name = tag.removeprefix("figure:")
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"figure {name} has no image"
            assert (gen.FIGURES / f"{name}.png").is_file(), f"notebooks/figures/{name}.png is missing"


def test_kernel_runs_this_python(monkeypatch):
    # the `python3` kernelspec must start the interpreter running the tests (the venv with levit_np installed)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    gen.execute(nb, timeout=60)
    assert Path(nb.cells[0].outputs[0].text.strip()).resolve() == Path(sys.prefix).resolve()


def test_notebook_executes_on_a_fresh_kernel(committed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the notebook never downloads; make sure nothing tries
    nb = nbformat.from_dict(committed)  # a copy: outputs are replaced, the file is not written
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    gen.execute(nb, timeout=CELL_TIMEOUT)  # raises CellExecutionError (with the traceback) on any error
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "max|levit_np - HF|" in text and "checks; weights:" in text
