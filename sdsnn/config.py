"""The one experiment configuration schema.

An :class:`ExperimentConfig` describes one training run completely: data, backbone,
structural development (SD-SNN plasticity), optimisation and energy constants.  Search
spaces (``sdsnn_search.space``) are this schema plus distributions over some of its
fields, named by dotted path (``plasticity.spine_window``, ``model.depth``).

Every model forbids unknown fields so that a typo in a YAML file is an error, not a
silently ignored setting.  Defaults follow docs/sd-snn.md.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "PlasticityConfig",
    "TrainConfig",
    "EnergyConfig",
    "ExperimentConfig",
    "load_config",
    "read_yaml_file",
    "flatten_dict",
    "apply_overrides",
    "format_validation_error",
    "REFERENCE_PLASTICITY",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset and how it is turned into spike-ready tensors [T, B, C, H, W]."""

    dataset: str = "digits"
    data_root: Optional[str] = None  # --data-root, else $SDSNN_DATA_ROOT, else a per-user cache
    time_steps: int = Field(4, ge=1, le=1024)
    encoding: Literal["direct", "poisson"] = "direct"  # images only; events are binned into T frames
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # carved from the training set with the seed
    augment: bool = False  # CIFAR-10: random crop (padding 4) + horizontal flip
    # RandAugment (torchvision's op set and magnitudes, sdsnn/data/augment.py): N ops per image,
    # 0 = off; independent of `augment` (with both, crop + flip come first). Like `augment`, it
    # applies to training batches of natural-image datasets only (CIFAR-10) and is ignored for
    # the others (digits, MNIST, event data).
    randaugment_ops: int = Field(0, ge=0, le=14)
    randaugment_magnitude: int = Field(9, ge=0, le=30)  # M on torchvision's 31-bin scale (0..30)
    resolution: Optional[int] = Field(None, ge=4)  # event data: spatial downsampling target (DVS 128 -> 64/48/32)
    denoise_us: Optional[float] = Field(None, gt=0)  # event data: tonic Denoise filter_time in microseconds
    train_limit: Optional[int] = Field(None, ge=1)  # use only the first N training samples (quick runs)
    test_limit: Optional[int] = Field(None, ge=1)
    num_workers: int = Field(0, ge=0, le=64)  # background threads preparing batches (0: in the training thread)


class ModelConfig(_Strict):
    """A backbone from the model registry (``sdsnn.models``), built by name."""

    name: str = "mlp"  # mlp | convnet | sdsnn_cifar | dvs_convnet (see sdsnn.models.MODELS)
    depth: int = Field(2, ge=1, le=32)  # hidden FC layers (mlp) or conv layers (convnet, dvs_convnet)
    width: int = Field(128, ge=1)  # hidden units (mlp) or base channels (conv nets)
    width_growth: float = Field(2.0, gt=0)  # conv nets: channel multiplier after each pool
    pool_every: int = Field(2, ge=1)  # conv nets: max-pool after every k conv layers
    fc_width: int = Field(256, ge=0)  # conv nets: hidden FC layer before the classifier (0: none)
    neuron: Literal["lif", "plif"] = "lif"
    tau: float = Field(2.0, gt=1.0)
    v_threshold: float = Field(1.0, gt=0)
    surrogate: Literal["atan", "sigmoid", "piecewise_quadratic"] = "atan"
    batch_norm: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    # rate: output = spike rate of LIF output neurons over T (the reference);
    # potential: output = mean synaptic input of non-spiking output neurons (no ties at small T).
    readout: Literal["rate", "potential"] = "rate"


