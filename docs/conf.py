"""Sphinx configuration of the cgdml documentation.

Build (what .ci/run does, after ``pip install -e '.[docs]'``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The tutorials are the notebooks in ../tutorials, rendered by myst-nb from what they store, without running them
(they are committed without outputs; ``tests/test_tutorials.py`` runs them).
"""
import importlib.util
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))      # document this checkout's cgdml, whatever else is installed

import cgdml  # noqa: E402

project = "cgdml"
copyright = "the cgdml authors"
version = release = cgdml.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",             # Markdown (myst-parser) and notebooks
]

# ------------------------------------------------------------------------------------------ sources
exclude_patterns = ["_build", "**.ipynb_checkpoints", "api/_*.md"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"          # render the notebooks as stored; never execute them here
nb_merge_streams = True


def _copy_tutorials():
    """Copy ../tutorials/*.ipynb into docs/tutorials/ (git-ignored), where Sphinx can read them."""
    dest = DOCS / "tutorials"
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.ipynb"):
        old.unlink()
    for nb in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(nb, dest / nb.name)


_copy_tutorials()


def _write_exports():
    """docs/api/_exports.md (git-ignored): a line for every name in ``cgdml.__all__``, linked to where it is
    documented, so that the list follows the package."""
    lines = []
    for name in cgdml.__all__:
        obj = getattr(cgdml, name)
        if isinstance(obj, type(cgdml)):
            lines.append(f"- {{py:mod}}`cgdml.{name} <{obj.__name__}>`")
        else:
            role = "class" if isinstance(obj, type) else "func" if callable(obj) else "data"
            lines.append(f"- {{py:{role}}}`cgdml.{name} <{obj.__module__}.{obj.__qualname__}>`")
    text = "\n".join(lines) + "\n"
    path = DOCS / "api" / "_exports.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


_write_exports()

# ------------------------------------------------------------------------------------------ API pages
# One page per module, docs/api/<module>.md. The issue 24 refactor adds modules that are not in every branch
# yet: their pages are listed here and left out of the build until the module exists. Once it does, the build
# stops with a warning that names the page, so that it is not forgotten: delete its line below.


# Modules that are commands (thin layers over the library, documented in guide/commands.md), not API pages.
COMMAND_MODULES = {"cgdml.map", "cgdml.fit", "cgdml.export", "cgdml.cvplot"}




def _library_modules():
    """Every public module of the cgdml package, commands and private modules left out."""
    import pkgutil

    names = set()
    for info in pkgutil.walk_packages(cgdml.__path__, "cgdml."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]) or info.name in COMMAND_MODULES:
            continue
        names.add(info.name)
    return sorted(names)


def _report_layout(app):
    from sphinx.util import logging

    log = logging.getLogger("cgdml.docs")
    for m in _library_modules():
        if not (DOCS / "api" / f"{m}.md").exists():
            log.warning(f"module {m} has no API page: add docs/api/{m}.md (a title and an automodule directive, "
                        "as the other pages), or add it to COMMAND_MODULES (docs/conf.py) if it is a command")


# Two habits of the docstrings that reStructuredText reads otherwise, fixed here rather than in every docstring
# (after napoleon has turned its sections into reST):
# - |x| for absolute values and norms would be a substitution: every | outside literals (``...``, `...`, and
#   literal blocks after ::) is escaped;
# - "name : text" parameter lines without a numpydoc section header (which napoleon leaves alone) would be a
#   definition list that the next entry breaks: such a run of entries, after a blank line, becomes a bullet list
#   "- ``name``: text".
_LITERAL_SPAN = re.compile(r"(``.+?``|`[^`]+`)")
_BARE_PARAMETER = re.compile(r"^([A-Za-z_]\w*) : (\S.*)$")


def _fix_docstring(app, what, name, obj, options, lines):
    literal_indent, in_list = None, False
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and (not line.strip() or indent > literal_indent):
            continue                               # inside a literal block
        literal_indent = None
        if "|" in line:
            parts = _LITERAL_SPAN.split(line)
            lines[i] = "".join(p if j % 2 else p.replace("|", r"\|") for j, p in enumerate(parts))
        match = _BARE_PARAMETER.match(lines[i])
        if match and (in_list or i == 0 or not lines[i - 1].strip()):
            lines[i], in_list = f"- ``{match.group(1)}``: {match.group(2)}", True
        elif in_list and line.strip() and indent > 0:
            lines[i] = "  " + lines[i].lstrip()    # an entry's continuation
        else:
            in_list = False
        if line.rstrip().endswith("::"):
            literal_indent = indent


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn adds set_{fit,score,...}_request to every estimator class; they are not cgdml's API
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    app.connect("builder-inited", _report_layout)
    app.connect("autodoc-process-docstring", _fix_docstring)
    app.connect("autodoc-skip-member", _skip_member)


# ------------------------------------------------------------------------------------------ autodoc
# ignore-module-all: a package that re-exports its submodules' names in __all__ documents only its own, so that
# nothing is described twice
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True,
                           "member-order": "bysource", "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True

# ------------------------------------------------------------------------------------------ output
html_theme = "furo"
html_title = f"cgdml {release}"
html_static_path = []
