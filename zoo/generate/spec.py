"""Zoo specs: a validated, serialisable description of a zoo (TOML in, dataclass out).

A spec names the architecture, the image data, how many models, which checkpoints
to keep, the seeds, and one distribution per hyper-parameter. Every field is
checked here, before any training; a bad value raises :class:`SpecError` naming
the field, the value and what is allowed. Each model's hyper-parameters and seed
derive from ``(seed, model_id)`` only, so any model can be regenerated alone.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import SpecError, ZooError
from ..fs import read_toml
from ..nets import ARCHS, NetConfig, WAsym, family, validate_net
from ..seeding import derived_seed
from .images import validate_source


DISTS = ("constant", "uniform", "loguniform", "randint", "choice", "pow10")

#: hyper-parameter -> (kind, allowed range text, check on a value)
HPARAMS = {
    "lr": ("float", "> 0", lambda v: v > 0),
    "weight_decay": ("float", ">= 0", lambda v: v >= 0),
    "label_smoothing": ("float", "in [0, 1)", lambda v: 0 <= v < 1),
    "epochs": ("int", "an integer >= 1", lambda v: v >= 1),
    "batch_size": ("int", "an integer >= 1", lambda v: v >= 1),
    "optimizer": ("str", "'adamw' or 'sgd' ('sgd', 'adam' or 'rmsprop' for arch = 'smallcnn')",
                  lambda v: v in ("adamw", "sgd", "adam", "rmsprop")),
    "momentum": ("float", "in [0, 1)", lambda v: 0 <= v < 1),
    "warmup_epochs": ("float", ">= 0", lambda v: v >= 0),
    "schedule": ("str", "'lim2024' (linear warm-up then linear decay to 0), 'cosine' or 'constant'",
                 lambda v: v in ("lim2024", "cosine", "constant")),
    "flip": ("bool", "true or false", lambda v: isinstance(v, (bool, np.bool_))),
    "translate": ("int", "an integer >= 0 (pixels)", lambda v: v >= 0),
    "cutout": ("int", "an integer >= 0 (square side in pixels)", lambda v: v >= 0),
    "train_fraction": ("float", "in (0, 1]", lambda v: 0 < v <= 1),
}

HPARAM_DEFAULTS = {
    "lr": 1e-3, "weight_decay": 5e-4, "label_smoothing": 0.0, "epochs": 10, "batch_size": 128,
    "optimizer": "adamw", "momentum": 0.9, "warmup_epochs": 0.0, "schedule": "lim2024",
    "flip": False, "translate": 0, "cutout": 0, "train_fraction": 1.0,
}

#: Upper bounds a spec must stay within unless it sets ``allow_large = true``: beyond them a
#: value is far more likely a typo (an extra zero) than a plan, and would cost days.
LIMITS = {"epochs": 1000, "batch_size": 65536}

#: Columns that must be equal within a trained group (they fix the step structure).
GROUP_KEYS = ("batch_size", "train_fraction", "optimizer")


@dataclass(frozen=True)
class Dist:
    """One hyper-parameter distribution. ``pow10`` is ``scale * 10**(-U(low, high))``
    (the paper's lr = 0.5 * 10^-U(0,2) and weight decay = 10^-U(1,5))."""

    kind: str
    params: dict = field(default_factory=dict)

    def sample(self, rng: np.random.Generator):
        p = self.params
        if self.kind == "constant":
            return p["value"]
        if self.kind == "uniform":
            return float(rng.uniform(p["low"], p["high"]))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(p["low"]), math.log(p["high"]))))
        if self.kind == "randint":  # both ends inclusive, as the paper's RandInt(10, 40)
            return int(rng.integers(p["low"], p["high"] + 1))
        if self.kind == "choice":
            return p["values"][int(rng.integers(len(p["values"])))]
        if self.kind == "pow10":
            return float(p.get("scale", 1.0) * 10 ** (-rng.uniform(p["low"], p["high"])))
        raise AssertionError(self.kind)

    def support(self) -> list:
        """Values at the edges of the support (what validation checks against the allowed range)."""
        p = self.params
        if self.kind == "constant":
            return [p["value"]]
        if self.kind == "choice":
            return list(p["values"])
        if self.kind == "pow10":
            s = p.get("scale", 1.0)
            return [s * 10 ** -p["low"], s * 10 ** -p["high"]]
        return [p["low"], p["high"]]

    def to_obj(self):
        return self.params["value"] if self.kind == "constant" else {"dist": self.kind, **self.params}


