"""Fixtures for the hub tests: tiny upstream zoos in their published layouts, a local HTTP
server on 127.0.0.1 (started and stopped by each test), and a CLI runner.

Nothing here touches the internet.
"""
from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import re
import socket
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from zoo.layout import Layout
from zoo.nets import NetConfig, ResNet

# ------------------------------------------------------------------ HTTP

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``directory``: HTTP Range when ``ranges`` (else the whole file, as a
    server that ignores Range does); ``drop_once`` names files whose first GET stops
    half-way and closes the connection; ``truncated`` names files every GET cuts short.
    Every request is appended to ``log`` as (method, name, Range header, status)."""

    directory: Path
    ranges = True
    drop_once: set = set()
    truncated: set = set()
    log: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        name = urllib.parse.unquote(self.path.lstrip("/").split("?")[0])
        path = self.directory / name
        rng = self.headers.get("Range")
        if not name or ".." in name or not path.is_file():
            self.log.append((self.command, name, rng, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "") if self.ranges else None
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.log.append((self.command, name, rng, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, status = data[start:end + 1], 206
        else:
            body, status = data, 200
        self.log.append((self.command, name, rng, status))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if name in self.truncated or (self.command == "GET" and name in self.drop_once):
            self.drop_once.discard(name)
            self.wfile.write(body[: len(body) // 2])  # then close: a connection lost half-way
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(directory, truncated=(), ranges=True, drop_once=(), log=None):
    """Serve ``directory`` on 127.0.0.1 (a free port); yields the base URL."""
    handler = type("Handler", (_Handler,), {"directory": Path(directory), "truncated": set(truncated),
                                            "ranges": ranges, "drop_once": set(drop_once),
                                            "log": log if log is not None else []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_url(name="x.zip") -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# ------------------------------------------------------------------- CLI

def run_cli(argv) -> int:
    """``zoo ARGV`` in this process; returns the exit code."""
    from zoo.cli import main

    return main(argv)


# --------------------------------------------------------------- lim2024

_UPSTREAM = {"norm1": "bn1", "norm2": "bn2", "shortcut_conv": "shortcut.0", "shortcut_norm": "shortcut.1",
             "fc": "linear"}


def upstream_name(ours: str) -> str:
    parts = ours.split(".")
    return ".".join(_UPSTREAM.get(p, p) for p in parts)


def lim_masks(seed=0):
    """Paper-style masks: 8 fixed input filters per output channel in every conv (the 3-channel
    stem fully fixed), 8 fixed entries per row of the linear; mask 1 = trained, 0 = fixed."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in Layout.from_module(ResNet(NetConfig())).tensors:
        if t.role == "conv_weight":
            o, i = t.shape[:2]
            fixed = torch.rand(o, i, generator=g).argsort(1)[:, : min(8, i)]
            m = torch.ones(o, i).scatter_(1, fixed, 0.0)[:, :, None, None].expand(t.shape).clone()
        elif t.role == "linear_weight":
            o, i = t.shape
            m = torch.ones(o, i).scatter_(1, torch.rand(o, i, generator=g).argsort(1)[:, :8], 0.0)
        else:
            continue
        out[t.name.rsplit(".", 1)[0]] = (m, torch.randn(t.shape, generator=g))
    return out


def lim_state_dict(seed: int, masks=None, kappa=2.0, nudge=True) -> dict:
    """An upstream-named state dict of a ResNet8; W-Asym when ``masks`` is given (raw weights
    whose fixed entries are slightly off, as AdamW weight decay leaves them)."""
    torch.manual_seed(seed)
    net = ResNet(NetConfig())
    sd = {}
    for name, p in net.state_dict().items():
        p = p.clone()
        if name.endswith(".bias") or "norm" in name:
            p += 0.1 * torch.randn_like(p)
        mod = name.rsplit(".", 1)[0]
        if masks is not None and mod in masks and name.endswith("weight"):
            m, n = masks[mod]
            p = p * m + (1 - m) * kappa * n * (0.99 if nudge else 1.0)
            sd[upstream_name(mod) + ".mask"] = m
            sd[upstream_name(mod) + ".normal_mask"] = n
        sd[upstream_name(name)] = p
    return sd


