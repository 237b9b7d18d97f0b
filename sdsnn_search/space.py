"""Search-space files (``search_spaces/*.yaml``), validated by one schema.

A space file is the experiment schema (:class:`sdsnn.config.ExperimentConfig`) plus
distributions over some of its fields, named by dotted path::

    name: digits-quickstart          # default study name
    dataset: digits                  # sets experiment.data.dataset
    experiment:                      # any field of ExperimentConfig, held fixed
      model: {name: mlp, depth: 1, width: 64}
      plasticity: {develop_every: 4, spine_window: 2}
    params:                          # distributions over dotted paths
      plasticity.shrink_factor: {type: uniform, low: 0.5, high: 0.9}
      train.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2}
      model.width: {type: int, low: 32, high: 128, step: 32}
      plasticity.develop_every: {type: categorical, choices: [2, 4, epoch]}
    objectives:                      # 1 to 3; default val_acc max and energy_pj min
      - {metric: val_acc, mode: max}
      - {metric: energy_pj, mode: min}
    constraints:                     # handed to Optuna's constraints_func
      - {metric: val_acc, op: ">=", value: 0.5}
    reference_point: [0.0, 2.0e5]    # one value per objective, in the metric's own units (optional:
                                     # pareto derives one from the trials without it)
    search: {sampler: nsga2, num_samples: 12, max_concurrent: 2, seed: 0, epochs: 3}
    scheduler: {type: none}          # or {type: asha, metric: val_acc, mode: max}
    resources: {cpu: 1, gpu: 0}      # per trial; fractions allowed

:func:`load_space` reads and validates a file and returns a :class:`SearchSpec`. Every problem is
a :class:`~sdsnn.errors.ConfigError` with one line naming the file, the field path and the fix.
Nothing here imports Ray or Optuna; torch only to check a backbone name that the space sets
(``model.name``, fixed or as choices) against the model registry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdsnn.config import ExperimentConfig, ModelConfig, apply_overrides, format_validation_error, read_yaml_file
from sdsnn.errors import ConfigError

__all__ = [
    "SearchSpec",
    "ParamSpec",
    "Objective",
    "Constraint",
    "SearchSettings",
    "SchedulerSettings",
    "Resources",
    "load_space",
    "parse_space",
    "KNOWN_METRICS",
    "DEFAULT_OBJECTIVES",
]

#: Final metrics a trial reports (docs/internals.md), usable as objectives and constraints.
KNOWN_METRICS: dict[str, str] = {
    "val_acc": "max",
    "val_loss": "min",
    "train_acc": "max",
    "train_loss": "min",
    "energy_pj": "min",
    "dense_energy_pj": "min",
    "energy_ratio": "min",
    "sops": "min",
    "macs": "min",
    "params": "min",
    "syn_prune_rate": "max",
    "neuron_prune_rate": "max",
    "epoch_time_s": "min",
}

DEFAULT_OBJECTIVES = [{"metric": "val_acc", "mode": "max"}, {"metric": "energy_pj", "mode": "min"}]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One distribution over a config field: uniform, loguniform, int (with step), categorical."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False  # int only: sample on a log scale
    choices: Optional[list[Union[bool, int, float, str, None]]] = None

    def values_to_check(self) -> list[Any]:
        """Representative values (the bounds or every choice) used to validate the config path."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


class Objective(_Strict):
    metric: str
    mode: Literal["max", "min"]


class Constraint(_Strict):
    metric: str
    op: Literal[">=", "<="]
    value: float


