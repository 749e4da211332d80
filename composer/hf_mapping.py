"""Helpers for family plugins: the parts of the Hugging Face translation that families share
(activation names, task-head config fields and tensors, which each head kind describes itself,
fused or split projections, the Llama checkpoint layout, ``require`` and the shared structure
checks for export errors)."""

from __future__ import annotations

from typing import Any

import torch

from archcomposer.errors import CheckpointError
from archcomposer.family import TensorMap
from archcomposer.registry import get_registry
from archcomposer.spec import HeadSpec, ModelSpecBase


def require(family: str, field: str, value: Any, expected: Any) -> None:
    """Raise the export error for a spec field that ``family``'s Hugging Face model cannot express."""
    if value != expected:
        raise CheckpointError(f"{field} = {value!r} has no equivalent in Hugging Face {family}, which needs "
                              f"{expected!r}")


#: transformers' ``hidden_act`` names <-> our activations.
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def activation_from_hf(config: dict[str, Any], key: str = "hidden_act", default: str = "silu") -> str:
    name = config.get(key) or default
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"config.json {key} = {name!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _head_class(kind: str) -> type[HeadSpec]:
    """The registered spec class of head ``kind``."""
    return get_registry().kinds["head"][kind][0]


def heads_from_hf(config: dict[str, Any], kind: str | None, **fields: Any) -> list[dict[str, Any]]:
    """The ``heads`` of a spec for the head kind of a Hugging Face architecture, read as
    transformers' task heads read the config (each head kind's ``from_hf_config``: for the
    built-in ones ``num_labels``/``id2label``, ``problem_type``, ``classifier_dropout``).
    ``fields`` are head fields the family fixes (CPM-Ant's ``shift_labels=False``), set on the
    head where its kind has them."""
    if kind is None:
        return []
    cls = _head_class(kind)
    return [{"kind": kind, **cls.from_hf_config(config),
             **{name: value for name, value in fields.items() if name in cls.model_fields}}]


def hf_head_config(spec: ModelSpecBase, family: str, **fields: Any) -> dict[str, Any]:
    """The config.json fields for the spec's head (its ``hf_config``), after checking it
    matches transformers' task head: its ``bias`` is the kind's ``hf_bias``, and each of
    ``fields`` (the head fields the family's transformers model fixes; default
    ``shift_labels=True``, as transformers shifts LM labels) has that value, where the head's
    kind has the field."""
    if not spec.heads:
        return {}
    head = spec.heads[0]
    names = type(head).model_fields
    if "bias" in names:
        require(family, "heads[0].bias", head.bias, head.hf_bias)
    for field, expected in {"shift_labels": True, **fields}.items():
        if field in names:
            require(family, f"heads[0].{field}", getattr(head, field), expected)
    return head.hf_config()


def fused_or_split(ours: str, fused: bool, param: str, theirs: dict[str, str], sizes: list[int]) -> list[TensorMap]:
    """Tensor maps for our projection ``ours`` (``layers.0.attention.qkv``) from separate tensors
    of theirs (part name -> their tensor name): a ``FusedProjection`` (rows of the parts, of
    ``sizes``, concatenated in ``theirs`` order) or a ``SplitProjection`` with those part names."""
    if not fused:
        return [TensorMap(f"{ours}.{part}.{param}", name) for part, name in theirs.items()]
    return [TensorMap(f"{ours}.proj.{param}", tuple(theirs.values()), to_ours=lambda *parts: torch.cat(parts),
                      to_theirs=lambda t: tuple(t.split(sizes)))]


def head_tensors(spec: ModelSpecBase, names: dict[str, dict[str, str]]) -> list[TensorMap]:
    """Tensor maps for the spec's heads, from ``names``: head kind -> {our tensor under
    ``heads.<kind>.`` -> theirs}. A bias is mapped only where the head has one, and a head tied
    to the embedding (``tied_to_embedding``) maps nothing (the embedding matrix is the head)."""
    maps = []
    for head in spec.heads:
        if head.tied_to_embedding(spec):
            continue
        maps += [TensorMap(f"heads.{head.kind}.{ours}", theirs) for ours, theirs in names[head.kind].items()
                 if ours.endswith("weight") or getattr(head, "bias", False)]
    return maps


