"""Image data for training zoos, kept on the training device as uint8 tensors.

Sources: ``digits`` (scikit-learn's bundled 8x8 handwritten digits; offline), ``npz:PATH``
(a user's own arrays) and ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion_mnist``
through torchvision (an optional extra, imported only for those).

Like airbench, there is no DataLoader: the whole dataset sits on the device and
each model's batches are gathered by index, with augmentation done there too.
The random draws behind data order and augmentation come from a per-model CPU
generator (:func:`epoch_plan`), so a model sees the same batches whether it is
trained alone or in a group of 256.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpecError, ZooError
from ..nets.config import IMAGE_SHAPES

TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "mnist": "MNIST",
               "fashion_mnist": "FashionMNIST"}
SOURCES = ("digits", "npz:PATH", *TORCHVISION)
#: (channels, height, width, classes) of the named sources, for checks before any download.
SHAPES = IMAGE_SHAPES


def default_cache() -> Path:
    return Path(os.environ.get("METAZOO_DATA", Path.home() / ".cache" / "metazoo" / "data"))


def validate_source(data: dict) -> None:
    src = data.get("source")
    unknown = set(data) - {"source", "root"}
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(f"data.{k}", data[k], "unknown field; known: source, root")
    if not isinstance(src, str) or not (src in SHAPES or src.startswith("npz:")):
        raise SpecError("data.source", src, f"allowed: {', '.join(SOURCES)}")
    if not isinstance(data.get("root", ""), str):
        raise SpecError("data.root", data["root"], "must be a folder path (a string)")


@dataclass
class ImageData:
    """Train/test images ``[N, C, H, W]`` uint8 and int64 labels, on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor  # [C] in [0, 1] units
    std: torch.Tensor

    @property
    def shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def to(self, device) -> "ImageData":
        return ImageData(self.name, *(t.to(device) for t in (self.x_train, self.y_train, self.x_test,
                                                              self.y_test, self.mean, self.std)))

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., C, H, W]`` -> standardised per channel, in the default dtype (float32;
        float64 in the exactness checks)."""
        x = x_uint8.to(torch.get_default_dtype()).div_(255.0)
        return x.sub_(self.mean[:, None, None]).div_(self.std[:, None, None])  # in place: x is ours

    def describe(self) -> dict:
        return {"source": self.name, "shape": list(self.shape), "num_classes": self.num_classes,
                "num_train": len(self.y_train), "num_test": len(self.y_test)}


def load(data_spec: dict, device="cpu") -> ImageData:
    src = data_spec["source"]
    if src == "digits":
        arrays = _digits()
    elif src.startswith("npz:"):
        arrays = _npz(Path(src[4:]).expanduser())
    else:
        arrays = _torchvision(src, Path(data_spec.get("root") or default_cache()).expanduser())
    xtr, ytr, xte, yte = arrays
    # float64 reductions: a float32 sum rounds differently with the thread count, and every
    # process working on a zoo must normalise its images identically.
    xs = torch.from_numpy(xtr).double().div_(255)
    mean = xs.mean(dim=(0, 2, 3)).float()
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-3).float()
    return ImageData(src, torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte),
                     torch.from_numpy(yte).long(), mean, std).to(device)


def _digits():
    from sklearn.datasets import load_digits  # deferred: only this source needs it (~0.2 s to import)

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)[:, None]  # pixel values 0..16 -> 0..255
    y = d.target.astype(np.int64)
    # A fixed split (its own seed, not the zoo's) so every digits zoo sees the same test set.
    perm = np.random.default_rng(20241).permutation(len(y))
    n_test = len(y) // 4
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _to_nchw_uint8(x: np.ndarray, path, key) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ZooError(f"{path}: array {key!r} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.max() <= 1.0 + 1e-6 and x.min() >= 0:
            x = x * 255.0
        if x.min() < 0 or x.max() > 255:
            raise ZooError(f"{path}: array {key!r} has values in [{x.min()}, {x.max()}]; expected uint8, "
                           "floats in [0, 1] or floats in [0, 255]")
        x = np.rint(x).astype(np.uint8)
    return np.ascontiguousarray(x)


def _npz(path: Path):
    if not path.exists():
        raise ZooError(f"data file {path} does not exist (data.source = 'npz:{path}')")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
            if missing:
                raise ZooError(f"{path}: missing arrays {missing}; an npz source needs x_train, y_train, x_test, y_test")
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (ValueError, OSError) as e:
        raise ZooError(f"{path}: not a readable .npz file of plain arrays: {e}") from e
    xtr, xte = (_to_nchw_uint8(arrays[k], path, k) for k in ("x_train", "x_test"))
    ytr, yte = (arrays[k].astype(np.int64).reshape(-1) for k in ("y_train", "y_test"))
    for xk, yk, x, y in (("x_train", "y_train", xtr, ytr), ("x_test", "y_test", xte, yte)):
        if len(x) != len(y):
            raise ZooError(f"{path}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
        if len(y) and y.min() < 0:
            raise ZooError(f"{path}: {yk} has negative label {y.min()}; labels must be 0..K-1")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ZooError(f"{path}: x_train images are {xtr.shape[1:]} but x_test images are {xte.shape[1:]}")
    return xtr, ytr, xte, yte


def _torchvision(name: str, root: Path):
    try:
        import torchvision  # deferred: an optional extra (metazoo[vision]) for these sources only
    except ImportError as e:
        raise ZooError(f"data source {name!r} needs torchvision: pip install 'metazoo[vision]'") from e
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "svhn":
            tr, te = cls(root, split="train", download=True), cls(root, split="test", download=True)
            xtr, ytr, xte, yte = tr.data, tr.labels, te.data, te.labels
        else:
            tr, te = cls(root, train=True, download=True), cls(root, train=False, download=True)
            xtr, ytr, xte, yte = (np.asarray(tr.data), np.asarray(tr.targets),
                                  np.asarray(te.data), np.asarray(te.targets))
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError on bad files
        raise ZooError(f"could not download or read {name!r} into {root} ({e}). Offline? Put torchvision's "
                       f"{TORCHVISION[name]} files under {root} (or set data.root / METAZOO_DATA) and rerun") from e
    xtr, xte = (x.numpy() if hasattr(x, "numpy") else x for x in (xtr, xte))
    return (_to_nchw_uint8(xtr, root, "train"), np.asarray(ytr, np.int64),
            _to_nchw_uint8(xte, root, "test"), np.asarray(yte, np.int64))


# ------------------------------------------------------------- augmentation

def train_subset(gen: torch.Generator, n_total: int, fraction: float) -> torch.Tensor:
    """The model's own subset of training indices (all of them when fraction = 1)."""
    n = max(1, int(round(fraction * n_total)))
    if n == n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=gen)[:n].sort().values


