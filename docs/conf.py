"""Sphinx configuration for the reconnecting documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import reconnecting

project = "reconnecting"
# The one version, defined in reconnecting/__init__.py; shown in every title.
version = release = reconnecting.__version__
html_title = f"{project} {release}"
copyright = "2007-2026, the reconnecting authors"
extensions = [
    "sphinx.ext.autodoc",
    # autointerface: zope.interface interfaces, with their attributes and methods.
    "repoze.sphinx.autointerface",
]
html_theme = "furo"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = True
nitpick_ignore_regex = [
    # Driver objects are duck-typed; these names are not documented here.
    ("py:class", r"(types\.)?TracebackType"),
    # The sys.exc_info() triple, spelled out in Retry's docstring.
    ("py:class", r"ExcInfo"),
    # Not documented here (no intersphinx); in wait_until()'s signature.
    ("py:class", r"collections\.abc\.(Callable|Awaitable|AsyncIterator)"),
    # In attempts()'s signature; Attempt's private constructor argument.
    ("py:class", r"collections\.abc\.Iterator"),
    ("py:class", r"(reconnecting\.connection\.)?AttemptLoop"),
    # SQLAlchemy's classes, in the signatures of the dialects' helpers.
    ("py:class", r"sqlalchemy\..*"),
]

# Diagrams: Graphviz draws them at build time from the text beside the
# prose, as SVG on a transparent background, in one font and one line
# colour; _static/diagrams.css inverts them in furo's dark theme.
extensions.append("sphinx.ext.graphviz")
graphviz_output_format = "svg"
graphviz_dot_args = [
    "-Gbgcolor=transparent",
    *(f"-{kind}fontname=Helvetica,Arial,sans-serif" for kind in "GNE"),
    *(f"-{kind}{name}=#333333" for kind in "NE" for name in ("color", "fontcolor")),
    "-Nfontsize=12",
    "-Efontsize=10",
]
html_static_path = ["_static"]
html_css_files = ["diagrams.css"]
