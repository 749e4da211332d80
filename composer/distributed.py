"""Scale out: FSDP2 sharding, a tensor-parallel plan read from the spec, and sharded checkpoints.

Every rank builds the same model (``build_model(spec, seed=...)`` or ``from_pretrained``), then
calls ``apply_tp`` and/or ``apply_fsdp``. ``model.save_pretrained`` on the sharded model gathers
the full tensors (every rank must call it; rank 0 writes); ``save_sharded``/``load_sharded``
write and read each rank's shards with ``torch.distributed.checkpoint``.

The tensor-parallel plan follows Megatron's: q/k/v and gate/up column-wise, the attention output
and MLP down projection row-wise (one all-reduce each), so each rank holds ``H / tp`` query heads
and ``Hkv / tp`` key/value heads (or, with fewer key/value heads than ranks, the one its queries
read); embeddings, norms and heads stay replicated. Latent attention splits its per-head
projections and keeps the latent whole. Mixtures of experts are refused (FSDP shards them). A
fused projection (``FusedProjection``: q/k/v or gate/up in one weight) is re-laid out so that
each rank's rows are its slice of every part, and its state dict still shows the original layout.
A position bias [B, H, Q, K] is sliced to the rank's heads; a learned one (CPM-Ant's bucket bias)
stays replicated and its gradient is summed over the ranks, as each rank only uses its heads'
columns. Tensor parallelism leaves sharded DTensors beside plain tensors: step optimizers and clip
gradients inside ``torch.distributed.tensor.experimental.implicit_replication()``."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.experimental import implicit_replication
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from archcomposer.blocks.attention import LowRank
from archcomposer.blocks.projection import FusedProjection, SplitProjection
from archcomposer.errors import CheckpointError, InputError, SpecError

__all__ = ["apply_fsdp", "apply_tp", "default_mesh", "load_sharded", "save_sharded"]

#: Position kinds whose effect on one head depends on that head alone (rotations, per-head biases).
TP_POSITIONS = ("none", "rope", "partial_rope", "alibi", "bucket_bias")


def default_mesh(model: nn.Module) -> DeviceMesh:
    """A 1-D mesh over every rank of the default process group, on the model's device type."""
    if not dist.is_available() or not dist.is_initialized():
        raise InputError("mesh=None: archcomposer.distributed needs an initialised process group: launch with "
                         "torchrun and call torch.distributed.init_process_group() (e.g. backend='gloo' on CPU)")
    device_type = next(model.parameters()).device.type
    return init_device_mesh(device_type, (dist.get_world_size(),))


# ---------------------------------------------------------------------------------------------
# FSDP2


def apply_fsdp(model: nn.Module, mesh: DeviceMesh | None = None, *, mixed_precision: MixedPrecisionPolicy | None = None,
               reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model``'s parameters over ``mesh`` (default: every rank) with FSDP2: each layer is
    one ``fully_shard`` unit (its parameters gathered for its forward and backward only), then the
    root holds the rest (embeddings, position tables, final norm, heads). ``mixed_precision``
    (``MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)``) computes in
    ``param_dtype`` and reduces gradients in ``reduce_dtype``; the sharded parameters keep their
    dtype. Gradients are averaged over the ranks, so with equal per-rank batches a step equals one
    process's step on the whole batch. Returns ``model``, changed in place."""
    mesh = mesh if mesh is not None else default_mesh(model)
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "mp_policy": mixed_precision if mixed_precision is not None else MixedPrecisionPolicy()}
    for layer in model.layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


# ---------------------------------------------------------------------------------------------
# tensor parallel