class PlasticityConfig(_Strict):
    """SD-SNN structural development (docs/sd-snn.md sections 3-10).

    ``mode: dense`` switches development off: the baseline.
    """

    mode: Literal["sdsnn", "dense"] = "sdsnn"
    develop_every: Union[Literal["epoch"], int] = "epoch"  # or every K optimizer steps
    spine_window: int = Field(3, ge=1)  # N; the reference uses 18 with 600 epochs
    shrink_factor: float = Field(0.75, gt=0, lt=1)
    min_range: float = Field(0.0, ge=0)
    constrain: Literal["step", "always"] = "step"
    rho_init_conv: float = Field(0.5, ge=0, le=100)  # neuron pruning rate, percent
    rho_init_fc: float = Field(2.0, ge=0, le=100)
    rho_max: float = Field(95.0, ge=0, le=100)
    trophic_a_conv: float = Field(1.0, ge=0)
    trophic_tau_conv: float = Field(5.0, gt=0)
    trophic_floor_conv: float = Field(0.0, ge=0)
    trophic_a_fc: float = Field(0.5, ge=0)
    trophic_tau_fc: float = Field(1.0, gt=0)
    trophic_floor_fc: float = Field(0.0005, ge=0)
    regrow_p0_conv: float = Field(65.0, ge=0, le=100)
    regrow_p0_fc: float = Field(60.0, ge=0, le=100)
    regrow_b: float = Field(1.1, gt=0)
    regrow_p_max: float = Field(99.0, ge=0, le=100)
    regrow_window: Optional[int] = Field(None, ge=0)  # None: same as spine_window
    min_live_fraction: float = Field(0.01, ge=0, le=1)
    prune_output_layer: bool = False

    @field_validator("develop_every")
    @classmethod
    def _positive_interval(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("must be 'epoch' or a positive number of optimizer steps")
        return v

    @property
    def effective_regrow_window(self) -> int:
        return self.spine_window if self.regrow_window is None else self.regrow_window


#: The published constants (docs/sd-snn.md section 12), for ``PlasticityConfig(**REFERENCE_PLASTICITY)``.
REFERENCE_PLASTICITY: dict[str, Any] = {
    "mode": "sdsnn",
    "develop_every": "epoch",
    "spine_window": 18,
    "shrink_factor": 0.75,
    "constrain": "step",
    "rho_init_conv": 0.5,
    "rho_init_fc": 2.0,
    "rho_max": 95.0,
    "trophic_a_conv": 1.0,
    "trophic_tau_conv": 5.0,
    "trophic_floor_conv": 0.0,
    "trophic_a_fc": 0.5,
    "trophic_tau_fc": 1.0,
    "trophic_floor_fc": 0.0005,
    "regrow_p0_conv": 65.0,
    "regrow_p0_fc": 60.0,
    "regrow_b": 1.1,
    "regrow_p_max": 99.0,
    "regrow_window": None,
    "min_live_fraction": 0.01,
    "prune_output_layer": False,
}


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    loss: Literal["ce", "mse"] = "ce"  # on output spike rates; mse is against one-hot
    grad_clip: Optional[float] = Field(None, gt=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = Field(None, ge=1)  # torch.set_num_threads for this run


class EnergyConfig(_Strict):
    e_ac_pj: float = Field(0.9, ge=0)  # one accumulate (spike-driven synaptic op), 45 nm
    e_mac_pj: float = Field(4.6, ge=0)  # one multiply-accumulate, 45 nm
    batches: int = Field(4, ge=1)  # validation batches used to count SOPs


class ExperimentConfig(_Strict):
    """One experiment: everything needed to reproduce a training run."""

    name: str = "experiment"
    seed: int = 0
    preset: Optional[Literal["reference"]] = None  # 'reference': the published plasticity constants
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    plasticity: PlasticityConfig = Field(default_factory=PlasticityConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        # The preset fills plasticity fields; fields given explicitly still win.
        if isinstance(values, dict) and values.get("preset") == "reference":
            given = values.get("plasticity") or {}
            # a PlasticityConfig object: only the fields it was given win (not its defaults)
            given = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else dict(given)
            values = dict(values)
            values["plasticity"] = {**REFERENCE_PLASTICITY, **given}
        return values

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dense_baseline(self) -> "ExperimentConfig":
        """The same experiment with structural development switched off."""
        d = self.to_dict()
        d["plasticity"]["mode"] = "dense"
        d["name"] = f"{self.name}-dense"
        return ExperimentConfig.model_validate(d)


def _field_path(loc: tuple) -> str:
    """A field's dotted path, without the tags pydantic adds for each member of a union
    (``develop_every.literal['epoch']``, ``develop_every.int``): those name types, not fields."""
    parts = [str(p) for p in loc]
    while len(parts) > 1 and (parts[-1] in ("int", "float", "str", "bool", "none") or "[" in parts[-1]):
        parts.pop()
    return ".".join(parts) or "<top level>"


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line: the file, the first offending field path, what is wrong (a value that fits no
    member of a union field: what each member wanted, joined by "or")."""
    errors = err.errors()
    path = _field_path(errors[0].get("loc", ()))
    same = [e for e in errors if _field_path(e.get("loc", ())) == path]
    msgs: list[str] = []
    for e in same:
        m = e.get("msg", "invalid value")
        if e.get("type", "") == "extra_forbidden":
            m = "unknown field (check the spelling; see ExperimentConfig in sdsnn/config.py)"
        if msgs and m.startswith("Input should be "):
            m = m[len("Input should be "):]
        if m not in msgs:
            msgs.append(m)
    more = len(errors) - len(same)
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more > 0 else ""
    return f"{where}: field '{path}': {' or '.join(msgs)}{tail}"


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = {}
            cur[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``base`` with dotted-path overrides set (``{'model.depth': 3}``)."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        _set_dotted(out, k, v)
    return out


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the dotted paths that overrides use)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last one
    silently, so a repeated parameter or setting would be half-ignored)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key repeated in one mapping (raises ``yaml.YAMLError``;
    the duplicate as ``_DuplicateKey`` with ``key``, ``line``, ``first_line``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(path: str | Path, what: str, example: str) -> Any:
    """The YAML content of a user's ``what`` file (``"config"``, ``"search-space"``).

    Raises :class:`ConfigError` with one line when the file is missing, unreadable, not UTF-8
    text, not valid YAML, or empty (``example``: a file to copy from, named in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what} file (give the path to a YAML file, e.g. {example})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; give a YAML {what} file such as {example}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} file ({e.strerror})") from None
    try:
        raw = load_yaml_text(text)
    except _DuplicateKey as e:
        raise ConfigError(f"{p}: line {e.line}: key {e.key!r} appears twice in the same mapping (first on line "
                          f"{e.first_line}); keep one of them") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{p}:{at} YAML syntax error: {getattr(e, 'problem', None) or e} (fix the YAML)") from None
    if raw is None:
        raise ConfigError(f"{p}: the {what} file is empty; start from {example}")
    return raw


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> ExperimentConfig:
    """Read a YAML experiment file, apply dotted overrides, validate.

    Raises :class:`ConfigError` with a one-line message on any problem.
    """
    p = Path(path)
    raw = read_yaml_file(p, "config", "configs/digits.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, ...)")
    if "params" in raw or "objectives" in raw:
        raise ConfigError(f"{p}: this is a search-space file (it has params/objectives); "
                          f"run it with 'sdsnn-search run --space {p}', or give an experiment config here")
    raw = apply_overrides(raw, overrides or {})
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        # a field that came from the command line is named as such, not blamed on the file
        path = ".".join(str(x) for x in e.errors()[0].get("loc", ()))
        where = f"the override '{path}' (--set or an option)" if path in (overrides or {}) else str(p)
        raise ConfigError(format_validation_error(e, where)) from None
