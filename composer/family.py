"""A model family: the knowledge that connects a published architecture to specs (for
checkpoint import/export, its Hugging Face config and weight names).

A family that reads and writes Hugging Face checkpoints sets the ``hf_*`` fields below and nothing
else; ``archcomposer.checkpoint`` does the loading and saving (with the error that lists
missing/unexpected/mis-shaped tensors) and ``archcomposer.storage`` the file handling (safetensors,
sharding, memory mapping) for every family alike. Most families declare their translation as data
(``archcomposer.hf_table``: config rows, tensor rows, heads) and get these fields from
``hf_family``; to add one, copy the nearest built-in plugin module (``archcomposer.plugins.seed_oss``
is the plainest). A family the tables cannot express writes the three functions itself
(``archcomposer.plugins.cpmant``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from archcomposer.spec import ModelSpecBase

#: ``spec_from_hf_config(config, architecture) -> spec dict``: the spec (as the dict a YAML file
#: would hold) that computes what ``architecture`` does with this ``config.json``. ``name`` and
#: ``family`` may be left out (the loader fills them). Raise ``archcomposer.CheckpointError`` naming
#: the config key for a setting the spec schema cannot express.
SpecFromHFConfig = Callable[[dict[str, Any], str], dict[str, Any]]

#: ``hf_config_from_spec(spec, architecture) -> config dict``: the ``config.json`` fields that make
#: ``architecture`` compute what ``spec`` does (``architectures`` and ``model_type`` may be left
#: out). Raise ``archcomposer.CheckpointError`` naming the spec field (``position.kind``) that has no
#: equivalent in this family.
HFConfigFromSpec = Callable[["ModelSpecBase", str], dict[str, Any]]

#: ``hf_tensors(spec, architecture) -> [TensorMap, ...]``: where each of our tensors lives in a
#: checkpoint of ``architecture``. Weights tied to another (a tied LM head) are left out.
HFTensors = Callable[["ModelSpecBase", str], list["TensorMap"]]


@dataclass(frozen=True)
class TensorMap:
    """How one tensor of ours is stored in a Hugging Face checkpoint.

    ours: our parameter name (``layers.0.attention.qkv.proj.weight``).
    theirs: the checkpoint tensor name(s) it is made from, in order (usually one).
    to_ours: ``(*their_tensors) -> our_tensor``; None: the single tensor as it is.
    to_theirs: ``our_tensor -> tuple of their tensors`` (in ``theirs`` order); None: as it is.

    The two transforms must be inverse (BLOOM's per-head interleaved QKV is a permutation each
    way); they receive and return CPU tensors and must not modify their inputs in place."""

    ours: str
    theirs: tuple[str, ...]
    to_ours: Callable[..., torch.Tensor] | None = None
    to_theirs: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    def __post_init__(self):
        if isinstance(self.theirs, str):
            object.__setattr__(self, "theirs", (self.theirs,))
        if len(self.theirs) != 1 and (self.to_ours is None or self.to_theirs is None):
            raise ValueError(f"TensorMap {self.ours!r} <- {self.theirs}: several source tensors need both "
                             f"to_ours and to_theirs")


@dataclass(frozen=True, eq=False)
class Family:
    """What a family plugin registers.

    name: the value of a spec's ``family`` field.
    description: one line for ``archcomposer plugins``.
    hf_model_types: ``model_type`` values of Hugging Face ``config.json`` this family reads; the
        first is the one it writes.
    hf_architectures: each Hugging Face architecture (a ``config.json`` ``architectures`` entry)
        this family reads and writes, with the head kind it corresponds to (None: the bare model).
    spec_from_hf_config, hf_config_from_spec, hf_tensors: see ``SpecFromHFConfig``,
        ``HFConfigFromSpec`` and ``HFTensors`` above. Set all three or none.
    hf_ignored_tensors: regular expressions (``re.search``) of checkpoint tensors that are not
        weights and are skipped on load: buffers older transformers saved (GPT-2's causal-mask
        ``attn.bias``, RoPE's ``rotary_emb.inv_freq``), as transformers'
        ``_keys_to_ignore_on_load_unexpected``.
    hf_config_keys: spec field path (``attention.num_heads``) -> the ``config.json`` keys it is read
        from (the first is the one written), where one key holds one field. Optional; the loader
        uses it to check the layer count before translating, to name the config key of an invalid
        field, and to say which size keys a config lacked (tables fill it from their ``Key`` rows)."""

    name: str
    description: str = ""
    hf_model_types: tuple[str, ...] = ()
    hf_architectures: Mapping[str, str | None] = field(default_factory=dict)
    spec_from_hf_config: SpecFromHFConfig | None = None
    hf_config_from_spec: HFConfigFromSpec | None = None
    hf_tensors: HFTensors | None = None
    hf_ignored_tensors: tuple[str, ...] = ()
    hf_config_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        hooks = {"spec_from_hf_config": self.spec_from_hf_config, "hf_config_from_spec": self.hf_config_from_spec,
                 "hf_tensors": self.hf_tensors}
        missing = [n for n, fn in hooks.items() if fn is None]
        if missing and len(missing) != len(hooks):
            raise ValueError(f"family {self.name!r}: set all of {list(hooks)} or none; missing {missing}")
        if not missing and not (self.hf_model_types and self.hf_architectures):
            raise ValueError(f"family {self.name!r} converts Hugging Face checkpoints, so it needs "
                             f"hf_model_types and hf_architectures")

    @property
    def converts_hf(self) -> bool:
        """Whether this family reads and writes Hugging Face checkpoints."""
        return self.hf_tensors is not None

    def hf_architecture_for(self, head: str | None) -> str:
        """The architecture with this head kind (None: the bare model)."""
        for architecture, kind in self.hf_architectures.items():
            if kind == head:
                return architecture
        raise KeyError(head)