def _finite_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and abs(v) < 1e300  # a bigger int overflows the float arithmetic of sampling
    except OverflowError:
        return False


def parse_dist(name: str, obj) -> Dist:
    field_name = f"hparams.{name}"
    if not isinstance(obj, dict):
        return Dist("constant", {"value": obj})
    obj = dict(obj)
    kind = obj.pop("dist", None)
    if kind == "lim2024_lr":
        kind, obj = "pow10", {"scale": 0.5, "low": 0.0, "high": 2.0}
    if kind not in DISTS:
        raise SpecError(f"{field_name}.dist", kind, f"allowed: {', '.join(DISTS)}, lim2024_lr")
    need = {"constant": ("value",), "uniform": ("low", "high"), "loguniform": ("low", "high"),
            "randint": ("low", "high"), "choice": ("values",), "pow10": ("low", "high")}[kind]
    for k in need:
        if k not in obj:
            raise SpecError(f"{field_name}.{k}", None, f"required for dist = '{kind}'")
    extra = set(obj) - set(need) - ({"scale"} if kind == "pow10" else set())
    if extra:
        raise SpecError(f"{field_name}", sorted(extra)[0], f"unknown key for dist = '{kind}'; expected {need}")
    for k in ("low", "high", "scale"):
        v = obj.get(k, 1.0)
        if kind in ("uniform", "loguniform", "randint", "pow10") and not _finite_number(v):
            raise SpecError(field_name, v, f"{k} must be a finite number for dist = '{kind}'")
    if kind in ("uniform", "loguniform", "randint", "pow10") and not obj["low"] <= obj["high"]:
        raise SpecError(f"{field_name}.low", obj["low"], f"must be <= high ({obj['high']})")
    if kind == "loguniform" and obj["low"] <= 0:
        raise SpecError(f"{field_name}.low", obj["low"], "must be > 0 for a loguniform")
    if kind == "randint" and not all(isinstance(obj[k], int) for k in ("low", "high")):
        raise SpecError(f"{field_name}", obj, "randint needs integer low and high")
    if kind == "choice" and (not isinstance(obj["values"], list) or not obj["values"]):
        raise SpecError(f"{field_name}.values", obj["values"], "must be a non-empty list")
    return Dist(kind, obj)


def _arch_hparams(arch: str):
    """(hyper-parameter -> (kind, allowed, check), defaults) of an architecture family: the
    trainer's own plus those the family adds."""
    fam = family(arch)
    return ({**HPARAMS, **{k: v[:3] for k, v in fam.hparams.items()}},
            {**HPARAM_DEFAULTS, **fam.hparam_defaults, **{k: v.default for k, v in fam.hparams.items()}})


def _check_optimizer(arch: str, dist: Dist) -> None:
    allowed = family(arch).optimizers
    text = " or ".join((", ".join(f"'{o}'" for o in allowed[:-1]), f"'{allowed[-1]}'"))
    for v in dist.support():
        if v not in allowed:
            raise SpecError("hparams.optimizer", v, f"{text} (allowed for arch = '{arch}')")


def _check_hparam(name: str, dist: Dist, allow_large: bool = False, known: dict = HPARAMS) -> None:
    kind, allowed, ok = known[name]
    for v in dist.support():
        if kind == "float" and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            raise SpecError(f"hparams.{name}", v, f"must be a finite number {allowed}")
        if name in LIMITS and not allow_large and isinstance(v, int) and v > LIMITS[name]:
            raise SpecError(f"hparams.{name}", v, f"must be <= {LIMITS[name]} (set allow_large = true at the top "
                                                  "of the spec if you really mean it)")
        type_ok = {"float": isinstance(v, (int, float)) and not isinstance(v, bool),
                   "int": isinstance(v, int) and not isinstance(v, bool),
                   "str": isinstance(v, str), "bool": isinstance(v, bool)}[kind]
        if kind == "int" and dist.kind in ("uniform", "loguniform", "pow10"):
            raise SpecError(f"hparams.{name}.dist", dist.kind, "an integer hyper-parameter needs "
                            "constant, randint or choice")
        if not type_ok or not ok(v):
            raise SpecError(f"hparams.{name}", v, f"must be {allowed}")