def apply_tp(model: nn.Module, mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard ``model``'s attention heads and MLP width over ``mesh`` (default: every rank), from
    its spec. Every rank must hold the same weights (the same seed, or the same checkpoint): the
    split ones are taken from rank 0, the others used as each rank holds them. Raises
    ``SpecError`` naming the field when the spec cannot be split: head counts or the MLP width
    not divisible by the mesh size, an MLP kind other than ``gated``/``plain`` (mixtures of
    experts are not split: shard them with FSDP), a per-head or whole-projection q/k norm, or a
    position kind outside ``TP_POSITIONS``. Returns ``model``, changed in place."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise InputError("apply_tp: this model is already sharded (apply_tp or apply_fsdp was called on it); "
                         "apply tensor parallelism once, before FSDP")
    mesh = mesh if mesh is not None else default_mesh(model)
    tp, rank = mesh.size(), mesh.get_local_rank()
    spec = model.spec
    for i, layer_spec in enumerate(spec.layer_specs):
        _check_tp_layer(layer_spec, i, tp)
    for layer, layer_spec in zip(model.layers, spec.layer_specs):
        if layer_spec.attention.kind == "mla":
            _shard_latent_attention(layer.attention, mesh)
        else:
            _shard_attention(layer.attention, mesh)
        _shard_mlp(layer.mlp, layer_spec.mlp.kind, mesh)
    group = mesh.get_group()
    for j, position in enumerate(model.positions):
        heads = spec.layer_specs[model.position_of.index(j)].attention.num_heads
        position.register_forward_hook(_bias_slicer(heads, tp, rank))
        for param in position.parameters():  # used on this rank's heads only: sum the ranks' gradients
            _sum_gradient_over(param, group)
    return model


def _check_tp_layer(layer_spec, i: int, tp: int) -> None:
    where = f"layer {i}"
    attn, mlp, position = layer_spec.attention, layer_spec.mlp, layer_spec.position
    if attn.kind not in ("gqa", "mla"):
        raise SpecError(f"apply_tp: {where}: attention.kind {attn.kind!r} is not split by tensor parallelism; "
                        f"only 'gqa' and 'mla' are (shard it with apply_fsdp instead)")
    if attn.kind == "mla" and attn.num_heads % tp:
        raise SpecError(f"apply_tp: {where}: attention.num_heads ({attn.num_heads}) must be divisible by the "
                        f"tensor-parallel size ({tp})")
    if attn.kind == "gqa" and (attn.num_heads % tp or (attn.num_kv_heads % tp and tp % attn.num_kv_heads)):
        raise SpecError(f"apply_tp: {where}: attention.num_heads ({attn.num_heads}) must be divisible by the "
                        f"tensor-parallel size ({tp}), and attention.num_kv_heads ({attn.num_kv_heads}) divisible "
                        f"by it or divide it (then each key/value head is replicated on {tp} / num_kv_heads ranks)")
    if getattr(attn, "qk_norm", None) is not None and attn.qk_norm.scope != "head":
        raise SpecError(f"apply_tp: {where}: attention.qk_norm.scope {attn.qk_norm.scope!r} normalises across heads "
                        f"or holds a weight per head; only scope 'head' is split by tensor parallelism")
    if mlp.kind not in ("gated", "plain"):
        raise SpecError(f"apply_tp: {where}: mlp.kind {mlp.kind!r} is not split by tensor parallelism; only "
                        f"'gated' and 'plain' are (shard it with apply_fsdp instead)")
    if mlp.intermediate_size % tp:
        raise SpecError(f"apply_tp: {where}: mlp.intermediate_size ({mlp.intermediate_size}) must be divisible by "
                        f"the tensor-parallel size ({tp})")
    if position.kind not in TP_POSITIONS:
        raise SpecError(f"apply_tp: {where}: position.kind {position.kind!r} is not known to act per head; "
                        f"tensor parallelism splits {list(TP_POSITIONS)}")


def _shard_attention(attn: nn.Module, mesh: DeviceMesh) -> None:
    """q/k/v column-wise, the output row-wise; the block's head counts become this rank's. With
    fewer key/value heads than ranks (MQA), q/k/v stay replicated and each rank keeps its query
    heads and the key/value head they attend to."""
    tp = mesh.size()
    if attn.num_kv_heads % tp:
        _replicate_qkv(attn, mesh)
    else:
        _shard_columns(attn.qkv, mesh)
        attn.num_kv_heads //= tp
    parallelize_module(attn.out, mesh, RowwiseParallel())
    attn.num_heads //= tp
    for norm in (attn.q_norm, attn.k_norm):  # scope 'head': one weight [Dh] that every head uses
        for param in norm.parameters():
            _sum_gradient_over(param, mesh.get_group())


