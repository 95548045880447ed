"""The one interrupt rule (issue 28 item 4): Ctrl-C (SIGINT) at any moment of a command prints one line, leaves
the checkpoint for a rerun, and exits with status 130 -- while the command imports its modules, while it runs,
and when compiled code turns the KeyboardInterrupt into another error."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cgdml import _interrupt
from cgdml._cli import _from_interrupt, run_cli

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_an_error_caused_by_an_interrupt_is_an_interrupt(capsys):
    def main(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:      # what numba makes of a Ctrl-C inside a compiled call
            raise SystemError("CPUDispatcher(<function f>) returned a result with an exception set") from exc

    with pytest.raises(SystemExit) as info:
        run_cli(main, [])
    assert info.value.code == 130
    assert capsys.readouterr().err == _interrupt.MESSAGE + "\n"
    assert not _from_interrupt(ValueError("x")) and _from_interrupt(OSError("y").with_traceback(None)) is False


def test_the_commands_are_recognised():
    assert _interrupt.started_as_command(["python", "-m", "cgdml.simulate", "m.npz"])
    assert _interrupt.started_as_command(["python", "-X", "dev", "-m", "cgdml.fit", "-o", "m.npz"])
    assert not _interrupt.started_as_command(["python", "-m", "pytest", "-m", "cgdml.x"])
    assert not _interrupt.started_as_command(["python", "-c", "import cgdml"])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from cgdml.gdml import GDML
    from cgdml.mapping import load_default_cg_dataset
    from cgdml.model import CGModel
    from cgdml.prior import CGPrior

    ds = load_default_cg_dataset(stride=50)
    prior = CGPrior().fit(ds.coords, ds.temperature)
    R = ds.coords[:60]
    gdml = GDML(sigma=0.4, lam=0.1, relative_lam=True).fit(R, ds.forces[:60] - prior.forces(R))
    path = tmp_path_factory.mktemp("interrupt") / "m.npz"
    CGModel(gdml.model_, prior, ds.system, ds.coords[:40]).save(path)
    return path


def _default_sigint():
    """In the child: SIGINT's default disposition, as in a terminal. A shell runs background jobs with SIGINT
    ignored (nohup, `cmd &`, some CI runners), the child inherits that, and a command rightly leaves an ignored
    SIGINT alone; the test is about what a user at a terminal gets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _simulate(model, out, steps):
    return subprocess.Popen([sys.executable, "-m", "cgdml.simulate", str(model), "-o", str(out), "--replicas", "2",
                             "--steps", str(steps), "--save-every", "10", "--burn-in", "0", "--no-progress",
                             "--checkpoint-every", "20", "--slow-every", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=out.parent,
                            preexec_fn=_default_sigint)


def _wait_for(proc, ready, what, timeout=180):
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{what} did not happen (status {proc.poll()}): {proc.communicate()}")
        time.sleep(0.01)


def _imports_numpy(proc):
    try:
        return "_multiarray_umath" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see a command's start")
@pytest.mark.parametrize("when", ["importing", "first checkpoint", "running"])
def test_ctrl_c_during_simulate_is_one_line_and_130(when, model, tmp_path):
    out = tmp_path / "t.h5"
    ckpt = Path(str(out) + ".ckpt.npz")
    proc = _simulate(model, out, 100000)
    if when == "importing":           # after cgdml's first line, before the command's main: numpy is loading
        _wait_for(proc, lambda: _imports_numpy(proc), "loading numpy", timeout=60)
    else:
        _wait_for(proc, ckpt.exists, "a checkpoint")
        if when == "running":
            time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (130, _interrupt.MESSAGE + "\n"), stderr[-3000:]
    assert not out.exists()
    if when != "importing":
        with np.load(ckpt) as z:
            assert "positions" in z.files          # the checkpoint stays for a rerun