@dataclass(frozen=True)
class ZooSpec:
    name: str
    net: NetConfig
    data: dict
    models: int
    seed: int
    hparams: dict  # name -> Dist
    checkpoints: tuple = ("final",)
    models_per_shard: int = 1000
    split: tuple = (0.5, 0.25, 0.25)
    description: str = ""
    allow_large: bool = False
    #: ``[pairs] size = k``: models ``k*p .. k*p + k-1`` form tuple ``p`` (``pair_of``): they share
    #: every sampled hyper-parameter (and, as every net of a zoo, the asymmetry constants) and
    #: differ in init and data order (``model_seed`` stays per model). 1: no tuples.
    pair_size: int = 1

    # -------------------------------------------------------------- models
    def model_seed(self, model_id: int) -> int:
        return derived_seed(self.seed, model_id, "train")

    def pair_of(self, model_id: int) -> int:
        """The tuple a model belongs to (its own id when the zoo has no tuples)."""
        return model_id // self.pair_size

    def sample_hparams(self, model_id: int) -> dict:
        """The hyper-parameters of model ``model_id`` (a pure function of seed and id; of seed
        and tuple in a zoo of pairs, so that a tuple's members share them)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.pair_of(model_id), 1]))
        # HPARAMS first, then the architecture's own (smallcnn): ResNet draws are unchanged.
        return {name: self.hparams[name].sample(rng) for name in self.hparams}

    @property
    def checkpoint_names(self) -> list[str]:
        return [c if c == "final" else f"epoch_{c}" for c in self.checkpoints]

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.models / self.models_per_shard))

    def shard_ids(self, shard: int) -> range:
        return range(shard * self.models_per_shard, min(self.models, (shard + 1) * self.models_per_shard))

    # ------------------------------------------------------------ serialise
    def to_dict(self) -> dict:
        net = self.net.to_dict()
        wasym = net.pop("wasym")
        in_ch, n_cls = net.pop("in_channels"), net.pop("num_classes")
        del in_ch, n_cls  # taken from the data at build time
        d = {"name": self.name, "description": self.description, "models": self.models, "seed": self.seed,
             "models_per_shard": self.models_per_shard, "checkpoints": list(self.checkpoints),
             "split": {"train": self.split[0], "val": self.split[1], "test": self.split[2]},
             "data": dict(self.data), "net": {"arch": "resnet", **net},
             "hparams": {k: v.to_obj() for k, v in self.hparams.items()}}
        if wasym:
            d["net"]["wasym"] = wasym
        if self.allow_large:  # only when set, so that existing zoos keep their fingerprint
            d["allow_large"] = True
        if self.pair_size > 1:  # likewise
            d["pairs"] = {"size": self.pair_size}
        return d

    def fingerprint(self) -> str:
        """Hash of everything that determines the zoo's content (the description excluded)."""
        d = self.to_dict()
        d.pop("description")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def with_models(self, n: int) -> "ZooSpec":
        if n < 1:
            raise SpecError("models", n, "must be >= 1")
        if n % self.pair_size:
            raise SpecError("models", n, f"must be a multiple of pairs.size = {self.pair_size}")
        return ZooSpec(**{**self.__dict__, "models": int(n)})


NET_KEYS = {"arch", "depth", "width", "norm", "activation", "figlu_scale", "asym_seed", "wasym", "padding", "grayscale"}
TOP_KEYS = {"name", "description", "models", "seed", "models_per_shard", "checkpoints", "split", "data", "net",
            "hparams", "allow_large", "pairs"}
