"""Sizing a model from its spec, allocating nothing: parameters per block kind and in total, the
parameters one token computes with, forward and training FLOPs per token, and the memory of the
weights, the KV cache and the activations at a batch and length (``archcomposer summary``).

Each block kind reports its own numbers, through methods of its spec class that a kind overrides
where the general default does not hold (a mixture of experts, latent attention, a plugin's kind):
``active_parameters(module)`` and ``flops_per_token(module, keys=...)`` (every spec class; by
default all parameters and the block's linear layers) and ``kv_bytes_per_token`` (attention
kinds). ``module`` is the block as the spec builds it, on the meta device.

What each number is (tests/composer/test_summary.py checks each against torch's own count on the
tiny specs):

- parameters: those of the model built on the meta device (tied weights once), per section:
  ``embedding`` (with any embedding norm), ``position`` (learned bias tables), ``attention`` (with
  its q/k norms), ``mlp``, ``norm`` (the layers' norms, whatever else a wiring builds besides the
  attention and the MLP, and the final norm) and ``head``.
- forward FLOPs per token: the matrix products (what ``torch.utils.flop_counter.FlopCounterMode``
  counts) of one forward over ``batch x length`` tokens with the first head, divided by
  ``batch x length``. Attention scores and value mixes are counted over every key slot the mask
  covers: a forward of ``length`` tokens computes ``length`` keys for each query, causal or not.
  Tokens an embedding kind prepends (CPM-Ant's prompt) go through the layers too.
- training FLOPs per token: 3 x forward. The backward takes the gradient of each product with
  respect to its input and to its weight, each as many FLOPs as the product. Kernels that
  recompute the attention scores in the backward (FlashAttention) do a quarter more work in the
  attention backward than that; the usual convention, followed here, leaves recomputation out.
- weights: parameters x bytes per element of ``dtype``.
- KV cache: the keys and values a ``DynamicCache`` holds after a forward of ``length`` tokens (a
  sliding-window layer keeps only its last ``window - 1``) and what a ``StaticCache`` of
  ``max_length = length`` holds (every slot), for the whole batch.
- activations: the bytes autograd saves for the backward in one training-mode forward of
  ``batch x length`` tokens with the first head's labels (its loss included): each storage once,
  parameters left out. They depend on kernel choices (torch's fused CPU attention takes no
  dropout or learned bias, and the math kernel keeps the attention probabilities) and on every
  op's saved tensors, so they are measured, not modelled: the forward runs on fake tensors
  (``FakeTensorMode``: shapes, dtypes and the kernels torch picks on CPU, no data, no memory)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from archcomposer.build import skeleton
from archcomposer.errors import InputError
from archcomposer.model import ComposedModel
from archcomposer.spec import BuildContext, ModelSpecBase, linear_flops
from archcomposer.specfile import SpecLike, load_spec

#: The sections parameters and FLOPs are reported by, in the order of a forward.
SECTIONS = ("embedding", "position", "attention", "mlp", "norm", "head")


@dataclass(frozen=True)
class BlockSize:
    """One section's share: the kinds in it, its parameters, those one token computes with, and
    its FLOPs in the forward the summary describes (``batch x length`` tokens)."""

    section: str
    kinds: tuple[str, ...]
    parameters: int
    active_parameters: int
    forward_flops: int


@dataclass(frozen=True)
class Summary:
    """A spec's size at ``batch`` sequences of ``length`` tokens in ``dtype`` (see the module
    docstring for what each number counts). ``activation_bytes`` is None when not measured;
    ``activation_note`` then says why (or, when measured, which layers kept attention probabilities)."""

    name: str
    family: str | None
    batch: int
    length: int
    dtype: str
    blocks: tuple[BlockSize, ...]
    parameters: int
    active_parameters: int
    forward_flops: int  # the whole forward, batch x length tokens
    weight_bytes: int
    kv_bytes_per_token: int  # one token in every layer, windows aside
    kv_cache_bytes: int  # DynamicCache after the forward
    static_kv_cache_bytes: int  # StaticCache(max_length=length)
    activation_bytes: int | None
    activation_parts: dict[str, int] | None  # where activations are saved: embedding, layers, head, ...
    activation_note: str | None = None  # why activations were not measured, or what they hold

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    @property
    def forward_flops_per_token(self) -> float:
        return self.forward_flops / self.tokens

    @property
    def training_flops(self) -> int:
        return 3 * self.forward_flops

    @property
    def training_flops_per_token(self) -> float:
        return self.training_flops / self.tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "forward_flops_per_token": self.forward_flops_per_token,
                "training_flops": self.training_flops, "training_flops_per_token": self.training_flops_per_token}


def summarize(spec: SpecLike, *, batch: int = 1, length: int | None = None, dtype: torch.dtype = torch.bfloat16,
              activations: bool = True) -> Summary:
    """The size of the model ``spec`` describes (a spec, dict, YAML path, shipped name or checkpoint
    directory) at ``batch`` sequences of ``length`` tokens (default: ``max_positions``) in
    ``dtype``. ``activations=False`` skips the fake training forward (a second or so for a large
    model) and leaves ``activation_bytes`` None."""
    spec = load_spec(spec)
    length = spec.max_positions if length is None else length
    _check_size(spec, batch, length, dtype)
    model = skeleton(spec)
    T = length + model.num_prepended  # positions every layer processes, and the key slots each query sees
    tally = {section: _Tally() for section in SECTIONS}
    counted: set[int] = set()  # parameters already counted (a tied head shares the embedding's)

    def add(section: str, block_spec, module: nn.Module, positions: int, *, of_model: bool = True) -> None:
        """``module``, built by ``block_spec``, run on ``positions`` positions of each sequence;
        ``of_model`` false: a copy of a block of a layer, whose parameters the layer holds."""
        t = tally[section]
        t.kinds.add(block_spec.kind)
        t.parameters += sum(p.numel() for p in module.parameters() if id(p) not in counted)
        if of_model:
            counted.update(id(p) for p in module.parameters())
        t.inactive += _count(module) - block_spec.active_parameters(module)
        t.flops += block_spec.flops_per_token(module, keys=T) * positions

    add("embedding", spec.embedding, model.embedding, T)
    for j, module in enumerate(model.positions):  # one module per scheme, shared by its layers
        add("position", spec.layer_specs[model.position_of.index(j)].position, module, T)
    branches: dict[int, tuple[nn.Module, nn.Module]] = {}  # built once per distinct layer spec
    for i, layer in enumerate(model.layers):
        blocks = spec.layer_specs[i]
        if id(blocks) not in branches:
            with torch.device("meta"):
                ctx = BuildContext(spec, i)
                branches[id(blocks)] = blocks.attention.build(ctx), blocks.mlp.build(ctx)
        attention, mlp = branches[id(blocks)]
        add("attention", blocks.attention, attention, T, of_model=False)
        add("mlp", blocks.mlp, mlp, T, of_model=False)
        rest = tally["norm"]  # the rest of the layer, what the wiring builds around the branches: the norms
        rest.kinds.add(blocks.norm.kind)
        rest.parameters += _count(layer) - _count(attention) - _count(mlp)
        rest.flops += (linear_flops(layer) - linear_flops(attention) - linear_flops(mlp)) * T
        counted.update(id(p) for p in layer.parameters())
    add("norm", spec.norm, model.final_norm, T)
    for k, head in enumerate(spec.heads):  # a forward runs the first head, on the input's positions
        add("head", head, model.heads[head.kind], length if k == 0 else 0)

    blocks = tuple(BlockSize(section, tuple(sorted(t.kinds)) or ("none",), t.parameters, t.parameters - t.inactive,
                             batch * t.flops) for section, t in tally.items())
    parameters = sum(b.parameters for b in blocks)
    width = torch.finfo(dtype).bits // 8
    kv_dynamic = kv_static = kv_per_token = 0
    for layer_blocks in spec.layer_specs:
        per_token = layer_blocks.attention.kv_bytes_per_token(width)
        window = getattr(layer_blocks.attention, "sliding_window", None)  # as the model reads it
        kv_per_token += per_token
        kv_dynamic += batch * per_token * (T if window is None else min(T, window - 1))
        kv_static += batch * per_token * T
    parts, note = None, None
    if activations:
        try:
            parts, note = _activation_bytes(spec, batch, length, dtype)
        except _Unmeasurable as exc:
            note = str(exc)
    return Summary(name=spec.name, family=spec.family, batch=batch, length=length,
                   dtype=str(dtype).removeprefix("torch."), blocks=blocks, parameters=parameters,
                   active_parameters=sum(b.active_parameters for b in blocks),
                   forward_flops=sum(b.forward_flops for b in blocks), weight_bytes=parameters * width,
                   kv_bytes_per_token=kv_per_token, kv_cache_bytes=kv_dynamic, static_kv_cache_bytes=kv_static,
                   activation_bytes=sum(parts.values()) if parts is not None else None, activation_parts=parts,
                   activation_note=note)


@dataclass
class _Tally:
    """A section's running totals; ``flops`` for one sequence."""

    kinds: set[str] = field(default_factory=set)
    parameters: int = 0
    inactive: int = 0
    flops: int = 0


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_size(spec: ModelSpecBase, batch: int, length: int, dtype: torch.dtype) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a whole number >= 1, got {batch!r}")
    if not isinstance(length, int) or not 1 <= length <= spec.max_positions:
        raise InputError(f"length must be a whole number from 1 to the spec's max_positions ({spec.max_positions}), "
                         f"got {length!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point torch dtype (e.g. torch.bfloat16), got {dtype!r}")
    limit = spec.heads[0].max_batch(spec) if spec.heads else None
    if limit is not None and batch > limit:
        raise InputError(f"batch {batch}: the {spec.heads[0].kind} head of {spec.name} scores at most {limit} "
                         f"sequence(s) per forward")