def write_lim_zoo(folder: Path, n: int, wasym: bool, nan_ids=(), start_seed=0) -> list[float]:
    folder.mkdir(parents=True, exist_ok=True)
    masks = lim_masks() if wasym else None
    accs = []
    for i in range(n):
        sd = lim_state_dict(start_seed + i, masks)
        if i in nan_ids:
            sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        acc = 40.0 + 3.5 * i
        accs.append(acc)
        torch.save((sd, acc), folder / f"net_{i}.pt")
    return accs


def upstream_forward(sd: dict, x: torch.Tensor, kappa=2.0) -> torch.Tensor:
    """The paper's ResNet8 forward from an upstream state dict (effective W-Asym weights)."""
    def w(layer):
        raw = sd[f"{layer}.weight"]
        if f"{layer}.mask" in sd:
            m = sd[f"{layer}.mask"]
            raw = raw * m + (1 - m) * kappa * sd[f"{layer}.normal_mask"]
        return raw

    def gn(h, layer):
        return F.group_norm(h, 1, sd[f"{layer}.weight"], sd[f"{layer}.bias"])

    h = F.relu(gn(F.conv2d(x, w("conv1"), padding=1), "bn1"))
    for k, stride in ((1, 1), (2, 2), (3, 2)):
        p = f"layer{k}.0"
        out = F.relu(gn(F.conv2d(h, w(f"{p}.conv1"), stride=stride, padding=1), f"{p}.bn1"))
        out = gn(F.conv2d(out, w(f"{p}.conv2"), padding=1), f"{p}.bn2")
        if f"{p}.shortcut.0.weight" in sd:
            h = gn(F.conv2d(h, w(f"{p}.shortcut.0"), stride=stride), f"{p}.shortcut.1")
        h = F.relu(out + h)
    return F.linear(h.mean(dim=(2, 3)), w("linear"), sd["linear.bias"])


# ------------------------------------------------- lim2024, as upstream ships it
# A small re-implementation of cptq/asymmetric-networks metanet_data/models.py (written from
# reading it): same module tree, so the same state_dict keys, buffers and forward.

class UpSparseConv2d(torch.nn.Module):
    """SparseConv2d: buffers ``mask`` (1 = trained) and ``normal_mask``; every forward
    rewrites the weight as ``w*mask + (1-mask)*mask_constant*normal_mask``."""

    def __init__(self, c_in, c_out, k, stride, padding, mask, normal, mask_constant=2.0):
        super().__init__()
        self.register_buffer("mask", mask.clone())
        self.weight = torch.nn.Parameter(torch.randn(c_out, c_in, k, k) * 0.2)
        self.register_buffer("normal_mask", normal.clone())
        self.stride, self.padding, self.mask_constant = stride, padding, mask_constant

    def forward(self, x):
        self.weight.data = self.weight.data * self.mask + (1 - self.mask) * self.mask_constant * self.normal_mask
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)


class UpSparseLinear(torch.nn.Module):
    def __init__(self, c_in, c_out, mask, normal, mask_constant=2.0):
        super().__init__()
        self.register_buffer("mask", mask.clone())
        self.weight = torch.nn.Parameter(torch.randn(c_out, c_in) * 0.2)
        self.register_buffer("normal_mask", normal.clone())
        self.bias = torch.nn.Parameter(torch.randn(c_out) * 0.1)
        self.mask_constant = mask_constant

    def forward(self, x):
        self.weight.data = self.weight.data * self.mask + (1 - self.mask) * self.mask_constant * self.normal_mask
        return F.linear(x, self.weight, self.bias)


