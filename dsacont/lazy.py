"""Lazy public names for a package (PEP 562): ``import dsacont`` stays light, and each name is
imported from its module the first time it is used."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name -> module).

    Parameters
    ----------
    package : str
        The package's dotted name (for the error message).
    exports : dict
        Public name -> dotted module that defines it.
    namespace : dict
        The package's ``globals()``: a name, once imported, is stored there.
    """

    def __getattr__(name):
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(list(namespace) + list(exports))

    return __getattr__, __dir__