# ---------------------------------------------------------------------------------------------
# activations: a training forward on fake tensors


class _FakeForward(TorchDispatchMode):
    """Fake tensors hold no values. The model's checks of its input (ids within the vocabulary,
    positions within a learned table) read a comparison: each reads False, so they pass as for
    valid input; any other read of a value fails, and the activations go unmeasured. Counts the
    calls of torch's fused CPU attention kernel (the others keep the attention probabilities)."""

    def __init__(self):
        super().__init__()
        self.fused_attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool:
            return False
        self.fused_attention += func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
        return func(*args, **(kwargs or {}))


class _Unmeasurable(Exception):
    """The fake forward met an op whose output depends on values."""


def _activation_bytes(spec: ModelSpecBase, batch: int, length: int,
                      dtype: torch.dtype) -> tuple[dict[str, int], str | None]:
    """Bytes autograd saves in a training forward with labels, by the part of the model that saved
    each storage first: ``embedding``, ``position``, ``layers``, ``norm`` (the final norm),
    ``head`` (with the loss), ``model`` (the rest); and a note where attention kept its
    probabilities."""
    parts = {"embedding": 0, "position": 0, "layers": 0, "norm": 0, "head": 0, "model": 0}
    with FakeTensorMode():
        model = ComposedModel(spec).train()  # on fake CPU tensors, so torch picks the CPU kernels
        _cast_parameters(model, dtype)
        params = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
        running = ["model"]  # the parts whose forward is running, innermost last

        def leave(*_) -> None:
            running.pop()

        for part, modules in (("embedding", [model.embedding]), ("position", model.positions),
                              ("layers", model.layers), ("norm", [model.final_norm]), ("head", model.heads.values())):
            for module in modules:
                module.register_forward_pre_hook(lambda *_, part=part: running.append(part))
                module.register_forward_hook(leave)
        seen: set[StorageWeakRef] = set()

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = StorageWeakRef(tensor.untyped_storage())
            if storage not in params and storage not in seen:
                seen.add(storage)
                parts[running[-1]] += tensor.untyped_storage().nbytes()
            return tensor

        ids = torch.zeros(batch, length, dtype=torch.long)  # [B, S]
        labels = spec.heads[0].example_labels(spec, ids, torch.Generator()) if spec.heads else {}
        forward = _FakeForward()
        try:
            with forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                model(ids, **labels)
        except (DataDependentOutputException, DynamicOutputShapeException) as exc:
            raise _Unmeasurable(f"not measured: {exc.func} gives a result that depends on the values computed "
                                f"(a block routing tokens by value, such as a mixture of experts), which a "
                                f"forward on fake tensors cannot follow") from None
    note = None
    if forward.fused_attention < spec.num_layers:
        note = (f"in {spec.num_layers - forward.fused_attention} of {spec.num_layers} layers attention keeps its "
                f"[batch, heads, length, length] probabilities (torch's fused CPU kernel takes no attention dropout "
                f"or learned bias; soft-capped scores are computed explicitly)")
    return parts, note


