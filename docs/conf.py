"""Sphinx configuration of the pyro_spn documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (needs the ``docs`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyro_spn  # noqa: E402

project = "pyro_spn"
author = "pyro_spn developers"
copyright = "pyro_spn developers"  # noqa: A001
release = version = pyro_spn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_click",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown pages (MyST): $...$ math and ::: fences.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# autodoc + napoleon: the code uses Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []

# Cross-references into torch / pyro / click type hints cannot resolve without intersphinx (offline
# builds); they are not errors of these pages, so nitpicky mode stays off.
nitpicky = False

html_theme = "alabaster"
html_title = f"pyro_spn {release}"
html_static_path: list[str] = []
