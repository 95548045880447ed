"""``python -m cgdml.reference -o DIR [--sequence AAA]``: an all-atom OpenMM reference run of a capped peptide with
positions and forces (the library is :mod:`cgdml.reference`)."""
from __future__ import annotations

from .._cli import (ArgumentParser, add_verbosity_arguments, configure_logging, cpu_count, float_between, int_between,
                    run_cli, seed_int, show_progress)
from ..reference import GB_MODELS, run_reference


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="run directory (chunks, checkpoint, assembled files): new, "
                   "empty, or an earlier run's (with its run.json)")
    p.add_argument("--ns", type=float_between(0, 1e6, "ns", low_open=True), default=20.0, help="production length in ns (default 20)")
    p.add_argument("--save-every-ps", type=float_between(0, 1e6, "ps", low_open=True), default=1.0, help="frame spacing in ps (default 1)")
    p.add_argument("--temperature", type=float_between(0, 1e4, "K", low_open=True), default=300.0, help="K (default 300)")
    p.add_argument("--sequence", default="A",
                   help="one-letter amino acids between ACE and NME caps (default A: alanine dipeptide; "
                        "AAA: ACE-ALA-ALA-ALA-NME; other than A needs the peptides extra)")
    p.add_argument("--solvent", choices=("implicit", "explicit"), default="implicit",
                   help="implicit (OBC2 generalised Born, default) or explicit (TIP3P water box, barostat)")
    p.add_argument("--gb", choices=GB_MODELS, default=None,
                   help="implicit-solvent OBC2 GB as implicit/obc2.xml's CustomGBForce (custom) or OpenMM's native "
                        "GBSAOBCForce with the same parameters (native, faster); default custom for --sequence "
                        "A, native otherwise")
    p.add_argument("--seed", type=seed_int, default=2024, help="seed of the velocities and the Langevin noise, 0 to "
                   "2^32 - 1 (default 2024)")
    p.add_argument("--platform", default="CPU", help="OpenMM platform: CPU (default), CUDA, OpenCL or Reference")
    p.add_argument("--threads", type=int_between(0, cpu_count(), "the CPUs of this machine"), default=1, help="CPU platform threads (default 1)")
    p.add_argument("--chunk-ns", type=float_between(0, 1e6, "ns", low_open=True), default=1.0, help="ns per chunk file (default 1)")
    p.add_argument("--timestep-fs", type=float_between(0, 10, "fs: bonds to H are constrained, heavy-atom bonds are not", low_open=True), default=4.0, help="time step in fs (default 4, with hydrogen mass "
                   "repartitioning and constrained bonds to H)")
    p.add_argument("--friction", type=float_between(0, 1e4, "1/ps"), default=1.0, help="Langevin friction in 1/ps (default 1)")
    p.add_argument("--hydrogen-mass", type=float_between(1, 4.5, "amu: the mass comes from the bonded heavy atom, and a CH3 carbon keeps 12 - 3 (m - 1)"), default=4.0, help="repartitioned H mass in amu (default 4)")
    p.add_argument("--equilibrate-ps", type=float_between(0, 1e6, "ps"), default=100.0, help="equilibration after minimisation, not saved, "
                   "in ps (default 100)")
    p.add_argument("--name", default=None,
                   help="base name of the assembled files (default ala2_SOLVENT_TK for A, else ace-SEQ-nme_SOLVENT_TK)")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    pdb, npz = run_reference(a.output, ns=a.ns, save_every_ps=a.save_every_ps, temperature=a.temperature,
                             solvent=a.solvent, seed=a.seed, platform=a.platform, threads=a.threads,
                             chunk_ns=a.chunk_ns, timestep_fs=a.timestep_fs, friction_per_ps=a.friction,
                             hydrogen_mass=a.hydrogen_mass, equilibrate_ps=a.equilibrate_ps, sequence=a.sequence,
                             gb=a.gb, name=a.name,
                             progress=show_progress(a))
    print(f"wrote {pdb} and {npz}")
    return 0


def cli():
    """The console script ``cgdml-reference`` (setup.cfg): the same command as ``python -m cgdml.reference``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