#: net field -> (types, description) checked before any arithmetic on them
NET_TYPES = {"depth": ((int,), "an integer"), "width": ((int, float), "a number"),
             "norm": ((str,), "a string"), "activation": ((str,), "a string"),
             "figlu_scale": ((int, float), "a number"), "asym_seed": ((int,), "an integer"),
             "arch": ((str,), "a string"), "padding": ((str,), "a string")}
WASYM_TYPES = {"n_fix": ((int,), "an integer"), "n_fix_linear": ((int,), "an integer"),
               "kappa": ((int, float), "a number"), "mode": ((str,), "a string")}


def _check_types(d: dict, types: dict, prefix: str) -> None:
    for k, (ts, what) in types.items():
        if k not in d:
            continue
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, ts) or (isinstance(v, float) and not math.isfinite(v)):
            raise SpecError(f"{prefix}.{k}", v, f"must be {'a finite number' if what == 'a number' else what}")


def spec_from_dict(d: dict) -> ZooSpec:
    d = copy.deepcopy(d)
    unknown = set(d) - TOP_KEYS
    if unknown:
        raise SpecError(sorted(unknown)[0], d[sorted(unknown)[0]], f"unknown field; known: {', '.join(sorted(TOP_KEYS))}")
    name = d.get("name", "zoo")
    for key in ("name", "description"):
        if not isinstance(d.get(key, ""), str):  # both go into the JSON of every shard and manifest
            raise SpecError(key, d[key], "must be a string")
    models = d.get("models", 100)
    if not isinstance(models, int) or models < 1:
        raise SpecError("models", models, "must be an integer >= 1")
    allow_large = d.get("allow_large", False)
    if not isinstance(allow_large, bool):
        raise SpecError("allow_large", allow_large, "must be true or false")
    if isinstance(models, bool):
        raise SpecError("models", models, "must be an integer >= 1")
    pairs = d.get("pairs", {"size": 1})
    if not isinstance(pairs, dict) or set(pairs) - {"size"}:
        raise SpecError("pairs", pairs, "must be a table with one field, size (models per tuple)")
    pair_size = pairs.get("size", 1)
    if not isinstance(pair_size, int) or isinstance(pair_size, bool) or pair_size < 1:
        raise SpecError("pairs.size", pair_size, "must be an integer >= 1 (2: pairs)")
    if models % pair_size:
        raise SpecError("models", models, f"must be a multiple of pairs.size = {pair_size}")
    seed = d.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError("seed", seed, "must be an integer >= 0")
    per_shard = d.get("models_per_shard", 1000)
    if not isinstance(per_shard, int) or isinstance(per_shard, bool) or per_shard < 1:
        raise SpecError("models_per_shard", per_shard, "must be an integer >= 1")
    split = d.get("split", {"train": 0.5, "val": 0.25, "test": 0.25})
    if not isinstance(split, dict) or set(split) != {"train", "val", "test"}:
        raise SpecError("split", split, "must be a table with train, val and test fractions")
    if not all(isinstance(split[k], (int, float)) and not isinstance(split[k], bool) for k in split):
        raise SpecError("split", split, "fractions must be numbers")
    fr = tuple(float(split[k]) for k in ("train", "val", "test"))
    if any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise SpecError("split", split, "fractions must be >= 0 and sum to 1")

    if not isinstance(d.get("net", {}), dict):
        raise SpecError("net", d.get("net"), "must be a table")
    net_d = dict(d.get("net", {}))
    _check_types(net_d, NET_TYPES, "net")
    if not isinstance(net_d.get("grayscale", False), bool):
        raise SpecError("net.grayscale", net_d["grayscale"], "must be true or false")
    unknown = set(net_d) - NET_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(f"net.{k}", net_d[k], f"unknown field; known: {', '.join(sorted(NET_KEYS))}")
    arch = net_d.get("arch", "resnet")
    fam = family(arch)
    for other in ARCHS.values():
        for k in other.config_fields:
            if k in net_d and k not in fam.config_fields:
                raise SpecError(f"net.{k}", net_d[k], f"only for arch = '{other.name}'")
    wasym = net_d.pop("wasym", None)
    if wasym is not None:
        if not isinstance(wasym, dict):
            raise SpecError("net.wasym", wasym, "must be a table")
        _check_types(wasym, WASYM_TYPES, "net.wasym")
        unknown = set(wasym) - {"n_fix", "n_fix_linear", "kappa", "mode"}
        if unknown:
            k = sorted(unknown)[0]
            raise SpecError(f"net.wasym.{k}", wasym[k], "unknown field; known: kappa, mode, n_fix, n_fix_linear")
        wasym = WAsym(**wasym)
    try:
        net = NetConfig(wasym=wasym, **net_d)
    except TypeError as e:
        raise SpecError("net", net_d, f"bad field ({e})") from None
    validate_net(net)  # fan-ins of all but the input layer do not depend on the data

    if not isinstance(d.get("data", {}), dict):
        raise SpecError("data", d.get("data"), "must be a table")
    data = dict(d.get("data", {"source": "digits"}))
    validate_source(data)
    hp_in = d.get("hparams", {})
    if not isinstance(hp_in, dict):
        raise SpecError("hparams", hp_in, "must be a table")
    known, defaults = _arch_hparams(arch)
    unknown = set(hp_in) - set(known)
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(f"hparams.{k}", hp_in[k], f"unknown hyper-parameter for arch = '{arch}'; "
                                                    f"known: {', '.join(known)}")
    hparams = {}
    for k in known:
        dist = parse_dist(k, hp_in.get(k, defaults[k]))
        _check_hparam(k, dist, allow_large, known)
        hparams[k] = dist
    _check_optimizer(arch, hparams["optimizer"])
    ckpts = d.get("checkpoints", ["final"])
    if not isinstance(ckpts, list) or not ckpts:
        raise SpecError("checkpoints", ckpts, "must be a non-empty list of epoch numbers and/or 'final'")
    min_epochs = min(hparams["epochs"].support())
    for c in ckpts:
        if c != "final" and not (isinstance(c, int) and 0 <= c <= min_epochs):
            raise SpecError("checkpoints", c, f"entries must be 'final' or an epoch in 0..{min_epochs} "
                                              f"(the fewest epochs a model of this zoo can train)")
    if len(set(ckpts)) != len(ckpts):
        raise SpecError("checkpoints", ckpts, "entries must be unique")
    ckpts = sorted((c for c in ckpts if c != "final")) + (["final"] if "final" in ckpts else [])
    return ZooSpec(name=name, net=net, data=data, models=models, seed=seed, hparams=hparams,
                   checkpoints=tuple(ckpts), models_per_shard=per_shard, split=fr,
                   description=d.get("description", ""), allow_large=allow_large, pair_size=pair_size)


