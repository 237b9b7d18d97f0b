"""sdsnn-search: the search around the SD-SNN library (spaces, runner, tracking, Pareto, export).

Public names are imported lazily (module-level ``__getattr__``) so that ``import sdsnn_search``
and ``sdsnn-search --help`` stay fast. Each part registers its names in ``_LAZY`` (name -> module)
in its own section below.
"""

from importlib import import_module as _import_module

__all__: list[str] = []
_LAZY: dict[str, str] = {}

# ---- search (issue 4) ----
_LAZY.update({
    "load_space": "sdsnn_search.space",
    "parse_space": "sdsnn_search.space",
    "SearchSpec": "sdsnn_search.space",
    "run_study": "sdsnn_search.runner",
    "resume_study": "sdsnn_search.runner",
    "StudyOutcome": "sdsnn_search.runner",
    "run_trial": "sdsnn_search.trainable",
})
# ---- end search ----

# ---- pareto / export / ui (issue 5) ----
_LAZY.update({
    "analyze_studies": "sdsnn_search.pareto",
    "load_study": "sdsnn_search.pareto",
    "ParetoResult": "sdsnn_search.pareto",
    "write_report": "sdsnn_search.report",
    "export_study": "sdsnn_search.export",
})
# ---- end pareto / export / ui ----

__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdsnn_search' has no attribute {name!r}")
