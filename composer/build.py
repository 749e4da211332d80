"""``build_model``: spec in, torch module out."""

from __future__ import annotations

import torch
from torch import nn

from archcomposer.model import ComposedModel
from archcomposer.specfile import SpecLike, load_spec


def build_model(spec: SpecLike, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                seed: int | None = None) -> ComposedModel:
    """Build the model a spec describes.

    ``spec`` is a spec object, a dict, a path to a YAML file or the name of a shipped spec.
    ``device="meta"`` allocates nothing (any size builds instantly). The same ``seed`` gives the
    same weights; without one, weights come from torch's global generator."""
    spec = load_spec(spec)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device(device):
        model = ComposedModel(spec)
    if device.type != "meta":
        generator = torch.Generator(device=device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        init_weights(model, std=spec.initializer_range, generator=generator)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


@torch.no_grad()
def init_weights(model: nn.Module, *, std: float, generator: torch.Generator | None = None) -> None:
    """Normal(0, std) for projections and embeddings, zero biases, unit norm scales. A block with
    parameters of its own kind (a bias table, say) initialises them in an ``init_weights(std,
    generator)`` method, which is called instead."""
    for module in model.modules():
        if hasattr(module, "init_weights") and module is not model:
            module.init_weights(std, generator)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std, generator=generator)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() == 1:
            module.weight.fill_(1.0)  # norms
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