def epoch_plan(gen: torch.Generator, subset: torch.Tensor, hp: dict, hw: tuple[int, int]) -> dict:
    """One epoch of random draws for one model: data order and per-image augmentation.

    The draw order is fixed, so the plan is a function of the generator state alone."""
    n = len(subset)
    order = subset[torch.randperm(n, generator=gen)]
    flip = torch.rand(n, generator=gen) < 0.5
    t = int(hp["translate"])
    shift = torch.randint(-t, t + 1, (n, 2), generator=gen) if t else torch.zeros(n, 2, dtype=torch.long)
    center = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in hw], dim=1)
    return {"order": order, "flip": flip & bool(hp["flip"]), "shift": shift, "center": center}


def augment(x: torch.Tensor, flip, shift, center, translate: int, cutout) -> torch.Tensor:
    """Augment a normalised batch ``x [N, C, H, W]`` on its device, with no host sync.

    ``flip [N]`` bool, ``shift [N, 2]`` pixel offsets (zero-padded translation, each within
    its model's own range), ``center [N, 2]`` cutout centres. ``translate`` is a Python int:
    the padding, at least the largest ``|shift|`` (a larger one gives the same images).
    ``cutout`` is the square's side: a Python int when the whole batch shares it (every
    preset), else an ``[N]`` tensor (0 = off). Sizes are host ints so that the step never
    reads a device value back (which would block CUDA graphs and cost a sync per step)."""
    N, C, H, W = x.shape
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    T = int(translate)
    if T:
        # Translate by gathering from a zero-padded copy at per-image row/column offsets.
        pad = F.pad(x, (T, T, T, T))
        rows = (torch.arange(H, device=x.device)[None] + T - shift[:, 0:1])  # [N, H]
        cols = (torch.arange(W, device=x.device)[None] + T - shift[:, 1:2])  # [N, W]
        pad = pad.gather(2, rows[:, None, :, None].expand(N, C, H, W + 2 * T))
        x = pad.gather(3, cols[:, None, None, :].expand(N, C, H, W))
    if isinstance(cutout, int) and cutout == 0:
        return x
    side = cutout if isinstance(cutout, int) else cutout[:, None]
    r = torch.arange(H, device=x.device)[None]
    c = torch.arange(W, device=x.device)[None]
    lo_r = center[:, 0:1] - side // 2
    lo_c = center[:, 1:2] - side // 2
    in_r = (r >= lo_r) & (r < lo_r + side)
    in_c = (c >= lo_c) & (c < lo_c + side)
    hole = in_r[:, :, None] & in_c[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)  # 0 = the channel mean after normalisation


