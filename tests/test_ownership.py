"""Every file a command writes is absent, or was written by the same command for the same output, or the command
refuses with one line (issue 28 item 2): plots carry a record of what wrote them (fes and cvplot never replace an
unrelated picture or each other's plots), export writes only into directories it wrote (its README.txt), and
two outputs never share a sidecar."""
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from cgdml._cli import check_sidecar, owner_of  # noqa: E402
from cgdml._io import CgdmlError, figure_owner, save_figure  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
SHIPPED = REPO / "data" / "ala2_implicit_300K"


def run(module, *args):
    return subprocess.run([sys.executable, "-m", f"cgdml.{module}", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=REPO)


def refused(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def figure(path, written_for):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, path, written_for)
    plt.close(fig)


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg", "jpg"])
def test_a_figure_records_what_wrote_it(suffix, tmp_path):
    path = tmp_path / f"plot (1) é.{suffix}"
    figure(path, "cgdml.fes")
    assert figure_owner(path) == owner_of(path) == ("cgdml.fes", path.name)
    check_sidecar(path, "cgdml.fes", path)                        # the same purpose: may be replaced
    with pytest.raises(CgdmlError, match="would overwrite the landscape plot of .* \\(written by cgdml.fes\\)"):
        check_sidecar(path, "cgdml.cvplot", path)
    other = tmp_path / "other.png"
    other.write_bytes(b"\x89PNG not ours")
    with pytest.raises(CgdmlError, match="was not written by cgdml.fes for other.png"):
        check_sidecar(other, "cgdml.fes", other)
    copy = tmp_path / f"copy.{suffix}"                           # the record names the output it was written for
    copy.write_bytes(path.read_bytes())
    with pytest.raises(CgdmlError, match="would overwrite the landscape plot of plot \\(1\\) é"):
        check_sidecar(copy, "cgdml.fes", copy)


def test_fes_and_cvplot_leave_other_pictures_alone(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n a holiday picture")
    landscape = tmp_path / "landscape.png"
    figure(landscape, "cgdml.fes")
    before = landscape.read_bytes()
    refused(run("fes", tmp_path / "t.h5", "-o", photo), "photo.png: exists and was not written by cgdml.fes")
    refused(run("cvplot", tmp_path / "m.json", "-o", photo), "photo.png: exists and was not written by cgdml.cvplot")
    refused(run("cvplot", tmp_path / "m.json", "-o", landscape), "would overwrite the landscape plot of landscape.png")
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n a holiday picture" and landscape.read_bytes() == before


@pytest.fixture(scope="module")
def model(tmp_path_factory, write_small_model):
    return write_small_model(tmp_path_factory.mktemp("own") / "m.npz")


def test_export_writes_only_into_its_own_directories(model, tmp_path):
    pytest.importorskip("openmm")
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.txt").write_text("another tool's notes")
    refused(run("export", model, "-o", other), "holds files that cgdml.export did not write there (README.txt)")
    assert (other / "README.txt").read_text() == "another tool's notes" and len(list(other.iterdir())) == 1
    mine = tmp_path / "mine"
    for _ in range(2):                                        # new, then its own: replaced
        r = run("export", model, "-o", mine)
        assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in mine.iterdir()) == ["README.txt", "system.xml", "topology.pdb"]
    (mine / "notes.txt").write_text("mine")                   # a user's note beside an export: kept, export goes on
    assert run("export", model, "-o", mine).returncode == 0 and (mine / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert run("export", model, "-o", tmp_path / "empty").returncode == 0


SIM = ["--replicas", "2", "--steps", "20", "--save-every", "10", "--burn-in", "0", "--no-progress"]


def test_two_outputs_never_share_a_sidecar(model, tmp_path):
    r = run("simulate", model, "-o", tmp_path / "cx.h5", *SIM)
    assert r.returncode == 0, r.stderr[-2000:]
    side, pdb = (tmp_path / "cx.json").read_bytes(), (tmp_path / "cx.pdb").read_bytes()
    refused(run("simulate", model, "-o", tmp_path / "cx.dcd", *SIM), "cx.", "of cx.h5 (written by cgdml.simulate)")
    assert (tmp_path / "cx.json").read_bytes() == side and (tmp_path / "cx.pdb").read_bytes() == pdb
    assert not (tmp_path / "cx.dcd").exists()
    with np.load(str(SHIPPED) + ".npz") as z:
        np.save(tmp_path / "x.npy", z["positions"][:200])
        np.save(tmp_path / "f.npy", z["forces"][:200])
    r = run("map", "--top", str(SHIPPED) + ".pdb", "--traj", tmp_path / "x.npy", "--forces", tmp_path / "f.npy",
            "--map", "ala2-5", "--temperature", "300", "-o", tmp_path / "cy.npz", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    pdb = (tmp_path / "cy.pdb").read_bytes()
    refused(run("simulate", model, "-o", tmp_path / "cy.h5", *SIM), "cy.pdb: would overwrite the CG topology of cy.npz")
    assert (tmp_path / "cy.pdb").read_bytes() == pdb and not (tmp_path / "cy.h5").exists()
