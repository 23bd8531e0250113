"""NetConfig: everything needed to build one net of a zoo, for every architecture family."""
from __future__ import annotations

from dataclasses import asdict, dataclass

#: (channels, height, width, classes) of the image sources a net can be trained on by name
#: (zoo.generate.images loads them; an importer rebuilding a published net reads its input shape here).
IMAGE_SHAPES = {"digits": (1, 8, 8, 10), "cifar10": (3, 32, 32, 10), "cifar100": (3, 32, 32, 100),
                "svhn": (3, 32, 32, 10), "mnist": (1, 28, 28, 10), "fashion_mnist": (1, 28, 28, 10)}


@dataclass(frozen=True)
class WAsym:
    """W-Asymmetry: fixed random entries in every conv and linear weight.

    ``mode="filters"`` fixes ``n_fix`` whole input filters per output channel of a conv;
    ``mode="entries"`` fixes ``n_fix`` single entries per output channel. Linear layers fix
    ``n_fix_linear`` entries per row. Fixed values are ``kappa * N(0, 1)``.
    """

    n_fix: int = 8
    n_fix_linear: int = 8
    kappa: float = 2.0
    mode: str = "filters"


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to build one net of a zoo (same for every model of the zoo)."""

    depth: int = 8
    width: float = 1.0
    norm: str = "groupnorm"
    activation: str = "relu"
    in_channels: int = 3
    num_classes: int = 10
    wasym: WAsym | None = None
    figlu_scale: float = 1.0
    asym_seed: int = 0
    #: the architecture family, a key of :data:`zoo.nets.ARCHS` ("resnet", "smallcnn")
    arch: str = "resnet"
    #: smallcnn only: "valid" (upstream Keras default) or "same" (needed for 8x8 digits)
    padding: str = "valid"
    #: smallcnn only: average the input channels first (upstream's grayscale CIFAR-10 / SVHN)
    grayscale: bool = False

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def widths(self) -> tuple[int, int, int]:
        return tuple(max(1, int(round(c * self.width))) for c in (16, 32, 64))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.arch == "resnet":  # ResNet manifests and fingerprints stay as before smallcnn existed
            del d["arch"], d["padding"], d["grayscale"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        if d.get("wasym") is not None:
            d["wasym"] = WAsym(**d["wasym"])
        return cls(**d)
