"""Model outputs with the contract of transformers' ``ModelOutput``.

A ``ModelOutput`` is an ordered dict of its non-None fields that is also a dataclass: fields are
reachable as attributes (``out.logits``), by key (``out["logits"]``) and by position or slice
(``out[0]``, ``out[:2]``), and the key and position forms skip fields that are None.
``to_tuple()`` gives the non-None fields in order; ``return_dict=False`` returns exactly that.
The mutating dict methods (``del``, ``pop``, ``update``, ``setdefault``) are refused.

Every output class is a pytree node (as transformers registers its own), flattened to its non-None
fields: ``torch.compile`` and ``torch.export`` return the class itself, and
``torch.utils._pytree.tree_flatten`` (DDP's ``static_graph``, ``tree_map``) sees its tensors."""

from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.utils._pytree as pytree


class ModelOutput(OrderedDict):
    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        pytree.register_pytree_node(cls, _flatten, partial(_unflatten, output_type=cls),
                                    serialized_type_name=f"{cls.__module__}.{cls.__name__}",
                                    flatten_with_keys_fn=pytree._dict_flatten_with_keys)

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value

    def __delitem__(self, *args, **kwargs):
        raise Exception(f"You cannot use ``__delitem__`` on a {type(self).__name__} instance.")

    def setdefault(self, *args, **kwargs):
        raise Exception(f"You cannot use ``setdefault`` on a {type(self).__name__} instance.")

    def pop(self, *args, **kwargs):
        raise Exception(f"You cannot use ``pop`` on a {type(self).__name__} instance.")

    def update(self, *args, **kwargs):
        raise Exception(f"You cannot use ``update`` on a {type(self).__name__} instance.")

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __setattr__(self, name, value):
        if name in {f.name for f in fields(self)} and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        callable_, _args, *rest = super().__reduce__()
        return callable_, tuple(getattr(self, f.name) for f in fields(self)), *rest

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in field order."""
        return tuple(self[k] for k in self.keys())


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


def _unflatten(values, context: list[str], output_type: type[ModelOutput]) -> ModelOutput:
    return output_type(**dict(zip(context, values)))


Tensor = torch.Tensor
Tensors = tuple[torch.Tensor, ...]


@dataclass(eq=False)
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass(eq=False)
class CausalLMOutputWithPast(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass(eq=False)
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass(eq=False)
class TokenClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass(eq=False)
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Tensor | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass(eq=False)
class MoeModelOutputWithPast(ModelOutput):
    last_hidden_state: Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    router_logits: Tensors | None = None


@dataclass(eq=False)
class MoeCausalLMOutputWithPast(ModelOutput):
    loss: Tensor | None = None
    aux_loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    router_logits: Tensors | None = None


#: What a model with mixture-of-experts layers returns in place of the dense output class (as
#: transformers' MoE families: their other heads return the dense classes).
MOE_OUTPUTS = {BaseModelOutputWithPast: MoeModelOutputWithPast, CausalLMOutputWithPast: MoeCausalLMOutputWithPast}