class SearchSettings(_Strict):
    sampler: Literal["nsga2", "tpe", "random", "gp"] = "nsga2"
    num_samples: int = Field(12, ge=1)  # searched trials (the dense baseline comes on top)
    max_concurrent: int = Field(2, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the samplers' (numpy) seed range
    epochs: Optional[int] = Field(None, ge=1)  # overrides experiment.train.epochs
    time_budget_s: Optional[float] = Field(None, gt=0)
    max_failures: int = Field(0, ge=0)  # retries per trial after an error
    population_size: Optional[int] = Field(None, ge=2)  # nsga2; default: num_samples // 3 in [4, 50]
    n_startup_trials: Optional[int] = Field(None, ge=1)  # tpe, gp; default: num_samples // 3 in [3, 10]
    baseline: bool = True  # train one dense baseline per study


class SchedulerSettings(_Strict):
    type: Literal["none", "asha"] = "none"
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _ray_fractions(self) -> "Resources":
        for name in ("cpu", "gpu"):
            v = getattr(self, name)
            if v > 1 and v != int(v):
                raise ValueError(f"{name}: fractions are allowed only below 1 (Ray's rule); use e.g. 0.5 or 2")
        return self


class SearchSpec(_Strict):
    """A validated search space: what ``sdsnn-search run`` executes."""

    name: Optional[str] = None
    dataset: str = "digits"
    experiment: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(**o) for o in DEFAULT_OBJECTIVES])
    constraints: list[Constraint] = Field(default_factory=list)
    reference_point: Optional[list[float]] = None
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: Resources = Field(default_factory=Resources)

    # --------------------------------------------------------------- derived
    def base_config(self) -> dict[str, Any]:
        """The fixed experiment config (dict) every trial starts from."""
        d = apply_overrides(self.experiment, {"data.dataset": self.dataset})
        if self.search.epochs is not None:
            d = apply_overrides(d, {"train.epochs": self.search.epochs})
        if "train" not in d or d["train"].get("threads") is None:
            d = apply_overrides(d, {"train.threads": max(1, int(math.ceil(self.resources.cpu)))})
        if "train" not in d or d["train"].get("device") in (None, "auto"):
            d = apply_overrides(d, {"train.device": "auto" if self.resources.gpu > 0 else "cpu"})
        return d

    def trial_config(self, params: dict[str, Any], *, baseline: bool = False, data_root: Optional[str] = None) -> ExperimentConfig:
        """The experiment config of one trial (searched values set; dense when ``baseline``)."""
        d = apply_overrides(self.base_config(), {} if baseline else params)
        if data_root:
            d = apply_overrides(d, {"data.data_root": data_root})
        cfg = ExperimentConfig.model_validate(d)
        return cfg.dense_baseline() if baseline else cfg

    @property
    def epochs(self) -> int:
        return ExperimentConfig.model_validate(self.base_config()).train.epochs

    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------- validation
def _check_model_names(spec: SearchSpec, fail: Callable[[str, str], None]) -> None:
    """Backbone names the space sets (fixed, or as choices) must be registered: caught here, not
    as a failed baseline trial. Imports the model registry (torch) only when a name is given."""
    given: list[tuple[str, Any]] = []
    fixed = (spec.experiment.get("model") or {}).get("name") if isinstance(spec.experiment.get("model"), dict) else None
    if fixed is not None:
        given.append(("experiment.model.name", fixed))
    p = spec.params.get("model.name")
    if p is not None and p.type == "categorical":
        given += [("params.model.name.choices", c) for c in p.choices or []]
    if not given:
        return
    from sdsnn.models import MODELS

    for path, name in given:
        if name not in MODELS:
            fail(path, f"unknown backbone '{name}' (choose one of {', '.join(MODELS)}; your own: "
                       f"register_model in a plugin, see 'Extending' in the README)")


def _check_experiment(spec: SearchSpec, where: str) -> ExperimentConfig:
    """The fixed experiment config, as the trials get it (:meth:`SearchSpec.base_config`), validated."""
    try:
        return ExperimentConfig.model_validate(spec.base_config())
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where).replace("field '", "field 'experiment.", 1)) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: field 'experiment': {e}") from None


def _check_backbones_build(spec: SearchSpec, cfg: ExperimentConfig, fail: Callable[[str, str], None]) -> None:
    """Build every backbone the space can pick (the fixed one, and each ``model.name`` choice) once
    with the fixed config, for the dataset's input: a builder bug (a plugin's, most likely) fails
    here in one line instead of failing every trial. Builds on the CPU, no data read. ``cfg``: the
    fixed config (:func:`_check_experiment`)."""
    from sdsnn.data import get_dataset
    from sdsnn.models import build_model

    # (where, {model field: value}): the fixed backbone, each other name choice, and each searched
    # model setting at its bounds (or choices), one at a time (e.g. the deepest net's pooling)
    tries: list[tuple[str, dict[str, Any]]] = [("experiment.model.name", {})]
    for path, p in spec.params.items():
        if not path.startswith("model."):
            continue
        for v in p.values_to_check():
            if not (path == "model.name" and v == cfg.model.name):
                tries.append((f"params.{path}" + (".choices" if p.type == "categorical" else ""), {path[6:]: v}))
    ds = get_dataset(cfg.data.dataset)
    shape = ds.shape_for(cfg.data)
    for where, update in tries:
        model = ModelConfig.model_validate({**cfg.model.model_dump(), **update})
        what = f"backbone '{model.name}'" + "".join(f" with model.{k}={v!r}" for k, v in update.items() if k != "name")
        try:
            build_model(model, shape, ds.num_classes)
        except ConfigError as e:
            fail(where, f"{what} cannot be built for {cfg.data.dataset} input {tuple(shape)}: {e}")