def llama_layout_tensors(spec: ModelSpecBase, base: str) -> list[TensorMap]:
    """Tensor maps for the trunk of a checkpoint in the Llama layout that many Hugging Face
    families share (Seed-OSS, Llama, Qwen2, Mistral): ``{base}embed_tokens``, ``{base}norm`` and per
    layer ``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm`` and
    ``mlp.{gate,up,down}_proj``, each with a bias where the spec has one. ``base`` is the
    base-model prefix (``model.``, or ``""`` for the bare model)."""
    a, m = spec.attention, spec.mlp
    qkv_sizes = [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim]
    params = ("weight", "bias")
    maps = [TensorMap("embedding.tokens.weight", f"{base}embed_tokens.weight"),
            TensorMap("final_norm.weight", f"{base}norm.weight")]
    for i in range(spec.num_layers):
        ours, theirs = f"layers.{i}", f"{base}layers.{i}"
        maps += [TensorMap(f"{ours}.attn_norm.weight", f"{theirs}.input_layernorm.weight"),
                 TensorMap(f"{ours}.mlp_norm.weight", f"{theirs}.post_attention_layernorm.weight")]
        for p in params[: 1 + a.qkv_bias]:
            maps += fused_or_split(f"{ours}.attention.qkv", a.fused_qkv, p,
                                   {n: f"{theirs}.self_attn.{n}_proj.{p}" for n in "qkv"}, qkv_sizes)
        maps += [TensorMap(f"{ours}.attention.out.{p}", f"{theirs}.self_attn.o_proj.{p}")
                 for p in params[: 1 + a.out_bias]]
        for p in params[: 1 + m.bias]:
            maps += fused_or_split(f"{ours}.mlp.gate_up", m.fused, p,
                                   {n: f"{theirs}.mlp.{n}_proj.{p}" for n in ("gate", "up")},
                                   [m.intermediate_size] * 2)
            maps.append(TensorMap(f"{ours}.mlp.down.{p}", f"{theirs}.mlp.down_proj.{p}"))
    return maps


def require_same_layers(spec: ModelSpecBase, family: str) -> None:
    """Refuse per-layer differences (``layers``): no Hugging Face family here expresses them."""
    if spec.layers:
        raise CheckpointError(f"layers: per-layer differences have no equivalent in Hugging Face {family}, "
                              f"whose layers are all alike")


def require_plain_trunk(spec: ModelSpecBase, family: str, *, embedding_norm: bool = False) -> None:
    """Check the parts of the spec that Hugging Face families of the usual decoder share: a
    ``tokens`` embedding, unscaled and without learned positions (normed only with
    ``embedding_norm``), pre-norm layers with a final norm, and no per-layer differences. Each
    family checks ``wiring.residual_from_norm`` and ``wiring.dropout`` itself."""
    e = spec.embedding
    require(family, "embedding.kind", e.kind, "tokens")
    require(family, "embedding.norm", e.norm, embedding_norm)
    require(family, "embedding.scale", e.scale, 1.0)
    require(family, "embedding.learned_positions", e.learned_positions, None)
    require(family, "wiring.kind", spec.wiring.kind, "pre_norm")
    require(family, "final_norm", spec.final_norm, True)
    require_same_layers(spec, family)


def llama_layout_config(spec: ModelSpecBase, family: str) -> dict[str, Any]:
    """The ``config.json`` fields that families in the Llama layout (see ``llama_layout_tensors``)
    share, after checking the spec has that layout's structure: RMSNorm, a plain token embedding
    (no norm, scale or learned positions), causal GQA without a sliding window, a gated MLP,
    pre-norm layers with residuals from the layer input, a final norm, and every layer alike. The
    family adds its ``model_type``, position, bias and dropout (``wiring.dropout``) fields and the
    head fields."""
    a = spec.attention
    require(family, "norm.kind", spec.norm.kind, "rmsnorm")
    require_plain_trunk(spec, family)
    require(family, "wiring.residual_from_norm", spec.wiring.residual_from_norm, False)
    require(family, "attention.kind", a.kind, "gqa")
    require(family, "attention.sliding_window", a.sliding_window, None)
    require(family, "mlp.kind", spec.mlp.kind, "gated")
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.mlp.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.num_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": ACTIVATIONS_TO_HF[spec.mlp.activation],
        "max_position_embeddings": spec.max_positions,
        "initializer_range": spec.initializer_range,
        "rms_norm_eps": spec.norm.eps,
        "pad_token_id": spec.pad_token_id,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "tie_word_embeddings": spec.embedding.tied,
    }
