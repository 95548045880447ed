"""Capped peptides from a sequence (``--sequence``), the native GB force, and a short ACE-AAA-NME run."""
import importlib.util
import json
import sys

import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.reference import build_peptide, build_system, check_gb, default_name, run_reference
from cgdml.reference.__main__ import main

SHORT = dict(ns=0.004, save_every_ps=0.2, chunk_ns=0.002, equilibrate_ps=0.4, seed=7, threads=1, progress=False,
             log=lambda *a: None)
needs_builder = pytest.mark.skipif(importlib.util.find_spec("PeptideBuilder") is None,
                                   reason="needs the peptides extra (PeptideBuilder, Biopython)")


def _context(system, platform="Reference"):
    import openmm

    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))


@needs_builder
def test_ace_aaa_nme_has_42_atoms_the_right_residues_and_bonds():
    top, pos = build_peptide("aaa")  # case-insensitive
    assert top.getNumAtoms() == 42 and len(pos) == 42
    assert [r.name for r in top.residues()] == ["ACE", "ALA", "ALA", "ALA", "NME"]
    assert top.getNumBonds() == 41  # a tree: no rings in ACE-AAA-NME
    elements = sorted(a.element.symbol for a in top.atoms())
    assert {e: elements.count(e) for e in set(elements)} == {"C": 12, "N": 4, "O": 4, "H": 22}
    # peptide bonds join consecutive residues, C(i) - N(i+1)
    links = sorted((a.residue.index, b.residue.index) for a, b in top.bonds() if a.residue is not b.residue)
    assert [tuple(sorted(x)) for x in links] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    x = np.array(pos.value_in_unit(pos.unit))
    np.testing.assert_array_equal(x, np.array(build_peptide("AAA")[1].value_in_unit(pos.unit)))  # deterministic


@needs_builder
def test_built_peptide_minimises_to_a_finite_negative_energy():
    import openmm
    from openmm import unit

    for seq in ("AAA", "GPHKDW"):
        _, pos, system, _ = build_system("implicit", sequence=seq)
        ctx = _context(system, "CPU")
        ctx.setPositions(pos)
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 500)
        energy = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert np.isfinite(energy) and energy < 0, (seq, energy)


@needs_builder
def test_native_gb_has_the_forces_of_obc2_xml():
    """--gb native (GBSAOBCForce) and custom (implicit/obc2.xml's CustomGBForce) are the same model."""
    import openmm
    from openmm import unit

    _, pos, custom, _ = build_system("implicit", sequence="AAA", gb="custom")
    _, _, native, _ = build_system("implicit", sequence="AAA", gb="native")
    assert any(isinstance(f, openmm.GBSAOBCForce) for f in native.getForces())
    assert not any(isinstance(f, openmm.CustomGBForce) for f in native.getForces())
    out = []
    for system in (custom, native):
        ctx = _context(system)
        ctx.setPositions(pos)
        st = ctx.getState(getEnergy=True, getForces=True)
        out.append((st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                    st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))
    assert abs(out[0][0] - out[1][0]) < 1e-3
    np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-3)


def test_bad_sequence_letter_is_a_one_line_error(tmp_path):
    with pytest.raises(CgdmlError, match=r"'X' \(position 2\) is not a standard amino acid") as exc:
        build_peptide("AXA")
    assert "\n" not in str(exc.value)
    for bad in ("", "A A", "AB1"):
        with pytest.raises(CgdmlError, match="--sequence"):
            main(["-o", str(tmp_path / "run"), "--sequence", bad])
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_missing_builder_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PeptideBuilder", None)  # import fails as if not installed
    with pytest.raises(CgdmlError, match=r"cgdml\[peptides\]"):
        build_peptide("AAA")
    assert build_peptide("A")[0].getNumAtoms() == 22  # the dipeptide is embedded: no builder needed


def test_defaults_keep_the_dipeptide_as_shipped():
    assert default_name("A", "implicit", 300.0) == "ala2_implicit_300K"
    assert default_name("AAA", "explicit", 350) == "ace-aaa-nme_explicit_350K"
    assert check_gb("implicit", None, "A") == "custom" and check_gb("implicit", None, "AAA") == "native"
    assert check_gb("explicit", None, "AAA") is None
    with pytest.raises(CgdmlError, match="implicit solvent only"):
        check_gb("explicit", "native", "AAA")
    top, pos = build_peptide()
    assert [r.name for r in top.residues()] == ["ACE", "ALA", "NME"] and top.getNumAtoms() == 22


@needs_builder
def test_short_tetrapeptide_run_writes_positions_and_forces(tmp_path):
    pdb, npz = run_reference(tmp_path, sequence="AAA", **SHORT)
    assert npz.name == "ace-aaa-nme_implicit_300K.npz" and pdb.name == "ace-aaa-nme_implicit_300K.pdb"
    z = np.load(npz)
    assert z["positions"].shape == (20, 42, 3) and z["forces"].shape == (20, 42, 3)
    assert np.isfinite(z["positions"]).all() and np.isfinite(z["forces"]).all()
    assert np.abs(z["forces"]).max() > 0
    info = json.loads(str(z["info_json"]))
    assert info["sequence"] == "AAA" and info["gb"] == "native" and "GBSAOBCForce" in info["force_field"][1]
    import mdtraj as md

    top = md.load_topology(str(pdb))
    assert top.n_atoms == 42 and [r.name for r in top.residues] == ["ACE", "ALA", "ALA", "ALA", "NME"]
    # another sequence in the same directory is refused
    with pytest.raises(CgdmlError, match="other settings.*sequence"):
        run_reference(tmp_path, sequence="AAG", **SHORT)


def test_run_json_from_before_sequence_and_gb_still_resumes(tmp_path):
    """A dipeptide run directory written before --sequence/--gb existed resumes as the dipeptide with obc2.xml."""
    short = {**SHORT, "ns": 0.002, "chunk_ns": 0.001}
    run_reference(tmp_path, **short)
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["sequence"] == "A" and settings["gb"] == "custom"
    del settings["sequence"], settings["gb"]
    (tmp_path / "run.json").write_text(json.dumps(settings))
    messages = []
    run_reference(tmp_path, **{**short, "log": messages.append})
    assert any("2/2 chunks done" in m for m in messages)
    with pytest.raises(CgdmlError, match="other settings.*gb"):
        run_reference(tmp_path, **{**short, "gb": "native"})
