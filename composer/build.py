"""``build_model``: spec in, torch module out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archcomposer.model import ComposedModel
from archcomposer.spec import ModelSpecBase
from archcomposer.specfile import SpecLike, load_spec


def build_model(spec: SpecLike, /, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                seed: int | None = None, **overrides: Any) -> ComposedModel:
    """Build the model a spec describes.

    ``spec`` is a spec object, a dict, a path to a YAML file or the name of a shipped spec; any
    other keyword is a spec field merged over it, as in an extending spec file
    (``build_model("glm-4-9b", num_layers=2, position={"kind": "alibi"})``).
    ``device="meta"`` allocates nothing (any size builds instantly). The same ``seed`` gives the
    same weights; without one, weights come from torch's global generator."""
    spec = load_spec(spec, **overrides)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = skeleton(spec)
    if device.type != "meta":
        tied = tied_parameters(model)
        model.to_empty(device=device)
        retie(model, tied)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        init_weights(model, std=spec.initializer_range, generator=generator)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def skeleton(spec: ModelSpecBase) -> ComposedModel:
    """The model with every parameter on the meta device: nothing allocated or initialised.
    ``build_model`` materialises and initialises it; ``from_pretrained`` assigns a checkpoint's
    tensors to it. So blocks hold no tensor state besides parameters: tables are computed in
    ``forward`` (as ``Rotary`` and ``ALiBi`` do) or are parameters."""
    with torch.device("meta"):
        return ComposedModel(spec)


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """Tied parameters: each second and later name of a shared parameter -> the first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Share parameters again after they were replaced (``to_empty``, ``load_state_dict(assign=True)``)."""
    for alias, canonical in aliases.items():
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(canonical))


@torch.no_grad()
def init_weights(model: nn.Module, *, std: float, generator: torch.Generator | None = None) -> None:
    """Normal(0, std) for projections and embeddings, zero biases, unit norm scales. A block with
    parameters of another kind (a bias table, a scalar) initialises them itself, in an
    ``init_weights(std, generator)`` method or PyTorch's ``reset_parameters()``; a parameter that
    nothing initialises is an error, since the model is built on the meta device and it would
    hold whatever memory it was given."""
    for name, module in model.named_modules():
        if module is not model:
            init_module(module, std=std, generator=generator, name=name)


@torch.no_grad()
def init_module(module: nn.Module, *, std: float, generator: torch.Generator | None = None, name: str = "") -> None:
    """Initialise ``module``'s own parameters (not its children's), as ``init_weights`` does; a
    block's ``init_weights`` also sets its checkpointed buffers (DeepSeek's router score bias)."""
    if not module._parameters and not hasattr(module, "init_weights"):
        return
    if hasattr(module, "init_weights"):
        module.init_weights(std, generator)
    elif isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(0.0, std, generator=generator)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    elif isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() == 1:
        module.weight.fill_(1.0)  # norms
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        names = [f"{name}.{p}" for p in module._parameters]
        raise TypeError(f"{type(module).__name__} ({name}) has parameters {names} that nothing initialises: "
                        f"give the block an init_weights(std, generator) or reset_parameters() method")