def validate_for_data(spec: ZooSpec, in_channels: int, num_classes: int) -> NetConfig:
    """The spec's net completed with the data's shape, validated (n_fix against each layer's fan-in)."""
    cfg = NetConfig(**{**spec.net.__dict__, "in_channels": in_channels, "num_classes": num_classes})
    validate_net(cfg)
    return cfg


def check_image_size(spec: ZooSpec, hw: tuple[int, int]) -> None:
    """Architectures that shrink the image (smallcnn's unpadded stride-2 convs) need enough pixels."""
    check = family(spec.net.arch).check_input_size
    if check is not None:
        check(spec.net, hw)


# ---------------------------------------------------------------- presets

def presets() -> dict[str, Path]:
    """Shipped preset name -> file."""
    root = resources.files("zoo") / "presets"
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def load_spec(preset_or_path) -> ZooSpec:
    """A spec from a shipped preset name or a TOML file path."""
    s = str(preset_or_path)
    known = presets()
    if s in known:
        path = known[s]
    else:
        path = Path(s)
        if not path.exists():
            raise ZooError(f"unknown preset or missing spec file {s!r}; presets: {', '.join(sorted(known))}")
        if not path.is_file():
            raise ZooError(f"spec {s!r} is a folder, not a TOML spec file")
    d = read_toml(path, "spec")
    try:
        return spec_from_dict(d)
    except SpecError as e:
        raise SpecError(e.field, e.value, f"{e.allowed} (in {path})") from None
