"""Reading a zoo: ``zoo.open(path)``.

>>> z = zoo.open("datasets/digits-wasym")
>>> z.table                      # one row per model: hyper-parameters, metrics, diverged, split
>>> z.weights([0, 1])            # [2, P] float32, all parameters in layout order
>>> z.weights([0], trainable_only=True)
>>> z.layer_weights(0)           # {"conv1.weight": tensor[16, 3, 3, 3], ...}
>>> net = z.rebuild(0)           # a ready nn.Module with model 0's weights
"""
from __future__ import annotations

import bisect
import contextlib
import contextvars
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ZooError
from ..layout import Layout
from ..nets import NetConfig, build_net, family
from .format import METRICS, ShardVerifier, metric_column, open_shard, read_manifest, read_table


class Zoo:
    """A weight dataset on disk. Cheap to open; arrays are read on demand, by row.

    Opening validates the manifest (always). With ``verify`` (the default) each shard's
    sha256 is checked against the manifest the first time this object reads it, and
    weights read back are checked to be finite unless their model is marked diverged;
    see docs/FORMAT.md for what that costs and how it is cached."""

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.verify = verify = bool(verify and _VERIFY.get())
        self._verifier = ShardVerifier(self.path) if verify else None
        shards = sorted(self.manifest["shards"], key=lambda s: s["id_start"])
        self._shards = shards
        self._entry = {s["file"]: s for s in shards}
        self._starts = [s["id_start"] for s in shards]
        self._files: dict[str, object] = {}
        self._ids: dict[str, np.ndarray] = {}
        first = shards[0]["file"] if shards else None
        mask = values = None
        self.extra_fixed = {}
        if first is not None:
            f = self._file(first)
            with self._reading():
                if "fixed" in f and "mask" in f["fixed"]:
                    mask, values = f["fixed/mask"][()], f["fixed/values"][()]
                if "fixed/extra" in f:
                    self.extra_fixed = {k: v[()] for k, v in f["fixed/extra"].items()}
        self.layout = Layout.from_dict(self.manifest["layout"], mask)
        #: Values of the fixed entries (zeros elsewhere), or None for nets without W-Asymmetry.
        self.fixed_values = values

    # ------------------------------------------------------------ metadata
    def __repr__(self):
        return f"Zoo({str(self.path)!r}, models={len(self)}, params={self.layout.num_params})"

    def __len__(self):
        return self.manifest["num_models"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def checkpoints(self) -> list[str]:
        return list(self.manifest["checkpoints"])

    @property
    def spec(self) -> dict | None:
        return self.manifest.get("spec")

    @property
    def splits(self) -> dict[str, list[int]]:
        s = self.manifest["splits"]
        return {k: list(s[k]) for k in ("train", "val", "test")}

    @contextlib.contextmanager
    def _reading(self):
        """HDF5 finds some damage only when data is read (a failing filter, a chunk address past
        the end of the file): a ZooError naming the zoo, like any other damage."""
        try:
            yield
        except OSError as e:
            raise ZooError(f"{self.path}: a shard is damaged: reading it failed ({' '.join(str(e).split())}); "
                           "zoo verify names the shard") from e

    @cached_property
    def table(self) -> pd.DataFrame:
        """One row per model: ``model_id``, hyper-parameters, metrics (``test_acc`` is the
        final checkpoint's; ``test_acc@epoch_0`` another's), ``diverged``, ``split``."""
        frames = []
        for s in self._shards:
            with self._reading():
                frames.append(read_table(self._file(s["file"])))
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"model_id": []})
        split_of = {i: k for k in ("train", "val", "test") for i in self.manifest["splits"].get(k, [])}
        df["split"] = df["model_id"].map(split_of).fillna("none")
        return df.sort_values("model_id").reset_index(drop=True)

    # Table columns that record how a net came out or where it came from, never how it was trained.
    NOT_HPARAMS = frozenset({"model_id", "split", "seed", "diverged", "diverged_epoch", "run",
                             "source_file", "upstream_index", "epoch"})

    @property
    def hparam_columns(self) -> list[str]:
        """The table's hyper-parameter columns: for a generated zoo, every hyper-parameter its
        spec samples or sets, whatever the architecture; for an imported one, those its importer
        recorded (``source.hparam_columns``); for a zoo imported before that was recorded, every
        column that is neither a metric (``test_acc``, ``train_loss@epoch_3``, ...) nor
        bookkeeping (:attr:`NOT_HPARAMS`)."""
        cols = list(self.table.columns)
        spec, source = self.manifest.get("spec"), self.manifest.get("source")
        named = spec.get("hparams") if isinstance(spec, dict) else None
        if named is None and isinstance(source, dict):
            named = source.get("hparam_columns")
        if isinstance(named, (dict, list)):
            return [c for c in named if isinstance(c, str) and c in cols]
        return [c for c in cols if c not in self.NOT_HPARAMS and "@" not in c and c not in METRICS]

    @property
    def ids(self) -> np.ndarray:
        return self.table["model_id"].to_numpy()

    def metric(self, name: str = "test_acc", checkpoint: str = "final") -> pd.Series:
        col = metric_column(name, checkpoint)
        if col not in self.table:
            raise ZooError(f"{self.path}: no metric column {col!r}; known: {', '.join(self.table.columns)}")
        return self.table.set_index("model_id")[col]

    # ------------------------------------------------------------- weights
    def _check(self, name):
        if self._verifier is not None:
            self._verifier.check(self._entry[name])

    def _file(self, name):
        if name not in self._files:
            self._check(name)
            f = open_shard(self.path / name)
            try:
                with self._reading():
                    self._agrees(f, self._entry[name])
            except BaseException:
                f.close()
                raise
            self._files[name] = f
        return self._files[name]

    def _agrees(self, f, entry) -> None:
        """Refuse a shard that holds other models, checkpoints or parameters than the manifest
        says (open_shard has checked that its datasets fit each other): reading it would mix
        them up silently, checksum or not."""
        where = f"{self.path / entry['file']}"
        with self._reading():
            ids = f["ids"][()]
        if len(ids) != entry["num_models"] or (len(ids) and (ids[0] < entry["id_start"] or ids[-1] >= entry["id_stop"])) \
                or (len(ids) > 1 and not (np.diff(ids) > 0).all()):
            raise ZooError(f"{where}: holds models {ids[:3].tolist()}... ({len(ids)}), but the manifest lists "
                           f"{entry['num_models']} ascending ids in [{entry['id_start']}, {entry['id_stop']})")
        for ck in self.manifest["checkpoints"]:
            if ck not in f["weights"] or f["weights"][ck].shape[1] != self.manifest["num_params"]:
                raise ZooError(f"{where}: no weights/{ck} of {self.manifest['num_params']} parameters, "
                               "which the manifest lists")
        try:
            same = Layout.from_json(f.attrs["layout"]).same_tensors(Layout.from_dict(self.manifest["layout"]))
            if "buffers" in f:
                nb = Layout.from_dict(self.manifest["layout"]).num_buffers
                same = same and all(d.shape[1] == nb for d in f["buffers"].values())
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
            same = False
        if not same:
            raise ZooError(f"{where}: its layout differs from the manifest's")

    def _check_finite(self, w: np.ndarray, ids, checkpoint: str) -> None:
        """Refuse non-finite weights of a model not marked diverged (a damaged zoo)."""
        if not self.verify:
            return
        # in row blocks: a whole-zoo boolean mask would cost a quarter of the weights' memory
        bad = np.concatenate([~np.isfinite(w[a:a + 1024]).all(axis=1) for a in range(0, len(w), 1024)]) \
            if len(w) else np.zeros(0, bool)
        if not bad.any():
            return
        diverged = set(self.table.loc[self.table["diverged"].astype(bool), "model_id"].tolist()) \
            if "diverged" in self.table else set()
        for mid in np.asarray(ids)[bad]:
            if int(mid) not in diverged:
                raise ZooError(f"{self.path}: model {int(mid)} has non-finite weights at checkpoint {checkpoint!r} "
                               "but is not marked diverged: the zoo is damaged; refused (zoo verify checks it all)")

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # DataLoader workers each open their own file handles
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _locate(self, model_id: int):
        k = bisect.bisect_right(self._starts, model_id) - 1
        if k < 0 or not (self._shards[k]["id_start"] <= model_id < self._shards[k]["id_stop"]):
            raise ZooError(f"{self.path}: no model with id {model_id}")
        name = self._shards[k]["file"]
        f = self._file(name)
        if name not in self._ids:
            with self._reading():
                self._ids[name] = f["ids"][()]
        ids = self._ids[name]
        row = np.searchsorted(ids, model_id)
        if row >= len(ids) or ids[row] != model_id:
            raise ZooError(f"{self.path}: no model with id {model_id}")
        return f, int(row)

    def _check_ckpt(self, checkpoint):
        if checkpoint not in self.checkpoints:
            raise ZooError(f"{self.path}: no checkpoint {checkpoint!r}; stored: {', '.join(self.checkpoints)}")

    def weights(self, ids=None, checkpoint: str = "final", trainable_only: bool = False) -> np.ndarray:
        """Flat weights ``[n, P]`` (or ``[n, P_trainable]``) float32, rows in the order of ``ids``
        (all models, by id, when None)."""
        self._check_ckpt(checkpoint)
        with self._reading():
            return self._weights(ids, checkpoint, trainable_only)

    def _weights(self, ids, checkpoint: str, trainable_only: bool) -> np.ndarray:
        if ids is None:
            out = np.concatenate([self._file(s["file"])["weights"][checkpoint][()] for s in self._shards]) \
                if self._shards else np.zeros((0, self.layout.num_params), np.float32)
            all_ids = np.concatenate([self._file(s["file"])["ids"][()] for s in self._shards]) \
                if self._shards else np.zeros(0, np.int64)
            order = np.argsort(all_ids)
            out = out[order]
            ids = all_ids[order]
        else:
            ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
            out = np.empty((len(ids), self.layout.num_params), np.float32)
            for i, mid in enumerate(ids):
                f, row = self._locate(int(mid))
                out[i] = f["weights"][checkpoint][row]
        self._check_finite(out, ids, checkpoint)
        # Fancy indexing can return a column-major array; BLAS then rounds differently by layout.
        return np.ascontiguousarray(out[:, self.layout.trainable_index]) if trainable_only else out

    def buffers(self, model_id: int, checkpoint: str = "final") -> np.ndarray | None:
        f, row = self._locate(int(model_id))
        with self._reading():
            return f["buffers"][checkpoint][row] if "buffers" in f else None

    def layer_weights(self, model_id: int, checkpoint: str = "final", trainable_only: bool = False) -> dict:
        """Per-layer tensors of one model: name -> torch tensor in its own shape (or, for
        ``trainable_only``, the trainable entries of each tensor)."""
        vec = self.weights([model_id], checkpoint)[0]
        if trainable_only:
            lay = self.layout.trainable_layout()
            vec = vec[self.layout.trainable_index]
        else:
            lay = self.layout
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in lay.unflatten(vec).items()}

    # ------------------------------------------------------------- rebuild
    @property
    def net_config(self):
        if not self.manifest.get("net"):
            raise ZooError(f"{self.path}: this zoo stores no buildable architecture "
                           f"(source {self.manifest.get('source', {}).get('kind')!r}); rebuild() needs one")
        try:
            return NetConfig.from_dict(self.manifest["net"])
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ZooError(f"{self.path / 'manifest.json'}: key 'net' is malformed ({type(e).__name__}: {e})") from e

    def check_net(self) -> None:
        """Refuse (ZooError naming ``manifest.json``) a manifest ``net`` that does not build the net
        the layout describes, as :meth:`rebuild` would; a zoo that stores no architecture passes."""
        if self.manifest.get("net") and len(self):
            self._build(int(self.ids[0]))

    def rebuild(self, model_id: int, checkpoint: str = "final") -> torch.nn.Module:
        """An ``nn.Module`` (eval mode, CPU) computing exactly what model ``model_id`` computed."""
        net = self._build(model_id)
        return self._fill(net, model_id, checkpoint, self.layer_weights(model_id, checkpoint))

    def _build(self, model_id: int) -> torch.nn.Module:
        """Model ``model_id``'s net, untrained, checked against the layout."""
        cfg = self.net_config
        hp = None
        keys = family(cfg.arch).rebuild_hparams  # a family's per-model hyper-parameters (smallcnn: activation)
        if keys:
            row = self.table.set_index("model_id").loc[int(model_id)]
            hp = {k: row[k] for k in keys if k in row}
        try:
            net = build_net(cfg, hp=hp)
            built = Layout.from_module(net)
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ZeroDivisionError) as e:
            raise ZooError(f"{self.path / 'manifest.json'}: key 'net' does not build a net "
                           f"({type(e).__name__}: {e})") from e
        if {t.name: t.shape for t in built.tensors} != {t.name: t.shape for t in self.layout.tensors}:
            raise ZooError(f"{self.path / 'manifest.json'}: key 'net' builds another net than the layout describes")
        return net

    def _fill(self, net, model_id: int, checkpoint: str, weights: dict) -> torch.nn.Module:
        with torch.no_grad():
            mods = dict(net.named_modules())
            for name, t in weights.items():
                mod_name, p_name = name.rsplit(".", 1) if "." in name else ("", name)
                getattr(mods[mod_name], p_name).copy_(t)
            if self.fixed_values is not None:
                fixed = self.layout.unflatten(torch.from_numpy(self.fixed_values))
                mask = self.layout.unflatten(torch.from_numpy(self.layout.fixed_mask))
                for name in fixed:
                    mod_name, p_name = name.rsplit(".", 1)
                    mod = mods[mod_name]
                    if p_name == "weight" and getattr(mod, "fixed_mask", None) is not None:
                        mod.fixed_mask.copy_(mask[name])
                        mod.fixed_values.copy_(fixed[name])
            for name, arr in self.extra_fixed.items():
                mod_name, b_name = name.rsplit(".", 1)
                getattr(mods[mod_name], b_name).copy_(torch.from_numpy(arr))
            buf = self.buffers(model_id, checkpoint)
            if buf is not None:
                for name, t in self.layout.unflatten_buffers(torch.from_numpy(buf)).items():
                    mod_name, b_name = name.rsplit(".", 1)
                    getattr(mods[mod_name], b_name).copy_(t)
        return net.eval()


_VERIFY = contextvars.ContextVar("metazoo_verify", default=True)


@contextlib.contextmanager
def skip_verification():
    """Open zoos without shard checksums inside the block (a CLI's ``--no-verify``: it
    reaches every ``zoo.open`` of the command without threading a flag through)."""
    token = _VERIFY.set(False)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def open(path, verify: bool = True) -> Zoo:  # noqa: A001 - mirrors h5py.File / builtins.open
    """Open the zoo at ``path`` (a directory holding ``manifest.json``).

    The manifest is always validated. ``verify=False`` skips the shard checksums and the
    finite-weights check (for a zoo you have just verified, or to rescue a damaged one)."""
    return Zoo(path, verify=verify)
