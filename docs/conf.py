"""Sphinx configuration of the skkfac documentation.

Build with ``make docs`` (warnings are errors). Two pages depend on what other parts of
the repository hold at build time; this file writes them into ``docs/generated/``
(git-ignored) before Sphinx reads the sources:

* ``generated/benchmark_report.md``: includes ``benchmarks/results/REPORT.md`` when the
  benchmark has been run, otherwise says how to produce it;
* ``generated/search_api.rst``: the reference of :mod:`skkfac.search` when that module
  exists, otherwise a placeholder;
* ``generated/benchmarks_overview.inc``: the docstring of the ``benchmarks`` package
  (its sub-commands) when it exists.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "generated"
REPORT = ROOT / "benchmarks" / "results" / "REPORT.md"

# The package is normally installed (``pip install -e .``); the repository root also makes
# the ``benchmarks`` package importable for its reference.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import re  # noqa: E402

import torch  # noqa: E402

import skkfac  # noqa: E402

# The figure of the user guide trains tiny networks, for which one thread is fastest.
torch.set_num_threads(1)

# -- project -------------------------------------------------------------------------------
project = "skkfac"
author = "the skkfac developers"
copyright = "2024, the skkfac developers"
release = skkfac.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ----------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# Literal blocks (``::``) are plain text: every Python snippet is an explicit
# ``.. code-block:: python`` (or ``.. plot::``), which tests/test_docs.py runs.
highlight_language = "none"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README*"]

# No intersphinx: the build must work without network access. References to numpy,
# torch or scikit-learn objects are rendered as plain code.
nitpicky = False

autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_validation_checks: set[str] = set()

# The learning-curve figure of the user guide is drawn at build time by running its
# snippet (a couple of seconds of training on a small scikit-learn dataset).
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 96)]
plot_rcparams = {"figure.figsize": (6.4, 3.6)}
plot_apply_rcparams = True

# The benchmark report is written by another program (see _adapt_report below): its
# heading levels may skip a level.
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skkfac {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "benchmarks": [], "getting_started": []}


# -- pages that depend on the rest of the repository ----------------------------------------
def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps incremental builds quiet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_MD_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target)) or target.startswith("#")


def _adapt_report(text: str) -> str:
    """Make ``REPORT.md`` safe to build with warnings as errors, from ``docs/generated/``.

    Headings move one level down (the page has its own title); images are re-pointed at
    the report's folder, and those whose file is missing become a note; relative links
    to files (CSV, other reports) become plain text, since they are not pages here.
    """
    base = REPORT.parent

    def image(match: re.Match) -> str:
        alt, target = match.groups()
        if _is_external(target):
            return match.group(0)
        path = (base / target).resolve()
        if not path.is_file():
            return f"*(figure not available when the documentation was built: `{target}`)*"
        return f"![{alt}]({os.path.relpath(path, GENERATED).replace(os.sep, '/')})"

    def link(match: re.Match) -> str:
        label, target = match.groups()
        return match.group(0) if _is_external(target) else f"{label} (`{target}`)"

    lines, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            if line.startswith("#"):
                line = "#" + line
            line = _MD_LINK.sub(link, _MD_IMAGE.sub(image, line))
        lines.append(line)
    return "\n".join(lines) + "\n"


def _benchmark_report() -> str:
    if REPORT.is_file():
        return (
            "# Latest benchmark report\n\n"
            "This page is `benchmarks/results/REPORT.md` as it was when the documentation "
            "was built. Its numbers come from the machine that ran the benchmark.\n\n"
            + _adapt_report(REPORT.read_text(encoding="utf-8"))
        )
    return (
        "# Latest benchmark report\n\n"
        "No report was found when this documentation was built: "
        "`benchmarks/results/REPORT.md` does not exist yet. Run the benchmark "
        "(see [Reproducing the benchmark](../benchmarks.rst)) and rebuild the "
        "documentation to see its tables and figures here.\n"
    )


def _search_api() -> str:
    title = "Hyperparameter search spaces (``skkfac.search``)"
    head = f"{title}\n{'=' * len(title)}\n\n"
    if importlib.util.find_spec("skkfac.search") is not None:
        return head + ".. automodule:: skkfac.search\n   :members:\n"
    return head + (
        "The module ``skkfac.search`` (ready search spaces for "
        ":class:`skopt.BayesSearchCV`) was not part of the package when this documentation "
        "was built. :doc:`../user_guide/tuning` shows how to write a search space by hand.\n"
    )


def _benchmarks_overview() -> str:
    if (ROOT / "benchmarks" / "__init__.py").is_file():
        return (".. rubric:: The sub-commands, from the ``benchmarks`` package\n\n"
                ".. automodule:: benchmarks\n   :no-members:\n")
    return ("The ``benchmarks`` package was not part of the repository when this "
            "documentation was built.\n")


_write_if_changed(GENERATED / "benchmark_report.md", _benchmark_report())
_write_if_changed(GENERATED / "benchmarks_overview.inc", _benchmarks_overview())
_write_if_changed(GENERATED / "search_api.rst", _search_api())


# -- docstrings inherited from scikit-learn ---------------------------------------------------
# Methods such as ``score`` or ``get_params`` come from scikit-learn, whose docstrings
# point at labels of scikit-learn's own documentation (``:ref:`r2_score``` ...). Without
# intersphinx those are unresolved references, so they are shown as plain text.
_FOREIGN_ROLE = re.compile(r":(?:ref|term):`([^`<]*?)\s*(?:<([^`>]*)>)?`")


def _plain_text_role(match: re.Match) -> str:
    return match.group(1).strip() or (match.group(2) or "").strip()


def _soften_foreign_references(app, what, name, obj, options, lines):
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("skkfac"):
        return
    lines[:] = [_FOREIGN_ROLE.sub(_plain_text_role, line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _soften_foreign_references)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