def _cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` for fake parameters (which ``to`` cannot swap in place), keeping ties."""
    cast: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                if id(param) not in cast:
                    cast[id(param)] = nn.Parameter(param.to(dtype), requires_grad=param.requires_grad)
                module._parameters[name] = cast[id(param)]


# ---------------------------------------------------------------------------------------------
# text


def format_summary(summary: Summary, blocks: str = "") -> str:
    """The detailed breakdown ``archcomposer summary NAME`` prints; ``blocks`` describes the spec's
    blocks in a line."""
    s = summary
    header = f"{s.name}" + (f" (family {s.family})" if s.family else "") + (f": {blocks}" if blocks else "")
    rows = [("block", "kinds", "parameters", "share", "active/token", "forward FLOPs/token")]
    for b in s.blocks:
        rows.append((b.section, ", ".join(b.kinds), f"{b.parameters:,}", f"{100 * b.parameters / s.parameters:.1f}%",
                     f"{b.active_parameters:,}", _flops(b.forward_flops / s.tokens)))
    rows.append(("total", "", f"{s.parameters:,}", "100.0%", f"{s.active_parameters:,}",
                 _flops(s.forward_flops_per_token)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [header, f"at batch {s.batch:,}, length {s.length:,}, {s.dtype}", ""]
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
    kv = f"{_bytes(s.kv_cache_bytes)} ({_bytes(s.kv_bytes_per_token)} per token"
    kv += f"; a StaticCache of {s.length:,} tokens: {_bytes(s.static_kv_cache_bytes)})" \
        if s.static_kv_cache_bytes != s.kv_cache_bytes else ")"
    lines += ["", f"FLOPs per token  forward {_flops(s.forward_flops_per_token)}, training "
                  f"{_flops(s.training_flops_per_token)} (3 x forward)",
              f"weights          {_bytes(s.weight_bytes)}",
              f"KV cache         {kv}"]
    if s.activation_bytes is not None:
        parts = ", ".join(f"{part} {_bytes(n)}" for part, n in s.activation_parts.items() if n)
        lines.append(f"activations      {_bytes(s.activation_bytes)} (saved for backward by a training forward: "
                     f"{parts})")
        if s.activation_note is not None:
            lines.append(f"                 note: {s.activation_note}")
    elif s.activation_note is not None:
        lines.append(f"activations      {s.activation_note}")
    return "\n".join(lines)


def _flops(n: float) -> str:
    for value, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= value:
            return f"{n / value:.2f} {prefix}FLOP"
    return f"{n:.0f} FLOP"


def _bytes(n: float) -> str:
    for value, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= value:
            return f"{n / value:.2f} {unit}"
    return f"{n:.0f} B"
