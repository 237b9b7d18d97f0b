"""Plugins: your own backbones and datasets, without editing the package.

A plugin is a Python module that registers things when it is imported, with
:func:`sdsnn.models.register_model` or :func:`sdsnn.data.register_dataset`. Name plugins in the
environment variable ``SDSNN_PLUGINS`` (comma-separated; each entry a module name importable from
``sys.path``, or the path of a ``.py`` file), or with ``sdsnn-search --plugin ...``, which sets
that variable for the command and every process it starts (Ray's trial workers inherit it; a
search that joins a cluster with ``--address`` sends it along). Every lookup by name (a dataset,
a backbone, a search space's validation) loads the named plugins first (each once per process),
so a plugin may also replace a built-in backbone for every process alike.

No torch import here: the registries import this module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .errors import UserError

__all__ = ["ENV", "plugin_entries", "load_plugins", "add_plugins", "plugins_env_value"]

#: The environment variable that names the plugins.
ENV = "SDSNN_PLUGINS"

_loaded: set[str] = set()


def plugin_entries() -> list[str]:
    """The entries of ``SDSNN_PLUGINS``, in order, without blanks and repeats; ``.py`` paths made
    absolute (relative to the current directory)."""
    raw = os.environ.get(ENV, "")
    return list(dict.fromkeys(_normalise(e) for e in raw.split(",") if e.strip()))


def _normalise(entry: str) -> str:
    entry = entry.strip()
    return str(Path(entry).expanduser().resolve()) if entry.endswith(".py") else entry


def _loaded_from(path: Path) -> bool:
    """Whether a module of this process was imported from the file ``path`` (by name or path)."""
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if f and f.endswith(path.name):
            try:
                if Path(f).resolve() == path:
                    return True
            except OSError:
                continue
    return False


def _import(entry: str) -> None:
    if entry.endswith(".py"):
        path = Path(entry)
        if not path.is_file():
            raise UserError(f"plugin '{entry}' (from {ENV}): no such file; give an existing .py file or a module name")
        if _loaded_from(path):
            return  # already imported, e.g. as a module on sys.path
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        name = f"sdsnn_plugin_{path.stem}_{digest}"  # two files named alike stay two modules
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(name, None)
            raise
    else:
        importlib.import_module(entry)


def load_plugins() -> None:
    """Import every plugin named in ``SDSNN_PLUGINS`` that this process has not imported yet
    (cheap once they are: lookups call it every time).

    Raises :class:`~sdsnn.errors.UserError` (one line) when one cannot be imported.
    """
    for entry in plugin_entries():
        if entry in _loaded:
            continue
        try:
            _import(entry)
        except UserError:
            raise
        except ModuleNotFoundError as e:
            missing = e.name or ""
            if entry == missing or entry.startswith(missing + "."):
                raise UserError(f"plugin '{entry}' (from {ENV}): {e}; give a module on sys.path (PYTHONPATH) "
                                f"or the path of its .py file") from None
            raise UserError(f"plugin '{entry}' (from {ENV}) needs a package that is not installed: {e}") from None
        except Exception as e:
            raise UserError(f"plugin '{entry}' (from {ENV}) failed while importing: "
                            f"{type(e).__name__}: {e}") from None
        _loaded.add(entry)


def plugins_env_value() -> str:
    """``SDSNN_PLUGINS`` as processes started elsewhere (Ray's workers) should see it: file paths
    absolute. Empty when no plugin is named."""
    return ",".join(plugin_entries())


def add_plugins(entries: list[str]) -> None:
    """Append ``entries`` to ``SDSNN_PLUGINS`` (file paths made absolute, so that processes
    started elsewhere find them) and load them all."""
    for e in entries:
        if "," in e:
            raise UserError(f"plugin '{e}': a comma separates plugins in {ENV}; rename the file or folder "
                            f"without the comma")
    merged = list(dict.fromkeys([*plugin_entries(), *(_normalise(e) for e in entries if e.strip())]))
    if merged:
        os.environ[ENV] = ",".join(merged)
    load_plugins()