def _check(spec: SearchSpec, where: str) -> None:
    """Semantic checks beyond types; raise ConfigError naming the field."""

    def fail(path: str, msg: str) -> None:
        raise ConfigError(f"{where}: field '{path}': {msg}")

    from sdsnn.plugins import load_plugins

    load_plugins()  # backbones and datasets of SDSNN_PLUGINS
    from sdsnn.data import DATASETS  # the registry alone: no torch import

    if spec.dataset not in DATASETS:
        fail("dataset", f"unknown dataset '{spec.dataset}' (choose one of {', '.join(DATASETS)}; "
                        f"your own: see 'Extending' in the README)")
    if "dataset" in (spec.experiment.get("data") or {}):
        fail("experiment.data.dataset", "set the dataset with the top-level 'dataset' field instead")

    # the fixed config alone must be valid
    base = _check_experiment(spec, where)

    device = str((spec.base_config().get("train") or {}).get("device") or "")
    if device.startswith("cuda") and spec.resources.gpu <= 0:
        fail("experiment.train.device", f"'{device}' with resources.gpu 0: Ray gives such trials no GPU; "
                                        f"set resources.gpu (e.g. 1 or 0.5) or train.device: auto")

    for path, p in spec.params.items():
        fp = f"params.{path}"
        if p.type == "categorical":
            if not p.choices:
                fail(fp + ".choices", "give a non-empty list of choices")
            if p.low is not None or p.high is not None or p.step is not None:
                fail(fp, "a categorical parameter takes only 'choices' (remove low/high/step)")
        else:
            if p.choices is not None:
                fail(fp + ".choices", f"'choices' belongs to type categorical, not {p.type} (use low/high)")
            if p.low is None or p.high is None:
                fail(fp, f"type {p.type} needs both 'low' and 'high'")
            if not (p.low < p.high):
                fail(fp, f"empty or inverted range low={p.low:g} high={p.high:g} (low must be below high)")
            if p.type == "loguniform" and p.low <= 0:
                fail(fp + ".low", "loguniform needs low > 0")
            if p.type == "int":
                if p.low != int(p.low) or p.high != int(p.high):
                    fail(fp, "type int needs whole-number low and high")
                if p.step is not None and (p.step < 1 or p.step != int(p.step)):
                    fail(fp + ".step", "step of an int parameter must be a whole number >= 1")
                if p.step is not None and int(p.step) > int(p.high) - int(p.low):
                    fail(fp + ".step", "step is larger than the range (low..high): widen the range or lower the step")
                if p.log and p.step not in (None, 1):
                    fail(fp + ".log", "log-scale int parameters need step 1")
                if p.log and p.low < 1:
                    fail(fp + ".low", "log-scale int parameters need low >= 1")
            if p.type in ("uniform", "loguniform") and p.step is not None:
                if p.type == "loguniform":
                    fail(fp + ".step", "loguniform takes no step")
                if p.step <= 0 or p.step > p.high - p.low:
                    fail(fp + ".step", "step must be > 0 and no larger than high - low")
        # the dotted path must name a config field and every representative value must be valid
        for v in p.values_to_check():
            try:
                ExperimentConfig.model_validate(apply_overrides(spec.base_config(), {path: v}))
            except ValidationError as e:
                first = e.errors()[0]
                if first.get("type") == "extra_forbidden":
                    fail(fp, f"'{path}' is not a field of the experiment config (see ExperimentConfig in sdsnn/config.py)")
                # a field with a union type (e.g. 'epoch' or an int) fails once per member: the
                # location then carries pydantic's member names; keep the field, join the reasons
                field_loc = lambda err: ".".join(  # noqa: E731
                    str(x) for x in err.get("loc", ()) if not any(c in str(x) for c in "[(")
                    and str(x) not in ("bool", "int", "float", "str", "none"))
                loc = field_loc(first)
                why = " or ".join(dict.fromkeys(err.get("msg", "invalid") for err in e.errors() if field_loc(err) == loc))
                fail(fp, f"value {v!r} is invalid for '{loc}': {why}")
            except ConfigError:
                fail(fp, f"'{path}' is not a field of the experiment config (see ExperimentConfig in sdsnn/config.py)")
        if path == "data.dataset":
            fail(fp, "the dataset cannot be searched; write one space file per dataset")

    _check_model_names(spec, fail)
    _check_backbones_build(spec, base, fail)

    if not 1 <= len(spec.objectives) <= 3:
        fail("objectives", f"give 1 to 3 objectives (got {len(spec.objectives)})")
    seen = set()
    for i, o in enumerate(spec.objectives):
        if o.metric not in KNOWN_METRICS:
            fail(f"objectives.{i}.metric", f"unknown metric '{o.metric}' (choose one of {', '.join(KNOWN_METRICS)})")
        if o.metric in seen:
            fail(f"objectives.{i}.metric", f"metric '{o.metric}' appears twice")
        seen.add(o.metric)
    for i, c in enumerate(spec.constraints):
        if c.metric not in KNOWN_METRICS:
            fail(f"constraints.{i}.metric", f"unknown metric '{c.metric}' (choose one of {', '.join(KNOWN_METRICS)})")
    if spec.reference_point is not None:
        if len(spec.reference_point) != len(spec.objectives):
            fail("reference_point", f"give one value per objective ({len(spec.objectives)}), got {len(spec.reference_point)}")
        if not all(math.isfinite(v) for v in spec.reference_point):
            fail("reference_point", "values must be finite numbers")
    if spec.scheduler.type == "asha":
        if spec.scheduler.metric not in KNOWN_METRICS:
            fail("scheduler.metric", f"unknown metric '{spec.scheduler.metric}' (choose one of {', '.join(KNOWN_METRICS)})")
        if spec.scheduler.grace_period > spec.epochs:
            fail("scheduler.grace_period", f"grace period {spec.scheduler.grace_period} exceeds the epochs per trial "
                                           f"({spec.epochs}); give --epochs {spec.scheduler.grace_period} or more, "
                                           f"or a smaller scheduler.grace_period")
    if spec.resources.cpu > 1024 or spec.resources.gpu > 64:
        fail("resources", "impossible resources per trial (cpu <= 1024, gpu <= 64)")


