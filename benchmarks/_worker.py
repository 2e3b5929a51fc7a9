"""Worker process of the circuit benchmark: ``python _worker.py LIBRARY CONFIG_JSON [--memory OP] [--source DIR]``.

Run by ``bench_circuit.py`` with the interpreter that has ``LIBRARY`` installed (or its dependencies, for a
library imported from a source checkout with ``--source``); see ``_common.serve``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from _common import Built, Config, serve

# Library name -> (adapter module, builder function).
LIBRARIES: dict[str, tuple[str, str]] = {
    "pyro_spn": ("_ours", "build"),
    "spflow-rat": ("_peer_spflow", "build_rat"),
    "spflow-einet": ("_peer_spflow", "build_einet"),
    "cirkit": ("_peer_cirkit", "build"),
    "dsp": ("_peer_dsp", "build"),
}


def main() -> None:
    """Parse the command line, import only the requested adapter and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("library", choices=sorted(LIBRARIES))
    parser.add_argument("config", help="Config as JSON")
    parser.add_argument("--memory", metavar="OP", help="measure the peak memory of one call of OP and exit")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="put DIR first on sys.path before importing the adapter (a library that is not installed, "
                             "e.g. dsp: the root of the paper's repository)")
    args = parser.parse_args()
    if args.source is not None:
        sys.path.insert(0, str(args.source))
    module_name, function_name = LIBRARIES[args.library]
    build: Callable[[Config], Built] = getattr(importlib.import_module(module_name), function_name)
    serve(build, Config.from_json(args.config), args.memory)


if __name__ == "__main__":
    main()