def _shard_latent_attention(attn: nn.Module, mesh: DeviceMesh) -> None:
    """Multi-head latent attention: the per-head projections (queries, or their up-projection
    after a bottleneck, and ``kv_up``) column-wise, the output row-wise; the latent and the shared
    rotary key are computed whole on every rank. The column-wise projections sum their input's
    gradient over the ranks; the rotary key, which each rank's heads read directly, needs its own."""
    tp, group = mesh.size(), mesh.get_group()
    parallelize_module(attn.q.up if isinstance(attn.q, LowRank) else attn.q, mesh, ColwiseParallel())
    parallelize_module(attn.kv_up, mesh, ColwiseParallel())
    parallelize_module(attn.out, mesh, RowwiseParallel())
    rotary = slice(attn.kv_lora_rank, None)  # kv_down's output: the latent [R], then the rotary key [Dr]

    def rotary_key_gradient_summed(module, args, latent_and_key):
        return _SumGradient.apply(latent_and_key, group, rotary)

    attn.kv_down.register_forward_hook(rotary_key_gradient_summed)
    attn.num_heads //= tp


def _replicate_qkv(attn: nn.Module, mesh: DeviceMesh) -> None:
    """Fewer key/value heads than ranks: every rank computes the whole (replicated) q/k/v
    projection and keeps its H/tp query heads and their one key/value head. Each rank's
    gradients then cover its heads only: those of the weights and of the input are summed over
    the ranks."""
    tp, rank, group = mesh.size(), mesh.get_local_rank(), mesh.get_group()
    H, Hkv, Dh = attn.num_heads, attn.num_kv_heads, attn.head_dim
    queries = slice(rank * H // tp * Dh, (rank + 1) * H // tp * Dh)
    kv_head = rank // (tp // Hkv)
    keys = slice(kv_head * Dh, (kv_head + 1) * Dh)

    def input_gradient_summed(module, args):
        return (_SumGradient.apply(args[0], group), *args[1:])

    def this_ranks_heads(module, args, qkv):
        q, k, v = qkv
        return q[..., queries], k[..., keys], v[..., keys]  # [B, S, H/tp*Dh], 2 x [B, S, Dh]

    attn.qkv.register_forward_pre_hook(input_gradient_summed)
    attn.qkv.register_forward_hook(this_ranks_heads)
    for param in attn.qkv.parameters():
        _sum_gradient_over(param, group)
    attn.num_kv_heads = 1


class _SumGradient(torch.autograd.Function):
    """The identity, whose backward sums the gradient over ``group`` (Megatron's "f"); with
    ``channels``, only those of the last dimension."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, channels: slice = slice(None)) -> torch.Tensor:
        ctx.group, ctx.channels = group, channels
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        summed = grad[..., ctx.channels].contiguous()
        dist.all_reduce(summed, group=ctx.group)
        grad[..., ctx.channels] = summed
        return grad, None, None


def _shard_mlp(mlp: nn.Module, kind: str, mesh: DeviceMesh) -> None:
    """gate/up (or up) column-wise, down row-wise."""
    _shard_columns(mlp.gate_up if kind == "gated" else mlp.up, mesh)
    parallelize_module(mlp.down, mesh, RowwiseParallel())


def _shard_columns(projection: nn.Module, mesh: DeviceMesh) -> None:
    """Column-wise sharding of a projection: each Linear of a ``SplitProjection``, or a
    ``FusedProjection`` re-laid out so that each rank's rows are its slice of every part."""
    if isinstance(projection, SplitProjection):
        for name in projection.names:
            parallelize_module(getattr(projection, name), mesh, ColwiseParallel())
    elif isinstance(projection, FusedProjection):
        _shard_fused(projection, mesh)
    else:
        parallelize_module(projection, mesh, ColwiseParallel())


def _shard_fused(fused: FusedProjection, mesh: DeviceMesh) -> None:
    """The rows of a fused weight are its parts one after the other ([q; k; v], [gate; up]); a
    plain row split would give rank 0 all of q. The rows are permuted to [q_0; k_0; v_0; q_1; ...]
    (part p's slice r is rank r's), sharded column-wise, and split by this rank's sizes. State-dict
    hooks undo the permutation on the way out and apply it on the way in, so checkpoints (full or
    sharded) hold the original layout under the original names."""
    tp = mesh.size()
    order = _per_rank_order(fused.sizes, tp)  # permuted[i] = original[order[i]]
    inverse = torch.argsort(order)
    with torch.no_grad():
        for param in fused.proj.parameters():
            param.copy_(param[order.to(param.device)])
    parallelize_module(fused.proj, mesh, ColwiseParallel())
    fused.sizes = [size // tp for size in fused.sizes]
    fused.tp_row_order = order  # read by the optimizer-state checkpoints
    names = [name for name, _ in fused.proj.named_parameters()]

    def original_layout(module, state_dict, prefix, local_metadata):
        for name in names:
            key = f"{prefix}proj.{name}"
            if key in state_dict:
                state_dict[key] = _reordered(state_dict[key], inverse, like=state_dict[key])

    def permuted_layout(module, state_dict, prefix, *args):
        for name in names:
            key = f"{prefix}proj.{name}"
            if key in state_dict:
                state_dict[key] = _reordered(state_dict[key], order, like=fused.proj.get_parameter(name))

    fused.register_state_dict_post_hook(original_layout)
    fused.register_load_state_dict_pre_hook(permuted_layout)


def _per_rank_order(sizes: list[int], tp: int) -> torch.Tensor:
    """Row indices of the original fused weight, in the order rank 0's slice of every part, then
    rank 1's, ..."""
    starts = torch.tensor([0, *sizes]).cumsum(0)[:-1].tolist()
    return torch.cat([torch.arange(start + r * size // tp, start + (r + 1) * size // tp)
                      for r in range(tp) for start, size in zip(starts, sizes)])


@torch.no_grad()
def _reordered(tensor: torch.Tensor, order: torch.Tensor, *, like: DTensor) -> DTensor:
    """``tensor`` (full, or a DTensor) with its rows taken in ``order``, sharded as ``like``
    (one all-gather of this weight)."""
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    reordered = full[order.to(full.device)]
    return distribute_tensor(reordered, like.device_mesh, like.placements, src_data_rank=None)


def _bias_slicer(num_heads: int, tp: int, rank: int) -> Callable:
    """A forward hook keeping this rank's heads of a position scheme's bias [B, H, Q, K]."""
    local = num_heads // tp

    def slice_heads(module, args, encoding):
        bias = encoding.bias
        if bias is None or bias.shape[1] != num_heads:
            return encoding
        return encoding._replace(bias=bias[:, rank * local:(rank + 1) * local])  # [B, H/tp, Q, K]

    return slice_heads


def _sum_gradient_over(param: nn.Parameter, group) -> None:
    """A replicated parameter that each rank uses on its own heads only gets, on each rank, the
    gradient of those heads: summing over the ranks gives the whole gradient. Done on each
    backward's gradient before it is accumulated, so gradient accumulation stays exact."""

    def summed(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    param.register_hook(summed)


# ---------------------------------------------------------------------------------------------
# sharded checkpoints


def save_sharded(model: nn.Module, directory: str | os.PathLike, *,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write each rank's shards of ``model`` (and of ``optimizer``'s state, to resume training)
    to ``directory`` with torch.distributed.checkpoint. Every rank calls it; the directory must be
    visible to every rank. Fused projections are written in their original layout, so
    ``load_sharded`` may read the shards into another sharding."""
    if not isinstance(directory, (str, os.PathLike)):
        raise CheckpointError(f"directory={directory!r}: expected the directory to write (a str or os.PathLike)")
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = _fused_optimizer_rows(model, get_optimizer_state_dict(model, optimizer), original=True)
    dcp.save(state, checkpoint_id=os.fspath(directory))


def load_sharded(model: nn.Module, directory: str | os.PathLike, *,
                 optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Read shards written by ``save_sharded`` into ``model`` (and ``optimizer``, which must
    have been saved), sharded as they are now: the checkpoint is resharded as needed. Every
    rank calls it. Returns ``model``."""
    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise CheckpointError(f"directory={directory!r}: expected a directory written by save_sharded")
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        with implicit_replication():  # a fresh optimizer's state is made by a step, over mixed parameters
            state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=os.fspath(directory))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, _fused_optimizer_rows(model, state["optimizer"], original=False))
    return model


def _fused_optimizer_rows(model: nn.Module, optimizer_state: dict, *, original: bool) -> dict:
    """The optimizer's state with the per-parameter tensors of the re-laid out fused weights
    (Adam's moments, SGD's momentum) in the original row order (``original``) or this rank's.
    New dicts: the optimizer's own state (which ``optimizer_state`` shares) is left as it is."""
    state = dict(optimizer_state["state"])
    for prefix, module in model.named_modules():
        order = getattr(module, "tp_row_order", None)
        if order is None:
            continue
        index = torch.argsort(order) if original else order
        for name, param in module.proj.named_parameters():
            fqn = f"{prefix}.proj.{name}"
            if fqn in state:
                state[fqn] = {key: _reordered(value, index, like=value)
                              if isinstance(value, DTensor) and value.shape == param.shape else value
                              for key, value in state[fqn].items()}
    return {**optimizer_state, "state": state}
