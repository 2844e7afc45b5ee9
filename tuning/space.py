"""The hyper-parameter search space and its mapping onto ``ExperimentConfig`` fields.

Each searchable hyper-parameter names one config field. A field the user fixed with its
``asif_tf.train`` flag (``--hidden_size 64``) is not searched. ``--space NAME=SPEC``
replaces the default range of one hyper-parameter (and adds it to the search even where
the default would leave it out, e.g. ASIF-only ones for a baseline):

    NAME=v1,v2,...     a choice among these values
    NAME=lo:hi         a range (integers for integer fields; learning_rate and lambda_fa
                       are sampled on a log scale)
    NAME=lo:hi:step    a range with a step (linear)
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from asif_tf.config import FUSIONS, PAPER_FUSIONS, ExperimentConfig

Value = Union[int, float, str]


@dataclasses.dataclass(frozen=True)
class Param:
    """One searchable hyper-parameter: ``section.name`` of the config, and its range."""
    name: str
    section: str
    type: type
    choices: Tuple[Value, ...] = ()          # a choice when non-empty, else the range below
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    models: Optional[Tuple[str, ...]] = None  # searched by default only for these models (None: all)
    needs: Optional[str] = None               # ...and only when this boolean model field is on

    def describe(self) -> str:
        if self.choices:
            return ",".join(str(c) for c in self.choices)
        text = f"{self.low:g}:{self.high:g}"
        if self.step:
            text += f":{self.step:g}"
        return text + (" (log)" if self.log else "")


DEFAULT_SPACE: Dict[str, Param] = {p.name: p for p in (
    Param("hidden_size", "model", int, choices=(32, 64, 128)),
    Param("num_layers", "model", int, choices=(1, 2, 3)),
    # Restricted at search time to the heads that divide every hidden size searched.
    Param("num_heads", "model", int, choices=(1, 2, 4)),
    Param("dropout", "model", float, low=0.1, high=0.5, step=0.1),
    Param("learning_rate", "train", float, low=1e-4, high=1e-2, log=True),
    Param("lambda_fa", "model", float, low=1e-3, high=1.0, log=True, models=("asif",), needs="fa"),
    Param("num_bases", "model", int, choices=(4, 8, 16, 32), models=("asif",), needs="hie"),
    # The paper's three by default; --space fusion=... may name any of FUSIONS.
    Param("fusion", "model", str, choices=PAPER_FUSIONS, models=("asif",)),
)}


def parse_space_overrides(specs: Iterable[str]) -> Dict[str, Param]:
    """``["hidden_size=32,64", "learning_rate=1e-4:1e-2"]`` -> {name: Param}."""
    out: Dict[str, Param] = {}
    for spec in specs:
        name, sep, body = spec.partition("=")
        name = name.strip()
        if not sep or not body.strip():
            raise ValueError(f"--space {spec!r}: expected NAME=v1,v2,... or NAME=lo:hi[:step]")
        if name not in DEFAULT_SPACE:
            raise ValueError(f"--space {spec!r}: unknown hyper-parameter {name!r}; "
                             f"searchable: {', '.join(DEFAULT_SPACE)}")
        base = DEFAULT_SPACE[name]
        body = body.strip()
        if ":" in body:
            if base.type is str:
                raise ValueError(f"--space {spec!r}: {name} takes a list of values, not a range")
            parts = body.split(":")
            if len(parts) not in (2, 3):
                raise ValueError(f"--space {spec!r}: a range is lo:hi or lo:hi:step")
            try:
                low, high = base.type(parts[0]), base.type(parts[1])
                step = base.type(parts[2]) if len(parts) == 3 else None
            except ValueError:
                raise ValueError(f"--space {spec!r}: {name} bounds must be {base.type.__name__}s") from None
            if not low < high:
                raise ValueError(f"--space {spec!r}: the range needs lo < hi")
            if step is not None and step <= 0:
                raise ValueError(f"--space {spec!r}: the step must be > 0")
            if base.log and low <= 0:
                raise ValueError(f"--space {spec!r}: {name} is sampled on a log scale, so lo must be > 0")
            out[name] = dataclasses.replace(base, choices=(), low=low, high=high, step=step,
                                            log=base.log and step is None)
        else:
            try:
                values = tuple(dict.fromkeys(base.type(v.strip()) for v in body.split(",") if v.strip()))
            except ValueError:
                raise ValueError(f"--space {spec!r}: {name} values must be {base.type.__name__}s") from None
            if name == "fusion" and set(values) - set(FUSIONS):
                raise ValueError(f"--space {spec!r}: fusion must be among {', '.join(FUSIONS)}")
            if len(values) < 2:
                raise ValueError(f"--space {spec!r}: give at least two values; to fix {name}, "
                                 f"pass --{name} VALUE instead")
            out[name] = dataclasses.replace(base, choices=values, low=None, high=None, step=None, log=False)
    return out


def resolve_space(base: ExperimentConfig, fixed: Sequence[str],
                  overrides: Optional[Dict[str, Param]] = None) -> List[Param]:
    """The hyper-parameters searched for ``base``: the defaults that apply to its model
    (plus any ``--space`` ones), minus the ``fixed`` config fields ("model.hidden_size"),
    with num_heads / hidden_size / num_bases restricted to compatible values."""
    overrides = overrides or {}
    clash = [n for n in overrides if f"{DEFAULT_SPACE[n].section}.{n}" in fixed]
    if clash:
        raise ValueError(f"{', '.join(clash)} given both as a fixed flag and in --space; pick one")
    params: Dict[str, Param] = {}
    for name, default in DEFAULT_SPACE.items():
        if f"{default.section}.{name}" in fixed:
            continue
        if name in overrides:
            params[name] = overrides[name]
            continue
        if default.models is not None and base.model.model not in default.models:
            continue
        if default.needs is not None and not getattr(base.model, default.needs):
            continue
        params[name] = default

    def choices_of(name: str) -> Tuple[int, ...]:
        p = params.get(name)
        if p is None:
            return (getattr(getattr(base, DEFAULT_SPACE[name].section), name),)
        if p.choices:
            return tuple(p.choices)
        return tuple(range(int(p.low), int(p.high) + 1, int(p.step or 1)))

    # Attention needs hidden_size % num_heads == 0 for every pair the search may draw.
    hidden, heads = choices_of("hidden_size"), choices_of("num_heads")
    if "num_heads" in params:
        ok = tuple(h for h in heads if all(d % h == 0 for d in hidden))
        if not ok:
            raise ValueError(f"no number of heads among {heads} divides every hidden size {hidden}")
        params["num_heads"] = _as_choice(params["num_heads"], ok)
    elif "hidden_size" in params:
        ok = tuple(d for d in hidden if all(d % h == 0 for h in heads))
        if not ok:
            raise ValueError(f"no hidden size among {hidden} is divisible by --num_heads {heads[0]}")
        params["hidden_size"] = _as_choice(params["hidden_size"], ok)
    # HIE's r orthogonal bases live in the max_seq_len positions.
    if "num_bases" in params:
        ok = tuple(r for r in choices_of("num_bases") if r <= base.data.max_seq_len)
        if not ok:
            raise ValueError(f"every num_bases searched exceeds --max_seq_len {base.data.max_seq_len}")
        params["num_bases"] = _as_choice(params["num_bases"], ok)
    return list(params.values())


def _as_choice(p: Param, values: Tuple[Value, ...]) -> Param:
    return dataclasses.replace(p, choices=values, low=None, high=None, step=None, log=False)


def declare(hp, params: Sequence[Param]) -> Dict[str, Value]:
    """Registers ``params`` on a KerasTuner ``HyperParameters`` and returns their current values."""
    values = {}
    for p in params:
        if p.choices and len(p.choices) == 1:
            values[p.name] = hp.Fixed(p.name, p.choices[0])
        elif p.choices:
            values[p.name] = hp.Choice(p.name, list(p.choices), ordered=p.type is not str)
        elif p.type is int:
            values[p.name] = hp.Int(p.name, int(p.low), int(p.high), step=int(p.step) if p.step else None,
                                    sampling="log" if p.log else "linear")
        else:
            values[p.name] = hp.Float(p.name, float(p.low), float(p.high), step=p.step,
                                      sampling="log" if p.log else "linear")
    return values


def apply(base: ExperimentConfig, params: Sequence[Param], values: Dict[str, Value]) -> ExperimentConfig:
    """A copy of ``base`` with the searched fields set to ``values`` (other keys ignored,
    e.g. Hyperband's ``tuner/epochs``)."""
    cfg = copy.deepcopy(base)
    for p in params:
        if p.name in values:
            value = values[p.name]
            if p.type is float:
                # Float steps accumulate binary error (0.30000000000000004); keep configs readable.
                value = float(f"{float(value):.10g}")
            setattr(getattr(cfg, p.section), p.name, p.type(value))
    return cfg.validate()


def space_to_dict(params: Sequence[Param]) -> Dict[str, str]:
    return {p.name: p.describe() for p in params}
