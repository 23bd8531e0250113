"""What an architecture family tells the rest of metazoo, in one record.

A family (the CIFAR ResNets, the Small CNN Zoo's CNN, the next one) is one :class:`Family`
in :data:`zoo.nets.ARCHS`: how to build and validate a net, which per-model
hyper-parameters it adds to the trainer's, and what a group of its models must share.
Spec validation, planning, rebuild and training look the family up by ``net.arch``
instead of branching on its name; the group trainer of a family that is not the generic
ops walk is registered beside the trainers (:data:`zoo.generate.run.GROUP_TRAINERS`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple


class HParam(NamedTuple):
    """A per-model hyper-parameter a family adds: its type, the allowed values in words,
    a check, and the default of a spec that does not name it."""

    kind: str
    allowed: str
    check: Callable[[object], bool]
    default: object


@dataclass(frozen=True)
class Family:
    name: str
    #: one line for error messages: what the family is
    summary: str
    #: ``build(cfg, seed, hp) -> nn.Module``: trainable initialisation from ``seed``; ``hp`` the
    #: model's own hyper-parameters (those in :attr:`hparams`), if any
    build: Callable
    #: ``validate(cfg, prefix)``: raise SpecError naming the field of any bad option
    validate: Callable
    #: per-model hyper-parameters the family adds to the trainer's
    hparams: dict = field(default_factory=dict)
    #: the family's defaults for the trainer's own hyper-parameters
    hparam_defaults: dict = field(default_factory=dict)
    #: optimizers its trainer implements
    optimizers: tuple = ("adamw", "sgd")
    #: NetConfig fields only this family reads (a spec naming them for another family is refused)
    config_fields: tuple = ()
    #: hyper-parameters (besides the trainer's) all models of one group must share
    group_keys: tuple = ()
    #: the hyper-parameters :meth:`zoo.Zoo.rebuild` passes to ``build`` from the zoo table
    rebuild_hparams: tuple = ()
    #: ``check_input_size(cfg, (h, w))``: raise SpecError if the images are too small; None: any size
    check_input_size: Callable | None = None
    #: whether a finished model's slot in a group may be refilled with the next model
    refill: bool = True
    #: fixed group sizes ``(cpu, cuda)`` when the user gives none; None: measured per zoo
    group_size: tuple | None = None
