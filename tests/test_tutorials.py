"""Execute the tutorial notebooks (tutorials/*.ipynb) with small settings; a cell that raises fails the test.

Deselect with ``-m "not tutorial"``. The notebooks run in order and share one output directory, so that
notebook 3 simulates the model notebook 2 fitted (each notebook also runs on its own).
"""
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "cgdml-tutorial-test"
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory):
    """An output directory, and a kernelspec that runs this interpreter (not whatever 'python3' a user's
    Jupyter configuration points at), found first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("tutorials")
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cgdml tests", "language": "python"}))
    out = root / "out"
    out.mkdir()
    return root / "jupyter", out


def test_notebooks_found():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


def test_notebooks_have_no_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.tutorial
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, jupyter_env, monkeypatch):
    jupyter_path, out = jupyter_env
    monkeypatch.setenv("CGDML_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("CGDML_TUTORIAL_OUT", str(out))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_path), os.environ.get("JUPYTER_PATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()      # raises CellExecutionError naming the cell and its traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2, f"{path.name}: expected figures in the outputs, got {images}"
