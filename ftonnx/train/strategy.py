"""Finetuning strategies on top of the freeze: what the training graph adds to the user's, planned once.

- Backbone rate (`backbone_lr_mult` k, PaddleClas's fourth strategy): trainable backbone parameters
  (those not listed as head parameters) train as w = w0 + s * delta (`ftonnx.graph.reparam`), with
  s = k under AdamW, whose step ignores a gradient's scale, and s = sqrt(k) under SGD, whose step on w
  is s^2 * lr * grad; either way they move k times as far per step as at the head's rate.
- L2-SP (`l2sp` alpha), DELTA (`delta` alpha), label smoothing and class weights make the loss a
  graph of its own (`ftonnx.graph.objective`); without them ORT's built-in cross-entropy stays.
- L2-SP and DELTA need w0, so any of the three backbone strategies reparametrises every trainable
  backbone parameter (s = 1 when k = 1). AdamW's decoupled weight decay then pulls those parameters
  towards w0, the head's towards zero: L2-SP's "plain decay on the new head".
The export never sees any of it: training hands back w0 + s * delta under the parameter's own name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from ftonnx import metadata
from ftonnx.graph.objective import Objective, add_objective
from ftonnx.graph.reparam import reparametrise
from ftonnx.graph.trainable import TrainableGraph
from ftonnx.train.config import TrainConfig
from ftonnx.train.delta import delta_layers


@dataclass
class Strategy:
    """Which parameters train as w0 + scale * delta, the objective when it is not plain cross-entropy,
    and DELTA's layers (their channel attention goes into `objective.attention` before the build)."""

    scale: float = 1.0
    reparametrised: list[str] = field(default_factory=list)
    objective: Objective | None = None
    layers: list[str] = field(default_factory=list)


def plan_strategy(model: onnx.ModelProto, config: TrainConfig, trainable: list[str]) -> Strategy:
    """The strategy `config` asks for on `model` when parameters `trainable` train (checked, no data read)."""
    head = set(metadata.read(model).head_params)
    backbone = [p for p in trainable if p not in head]
    on_backbone = bool(backbone) and (config.backbone_lr_mult != 1 or config.l2sp > 0 or config.delta > 0)
    k = config.backbone_lr_mult
    layers = delta_layers(model, config.delta_layers, backbone) if backbone and config.delta > 0 else []
    regularised = bool(backbone) and (config.l2sp > 0 or config.delta > 0)
    objective = None
    if regularised or config.label_smoothing > 0 or config.class_weights is not None:
        objective = Objective(class_weights=config.class_weights, label_smoothing=config.label_smoothing,
                              l2sp=config.l2sp if backbone else 0.0, delta=config.delta if layers else 0.0)
    return Strategy(scale=(k if config.optimizer == "adamw" else math.sqrt(k)) if on_backbone else 1.0,
                    reparametrised=backbone if on_backbone else [], objective=objective, layers=layers)


def idle_options(config: TrainConfig, strategy: Strategy) -> list[str]:
    """The backbone options given that act on nothing, because no backbone parameter trains."""
    given = [name for name, on in (("--backbone-lr-mult", config.backbone_lr_mult != 1), ("--l2sp", config.l2sp > 0),
                                   ("--delta", config.delta > 0)) if on]
    return given if given and not strategy.reparametrised else []


def training_graph(forward: TrainableGraph, trainable: list[str],
                   strategy: Strategy) -> tuple[onnx.ModelProto, list[str], dict[str, dict], bool]:
    """(the graph ORT trains, the names that take gradients, {parameter: {"delta", "scale"}}, whether the
    graph computes its own `loss`) for a forward graph made trainable."""
    reparam = reparametrise(forward.model, strategy.reparametrised, strategy.scale)
    model = reparam.model
    if strategy.objective is not None:
        model = add_objective(model, strategy.objective, reparam, [m["input"] for m in forward.masks])
    requires_grad = [reparam.deltas.get(p, p) for p in trainable]
    folds = {p: {"delta": d, "scale": strategy.scale} for p, d in reparam.deltas.items()}
    return model, requires_grad, folds, strategy.objective is not None

