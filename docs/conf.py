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
    ("py:class", r"collections\.abc\.Callable"),
    # In attempts()'s signature; Attempt's private constructor argument.
    ("py:class", r"collections\.abc\.Iterator"),
    ("py:class", r"_AttemptLoop"),
]