def parse_space(raw: Any, where: str = "<space>") -> SearchSpec:
    """Validate an already-loaded mapping (see :func:`load_space`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (dataset, experiment, params, ...)")
    spec = _validate_schema(raw, where)
    _check(spec, where)
    return spec


def _validate_schema(raw: dict[str, Any], where: str) -> SearchSpec:
    """Types and ranges of every field (pydantic); ConfigError naming the first bad field."""
    try:
        return SearchSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ())]
        # pydantic puts the discriminating type name into locations of unions; drop those
        loc = [x for x in loc if x not in ("bool", "int", "float", "str", "none")]
        path = ".".join(loc) or "<top level>"
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling; see sdsnn_search/space.py for the schema)"
        raise ConfigError(f"{where}: field '{path}': {msg}") from None


def load_space(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> SearchSpec:
    """Read and validate a search-space YAML file.

    ``overrides`` are dotted paths into the space file itself (``{"search.num_samples": 4}``),
    applied before validation. Raises :class:`ConfigError` with one line on any problem.
    """
    p = Path(path)
    raw = read_yaml_file(p, "search-space", "search_spaces/digits.yaml")
    if isinstance(raw, dict) and "params" not in raw and any(k in raw for k in ("model", "train", "plasticity", "data")):
        raise ConfigError(f"{p}: this is an experiment config (model/train/... at the top level, no params); "
                          f"train it with 'sdsnn-search train --config {p}', or give a search-space file here")
    if overrides:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping (dataset, experiment, params, ...)")
        # the file as written must be valid too: an override must not hide a bad value in it
        _check_experiment(_validate_schema(raw, str(p)), str(p))
        given = {k: v for k, v in overrides.items() if v is not None}
        if given:
            return parse_space(apply_overrides(raw, given), f"{p} (with the command-line options)")
    return parse_space(raw, str(p))