class UpFiGLU(torch.nn.Module):
    """AsymConv2dSwiGLU: ``sigmoid(conv1x1(x, F_mat)) * x`` with a fixed buffer ``F_mat``."""

    def __init__(self, planes, g):
        super().__init__()
        self.register_buffer("F_mat", torch.randn(planes, planes, 1, 1, generator=g) / planes ** 0.5)

    def forward(self, x):
        return torch.sigmoid(F.conv2d(x, self.F_mat)) * x


class UpBlock(torch.nn.Module):
    def __init__(self, kind, c_in, planes, stride, stage, masks, g):
        super().__init__()
        def conv(c_i, c_o, k, s, p, part):
            if kind == "sparse_resnet8":
                return UpSparseConv2d(c_i, c_o, k, s, p, *masks[f"block{stage}_{part}"])
            return torch.nn.Conv2d(c_i, c_o, k, stride=s, padding=p, bias=False)
        self.kind = kind
        self.conv1 = conv(c_in, planes, 3, stride, 1, "conv1")
        self.ln1 = torch.nn.GroupNorm(1, planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, "conv2")
        self.ln2 = torch.nn.GroupNorm(1, planes)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or c_in != planes:
            self.shortcut = torch.nn.Sequential(conv(c_in, planes, 1, stride, 0, "skip"), torch.nn.GroupNorm(1, planes))
        if kind == "sigma_asym_resnet8":
            self.nonlin1, self.nonlin2 = UpFiGLU(planes, g), UpFiGLU(planes, g)

    def forward(self, x):
        act1 = self.nonlin1 if self.kind == "sigma_asym_resnet8" else F.relu
        act2 = self.nonlin2 if self.kind == "sigma_asym_resnet8" else F.relu
        out = act1(self.ln1(self.conv1(x)))
        out = self.ln2(self.conv2(out))
        out = out + self.shortcut(x)
        return act2(out)


class UpResNet8(torch.nn.Module):
    """resnet8 / smaller_resnet8 (w = 0.875) / sparse_resnet8 / sigma_asym_resnet8."""

    def __init__(self, kind, masks=None, g=None):
        super().__init__()
        w = 0.875 if kind == "smaller_resnet8" else 1.0
        c1, c2, c3 = round(16 * w), round(32 * w), round(64 * w)
        if kind == "sparse_resnet8":
            self.conv1 = UpSparseConv2d(3, c1, 3, 1, 1, *masks["conv_f"])
        else:
            self.conv1 = torch.nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.ln1 = torch.nn.GroupNorm(1, c1)
        self.kind = kind
        if kind == "sigma_asym_resnet8":
            self.nonlin = UpFiGLU(c1, g)
        self.layer1 = torch.nn.Sequential(UpBlock(kind, c1, c1, 1, 1, masks, g))
        self.layer2 = torch.nn.Sequential(UpBlock(kind, c1, c2, 2, 2, masks, g))
        self.layer3 = torch.nn.Sequential(UpBlock(kind, c2, c3, 2, 3, masks, g))
        self.linear = UpSparseLinear(c3, 10, *masks["linear"]) if kind == "sparse_resnet8" else torch.nn.Linear(c3, 10)

    def forward(self, x):
        act = self.nonlin if self.kind == "sigma_asym_resnet8" else F.relu
        out = act(self.ln1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).flatten(1)
        return self.linear(out)


