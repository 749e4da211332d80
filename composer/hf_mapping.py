"""Helpers for family plugins: the parts of the Hugging Face translation that families share
(activation names, task-head config fields and tensors, fused or split projections, the Llama
checkpoint layout, ``require`` for export errors)."""

from __future__ import annotations

from typing import Any

import torch

from archcomposer.errors import CheckpointError
from archcomposer.family import TensorMap
from archcomposer.spec import ModelSpecBase


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


def heads_from_hf(config: dict[str, Any], kind: str | None, **causal_lm: Any) -> list[dict[str, Any]]:
    """The ``heads`` of a spec for the head kind of a Hugging Face architecture, read as
    transformers' task heads read the config (``num_labels``/``id2label``, ``problem_type``,
    ``classifier_dropout``); ``causal_lm`` adds fields to a causal-LM head."""
    if kind is None:
        return []
    if kind == "causal_lm":
        return [{"kind": kind, **causal_lm}]
    if kind == "question_answering":
        return [{"kind": kind}]
    num_labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)
    if kind == "sequence_classification":
        return [{"kind": kind, "num_labels": num_labels, "problem_type": config.get("problem_type")}]
    dropout = next((config[k] for k in ("classifier_dropout", "hidden_dropout") if config.get(k) is not None), 0.1)
    return [{"kind": kind, "num_labels": num_labels, "dropout": dropout}]


def hf_head_config(spec: ModelSpecBase, family: str, **causal_lm: Any) -> dict[str, Any]:
    """The config.json fields for the spec's head, checking it matches transformers' task heads
    (no bias on the LM and sequence-classification heads, a bias on the others); ``causal_lm``
    gives the causal-LM head fields the family needs (default: ``shift_labels=True``)."""
    if not spec.heads:
        return {}
    head = spec.heads[0]
    biases = {"causal_lm": False, "sequence_classification": False, "token_classification": True,
              "question_answering": True}
    require(family, "heads[0].bias", head.bias, biases[head.kind])
    if head.kind == "causal_lm":
        for field, expected in {"shift_labels": True, **causal_lm}.items():
            require(family, f"heads[0].{field}", getattr(head, field), expected)
        return {}
    if head.kind == "question_answering":
        return {}
    labels = {"id2label": {str(i): f"LABEL_{i}" for i in range(head.num_labels)},
              "label2id": {f"LABEL_{i}": i for i in range(head.num_labels)}}
    if head.kind == "sequence_classification":
        return {**labels, "problem_type": head.problem_type}
    return {**labels, "classifier_dropout": head.dropout}


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
    ``heads.<kind>.`` -> theirs}. A bias is mapped only where the head has one, and a causal-LM
    head tied to the embedding maps nothing (the embedding matrix is the head)."""
    maps = []
    for head in spec.heads:
        if head.kind == "causal_lm" and spec.embedding.tied:
            continue
        maps += [TensorMap(f"heads.{head.kind}.{ours}", theirs) for ours, theirs in names[head.kind].items()
                 if ours.endswith("weight") or head.bias]
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


def llama_layout_config(spec: ModelSpecBase, family: str) -> dict[str, Any]:
    """The ``config.json`` fields that families in the Llama layout (see ``llama_layout_tensors``)
    share, after checking the spec has that layout's structure: RMSNorm, no embedding norm,
    segments or prompt, causal GQA, a gated MLP and residuals from the layer input. The family adds
    its ``model_type``, position, bias and dropout fields and the head fields."""
    a = spec.attention
    require(family, "norm.kind", spec.norm.kind, "rmsnorm")
    require(family, "embedding.norm", spec.embedding.norm, False)
    require(family, "embedding.segments", spec.embedding.segments, None)
    require(family, "embedding.prompt", spec.embedding.prompt, None)
    require(family, "attention.kind", a.kind, "gqa")
    require(family, "attention.mask", a.mask, "causal")
    require(family, "mlp.kind", spec.mlp.kind, "gated")
    require(family, "residual.from_norm", spec.residual.from_norm, False)
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