def grouped_batch(data: ImageData, X: torch.Tensor, idx: torch.Tensor, flip=None, shift=None, center=None,
                  translate: int = 0, cutout=0, dtype=None, channels_last: bool = False) -> torch.Tensor:
    """Images ``X[idx]`` for a group of M models, gathered, normalised and augmented straight
    into the grouped nets' input layout ``[b, M*C, H, W]``, each pixel read once.

    ``idx [M, b]``: model k's images in row k. ``flip``/``shift``/``center [M, b(, 2)]`` and
    ``translate``/``cutout`` as in :func:`augment` (``cutout`` an int, or one side per model,
    ``[M]``); ``flip=None`` means no augmentation (evaluation). With ``channels_last`` the
    result has channels-last strides (memory ``[b, H, W, M, C]``), else it is contiguous.

    Every output pixel is computed once: its source pixel (flip, then translation) is read as
    uint8 by one broadcast gather, normalised, and set to 0 (the channel mean) where the
    translation reads padding or the cutout square covers it; channels-last and the cast
    are one copy at the end. The values are bit for bit those of ``normalize`` +
    :func:`augment` followed by the group's transpose and layout copy (``tests/test_train.py``),
    in six or seven passes over the batch in eager mode (the uint8 gather, the cast, four in-place
    ops, the final copy for bf16 or channels-last) instead of about thirteen (``scripts/bench_input.py``), and under
    ``torch.compile`` in one kernel."""
    M, b = idx.shape
    _, C, H, W = X.shape
    dev = idx.device
    # [b, M]-major copies of the (small) per-image draws: the elementwise ops below lay out
    # their results in their inputs' memory order
    ib = idx.T.contiguous()
    r = torch.arange(H, device=dev)
    c = torch.arange(W, device=dev)
    if flip is None:
        rows, cols = r[None, None, :].expand(b, M, H), c[None, None, :].expand(b, M, W)
        off = None
    else:
        fb, sb, cb = (t.transpose(0, 1).contiguous() for t in (flip, shift, center))  # [b, M(, 2)]
        T = int(translate)
        rows = r - sb[..., 0:1] if T else r[None, None, :].expand(b, M, H)  # [b, M, H] source rows
        cols = c - sb[..., 1:2] if T else c[None, None, :].expand(b, M, W)  # before the flip
        off = None  # [b, M, H, W]: pixels set to 0 (translation padding, the cutout square)
        if T:
            off = ((rows < 0) | (rows >= H))[..., :, None] | ((cols < 0) | (cols >= W))[..., None, :]
            rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
        # the flip mirrors the image before it is translated: column w' of the flipped image
        # is column W-1-w' of the source
        cols = torch.where(fb[..., None], W - 1 - cols, cols)
        if not (isinstance(cutout, int) and cutout == 0):
            side = cutout if isinstance(cutout, int) else cutout[None, :, None]  # [1, M, 1]
            lo_r, lo_c = cb[..., 0:1] - side // 2, cb[..., 1:2] - side // 2
            hole = (((r >= lo_r) & (r < lo_r + side))[..., :, None]
                    & ((c >= lo_c) & (c < lo_c + side))[..., None, :])  # [b, M, H, W]
            off = hole if off is None else off | hole
    # One gather in [b, M, C, H, W] order: neighbouring outputs read neighbouring pixels of
    # one image row (coalesced on a GPU); channels-last comes from the final cast's copy.
    ch = torch.arange(C, device=dev)
    u8 = X[ib[:, :, None, None, None], ch[:, None, None], rows[:, :, None, :, None], cols[:, :, None, None, :]]
    # The gather may lay its result out in its indices' order; the layout is fixed here, on
    # the smallest copy of the batch (uint8), so everything after it is contiguous.
    x = data.normalize(u8.contiguous())
    if off is not None:
        x.masked_fill_(off[:, :, None], 0.0)  # in place: x keeps its (contiguous) layout
    x = x.view(b, M * C, H, W)
    dtype = dtype or x.dtype
    # With M*C = 1 a contiguous tensor already is channels-last, and .contiguous(channels_last)
    # keeps its strides: so must this (the conv kernels follow the strides).
    if channels_last and not x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(x.shape, dtype=dtype, device=dev, memory_format=torch.channels_last).copy_(x)
    return x if dtype == x.dtype else x.to(dtype)