def upstream_masks(seed=0) -> dict:
    """``(mask, normal_mask)`` per upstream mask-file part, built like models.py's
    ``filter_random_subsets`` (8 fixed input filters per output channel; the 3-channel stem
    fully fixed) and ``random_subsets`` for the linear (8 entries per row)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv_f": (16, 3, 3, 3), "linear": (10, 64)}
    for k, (c_in, c) in {1: (16, 16), 2: (16, 32), 3: (32, 64)}.items():
        shapes.update({f"block{k}_conv1": (c, c_in, 3, 3), f"block{k}_conv2": (c, c, 3, 3),
                       f"block{k}_skip": (c, c_in, 1, 1)})
    out = {}
    for part, shape in shapes.items():
        mask = torch.ones(shape)
        for o in range(shape[0]):
            chosen = torch.randperm(shape[1], generator=g)[:8]
            mask[o, chosen] = 0
        out[part] = (mask, torch.randn(shape, generator=g))
    return out


def write_lim_record(root: Path, counts: dict, nan_ids=(), seed=0, mask_files=True, hparams=True,
                     nudge_fixed=False) -> dict:
    """Upstream's layout: ``<root>/<model_type>/<i>.pt`` each ``torch.save((state_dict,
    test_acc_percent))`` of a channels-last model, ``masks/sparse_resnet8_*.pt`` and
    ``hparams.csv`` (row i+1 <-> i.pt). Returns {model_type: [state dicts]} and the accuracies."""
    root.mkdir(parents=True, exist_ok=True)
    masks = upstream_masks(seed)
    if mask_files:
        (root / "masks").mkdir(exist_ok=True)
        for part, pair in masks.items():
            torch.save(pair, root / "masks" / f"sparse_resnet8_{part}.pt")
    n_max = max(counts.values())
    if hparams:
        pd.DataFrame({"lr": [1e-3 * (i + 1) for i in range(n_max)], "weight_decay": [1e-4 * i for i in range(n_max)],
                      "label_smoothing": [0.1 * (i % 3) for i in range(n_max)],
                      "epochs": [20 + i for i in range(n_max)]}).to_csv(root / "hparams.csv", index=False)
    saved, accs = {}, {}
    for t, (kind, n) in enumerate(sorted(counts.items())):
        (root / kind).mkdir(exist_ok=True)
        saved[kind], accs[kind] = [], []
        for i in range(n):
            torch.manual_seed(1000 * t + i + seed)
            model = UpResNet8(kind, masks, torch.Generator().manual_seed(7000 * t + i))
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.GroupNorm):
                        m.weight.add_(0.1 * torch.randn_like(m.weight))
                        m.bias.add_(0.1 * torch.randn_like(m.bias))
                model = model.to(memory_format=torch.channels_last)
                model(torch.zeros(1, 3, 8, 8).to(memory_format=torch.channels_last))  # the evaluation before the save
            sd = model.state_dict()
            if nudge_fixed and kind == "sparse_resnet8":
                sd["layer2.0.conv1.weight"].mul_(0.99)  # what AdamW's decay does to fixed entries between forwards
            if i in nan_ids:
                sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
            acc = 40.0 + 3.5 * i
            torch.save((sd, acc), root / kind / f"{i}.pt")
            saved[kind].append(sd)
            accs[kind].append(acc)
    return {"state_dicts": saved, "accs": accs, "masks": masks}


def upstream_module(kind: str, sd: dict) -> torch.nn.Module:
    """The upstream module with the original state dict loaded (strict)."""
    masks = upstream_masks() if kind == "sparse_resnet8" else None
    m = UpResNet8(kind, masks, torch.Generator().manual_seed(0))
    m.load_state_dict(sd, strict=True)
    return m.eval()


# ----------------------------------------------------------- smallcnnzoo

#: (TF variable name, TF shape) of a tiny Keras CNN in the Small CNN Zoo's naming.
SMALL_TF = [("sequential/conv2d/kernel:0", (3, 3, 1, 4)), ("sequential/conv2d/bias:0", (4,)),
            ("sequential/conv2d_1/kernel:0", (3, 3, 4, 4)), ("sequential/conv2d_1/bias:0", (4,)),
            ("sequential/dense/kernel:0", (4, 10)), ("sequential/dense/bias:0", (10,))]


#: Upstream's CNN itself (three 3x3 stride-2 convs, global average pool, dense), 4 filters wide.
SMALL_TF_CNN = [("sequential/conv2d/kernel:0", (3, 3, 1, 4)), ("sequential/conv2d/bias:0", (4,)),
                ("sequential/conv2d_1/kernel:0", (3, 3, 4, 4)), ("sequential/conv2d_1/bias:0", (4,)),
                ("sequential/conv2d_2/kernel:0", (3, 3, 4, 4)), ("sequential/conv2d_2/bias:0", (4,)),
                ("sequential/dense/kernel:0", (4, 10)), ("sequential/dense/bias:0", (10,))]


def keras_cnn_forward(row: np.ndarray, x_nhwc: np.ndarray, activation: str, layout=SMALL_TF_CNN) -> np.ndarray:
    """What upstream's Keras CNN computes (Conv2D 3x3, stride 2, 'valid'; activation; global
    average pool; Dense), in numpy from one TensorFlow-order weights.npy row."""
    params, pos = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        params[name.split("/", 1)[1]] = row[pos:pos + size].reshape(shape).astype(np.float64)
        pos += size
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    h = x_nhwc.astype(np.float64)
    for conv in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = params[conv + "/kernel:0"], params[conv + "/bias:0"]
        n_out = (h.shape[1] - 3) // 2 + 1, (h.shape[2] - 3) // 2 + 1
        out = np.zeros((h.shape[0], *n_out, k.shape[3]))
        for i in range(3):
            for j in range(3):
                patch = h[:, i:i + 2 * n_out[0] - 1:2, j:j + 2 * n_out[1] - 1:2, :]
                out += np.einsum("nhwc,co->nhwo", patch, k[i, j])
        h = act(out + b)
    return h.mean(axis=(1, 2)) @ params["dense/kernel:0"] + params["dense/bias:0"]


SMALL_EPOCHS = (0, 1, 2, 3, 20, 40, 60, 80, 86)  # train_network.py's permanent_ckpt-<epoch>


def write_smallcnnzoo(folder: Path, runs: int = 5, gz: bool = True, seed: int = 0, shortened_run: int | None = None,
                      diverged_run: int | None = None, layout=SMALL_TF) -> dict:
    """weights.npy + metrics.csv(.gz) + layout.csv as the Small CNN Zoo ships them: one row per
    checkpoint, the index naming it (``.../<run>/permanent_ckpt-<epoch>``), ``step`` = epoch,
    ``config.*`` columns, rows sorted by checkpoint path. ``shortened_run`` stops after epoch 20
    (a run that hit NaN); ``diverged_run`` has a non-finite weight at its last checkpoint."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, pos = [], 0
    for name, shape in layout:
        size = int(np.prod(shape))
        rows.append({"varname": name, "start_idx": pos, "end_idx": pos + size, "shape": str(shape)})
        pos += size
    pd.DataFrame(rows).to_csv(folder / "layout.csv", index=False)
    order = [(r, e) for r in range(runs) for e in SMALL_EPOCHS if not (r == shortened_run and e > 20)]
    order.sort(key=lambda re_: (f"run_{re_[0]:04d}", f"permanent_ckpt-{re_[1]}"))  # sorted by path, as upstream
    weights = rng.normal(size=(len(order), pos)).astype(np.float32)
    if diverged_run is not None:
        weights[order.index((diverged_run, 86)), 0] = np.inf
    metrics = pd.DataFrame({
        "config.w_init": ["he_normal" if r % 2 else "glorot_uniform" for r, _ in order],
        "config.activation": ["relu" if r % 3 else "tanh" for r, _ in order],
        "config.learning_rate": [10.0 ** -(1 + r) for r, _ in order],
        "config.init_std": [0.01 * (r + 1) for r, _ in order],
        "config.l2reg": [1e-4 * (r + 1) for r, _ in order],
        "config.train_fraction": [0.5 + 0.1 * (r % 5) for r, _ in order],
        "config.dropout": [0.05 * (r % 4) for r, _ in order],
        "modeldir": [f"/cns/zoo/cifar10/run_{r:04d}" for r, _ in order],
        "step": [e for _, e in order],
        "test_accuracy": [0.1 + 0.007 * e + 0.01 * r for r, e in order],
        "test_loss": [2.3 - 0.019 * e for r, e in order],
        "train_accuracy": [0.1 + 0.008 * e + 0.01 * r for r, e in order],
        "train_loss": [2.3 - 0.02 * e for r, e in order],
    }, index=[f"/cns/zoo/cifar10/run_{r:04d}/permanent_ckpt-{e}" for r, e in order])
    np.save(folder / "weights.npy", weights)
    if gz:
        with gzip.open(folder / "metrics.csv.gz", "wt") as f:
            metrics.to_csv(f)
    else:
        metrics.to_csv(folder / "metrics.csv")
    return {"weights": weights, "order": order, "metrics": metrics}


def tar_folder(folder: Path, out: Path, mode="w:xz", arc_root: str | None = None) -> Path:
    with tarfile.open(out, mode) as tf:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            tf.add(p, arcname=str(Path(arc_root) / rel) if arc_root else str(rel), recursive=False)
    return out


def tf_conv_same(x_nhwc: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """TensorFlow's conv2d ('SAME', stride 1, NHWC input, [kh, kw, in, out] kernel), in numpy."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x_nhwc, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    n, h, w, _ = x_nhwc.shape
    out = np.zeros((n, h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w, :], kernel[i, j])
    return out


# ------------------------------------------------------------- modelzoos

class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.module_list = torch.nn.ModuleList([
            torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Linear(4, 10)])


def modelzoos_dir(n: int) -> str:
    """A Ray Tune trial folder as the Model Zoos generator names them."""
    return f"tune_zoo_cifar10_uniform_large/NN_tune_trainable_{7000 + n:05d}_{n}_seed={n + 1}_2022-05-10_12-00-{n % 60:02d}"


def write_modelzoos(zip_path: Path, nets: int = 4, epochs=(0, 1, 2), missing: dict | None = None,
                    nan_net: int | None = None, params_json: bool = True) -> list[dict]:
    """A zip of Ray Tune trial folders: ``params.json`` (config keys with ``::``), ``result.json``
    (JSON lines, each with ``config``, ``training_iteration`` and fractions), and per epoch
    ``checkpoint_<epoch:06d>/checkpoints`` (a state dict) beside an ``optimizer`` file.

    ``missing``: net -> epoch left out; ``params_json=False``: the config only in result.json.
    Returns each net's state dict per epoch."""
    missing = missing or {}
    saved = []
    with zipfile.ZipFile(zip_path, "w") as zf:
        for n in range(nets):
            d = modelzoos_dir(n)
            config = {"model::type": "CNN", "optim::lr": 1e-3 * (n + 1), "seed": n + 1, "training::epochs_train": 2,
                      "optim::wd": [0.0, 1e-4][n % 2]}
            if params_json:
                zf.writestr(f"{d}/params.json", json.dumps(config))
            lines = [json.dumps({"training_iteration": e, "test_acc": 0.1 + 0.2 * e + 0.01 * n,
                                 "train_acc": 0.12 + 0.2 * e, "test_loss": 2.0 - 0.3 * e, "train_loss": 2.0 - 0.35 * e,
                                 "ggap": 0.02, "config": config}) for e in epochs]
            zf.writestr(f"{d}/result.json", "\n".join(lines) + "\n")
            per_epoch = {}
            for e in epochs:
                if missing.get(n) == e:
                    continue
                torch.manual_seed(100 * n + e)
                m = TinyCNN()
                with torch.no_grad():
                    m.module_list[1].running_mean.normal_()
                    m.module_list[1].running_var.uniform_(0.5, 2)
                sd = m.state_dict()
                if nan_net == n and e == epochs[-1]:
                    sd["module_list.0.weight"][0, 0, 0, 0] = float("nan")
                buf = io.BytesIO()
                torch.save(sd, buf)
                zf.writestr(f"{d}/checkpoint_{e:06d}/checkpoints", buf.getvalue())
                opt = io.BytesIO()
                torch.save(torch.optim.Adam(m.parameters()).state_dict(), opt)
                zf.writestr(f"{d}/checkpoint_{e:06d}/optimizer", opt.getvalue())
                per_epoch[e] = sd
            saved.append(per_epoch)
    return saved
