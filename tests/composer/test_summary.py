"""``archcomposer.summary``: every number it computes from a spec against torch's own count on a
real model: parameters against the meta-built model, FLOPs against ``FlopCounterMode``, KV bytes
against the caches after a forward, activation bytes against ``saved_tensors_hooks``."""

import functools
from typing import Literal

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from archcomposer import (ComposedModel, DynamicCache, InputError, StaticCache, build_model, get_registry, hookimpl,
                          load_spec)
from archcomposer.blocks.mlp import PlainMLP
from archcomposer.spec import AttentionSpec, MLPSpec, linear_flops
from archcomposer.summary import SECTIONS, summarize
from archcomposer.testing import registered
from tests.composer.test_specs_shipped import PUBLISHED, TINY

BATCH, LENGTH = 2, 12  # longer than the tiny specs' sliding windows (8), so windowed caches drop keys
aten = torch.ops.aten
#: FlopCounterMode knows the fused SDPA kernels of GPUs, not torch's CPU one: count it with torch's
#: own formula for them (q.k and the value mix over every key slot).
CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v)}


@functools.cache  # several tests read the same summaries
def summary_of(name: str, dtype: torch.dtype = torch.float32, length: int = LENGTH):
    return summarize(name, batch=BATCH, length=length, dtype=dtype)


def example_batch(model, length: int = LENGTH) -> tuple[torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.spec.vocab_size, (BATCH, length), generator=generator)  # [B, S]
    return ids, model.spec.heads[0].example_labels(model.spec, ids, generator)


# ---------------------------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize("name", sorted(get_registry().specs))
def test_sections_sum_to_the_meta_built_count(name):
    s = summarize(name, activations=False)
    assert [b.section for b in s.blocks] == list(SECTIONS)
    assert sum(b.parameters for b in s.blocks) == s.parameters == build_model(name, device="meta").num_parameters()
    assert s.parameters == PUBLISHED.get(name, s.parameters)
    spec = load_spec(name)
    idle = sum((m.num_experts - m.top_k) * 3 * spec.hidden_size * m.intermediate_size
               for m in (layer.mlp for layer in spec.layer_specs) if m.kind == "moe")  # experts a token skips
    assert s.active_parameters == s.parameters - idle
    assert s.weight_bytes == 2 * s.parameters  # bfloat16 by default


def test_each_section_counts_its_own_blocks():
    # tiny-glm-4: vocab 256, hidden 64, 2 layers, 4 heads of 16, 2 KV heads, qkv bias, fused gate/up of 128
    blocks = {b.section: b for b in summary_of("tiny-glm-4").blocks}
    D, V, I = 64, 256, 128
    assert blocks["embedding"].parameters == V * D
    assert blocks["position"].parameters == 0
    assert blocks["attention"].parameters == 2 * (D * 64 + 64 + 2 * (D * 32 + 32) + 64 * D)
    assert blocks["mlp"].parameters == 2 * (D * 2 * I + I * D)
    assert blocks["norm"].parameters == 2 * 2 * D + D  # two per layer, and the final norm
    assert blocks["head"].parameters == D * V  # untied
    assert blocks["position"].kinds == ("partial_rope",) and blocks["mlp"].kinds == ("gated",)


def test_a_tied_head_is_counted_once_and_learned_biases_are_position_parameters():
    bloom = {b.section: b for b in summary_of("tiny-bloom").blocks}
    assert load_spec("tiny-bloom").embedding.tied and bloom["head"].parameters == 0
    cpm = {b.section: b for b in summary_of("tiny-cpm-ant").blocks}
    spec = load_spec("tiny-cpm-ant")
    buckets = spec.position.num_buckets + spec.embedding.segments.num_types**2  # and segment pairs
    assert cpm["position"].parameters == buckets * spec.attention.num_heads  # one table for both layers


# ---------------------------------------------------------------------------------------------
# FLOPs


def flop_count(run, mapping=None) -> int:
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", TINY)
def test_forward_flops_are_what_flop_counter_mode_counts(name):
    model = build_model(name, seed=0)
    ids, _ = example_batch(model)
    with torch.no_grad():
        counted = flop_count(lambda: model(ids), CPU_SDPA)
    s = summary_of(name)
    assert s.forward_flops == counted
    assert s.forward_flops_per_token == counted / (BATCH * LENGTH)


@pytest.mark.parametrize("name", TINY)
def test_training_flops_are_what_flop_counter_mode_counts_forward_and_backward(name):
    """3 x forward is the math kernel's count (each product's two gradients); a kernel that
    recomputes the scores in its backward (torch's formula for the fused kernels) adds one more
    q.k product per layer, which the summary leaves out."""
    model = build_model(name, seed=0).train()
    ids, labels = example_batch(model)

    def step():
        model(ids, **labels).loss.backward()

    with sdpa_kernel(SDPBackend.MATH):
        counted = flop_count(step)
    s = summary_of(name)
    assert s.training_flops == counted
    recomputed = []  # q.k of each fused backward: [B, H, S, Dh] @ [B, H, Dh, K]

    def fused_backward(grad, q, k, v, *_, **__):
        recomputed.append(2 * q[0] * q[1] * q[2] * k[2] * q[3])
        return sdpa_backward_flop_count(grad, q, k, v)

    fused = flop_count(step, {**CPU_SDPA, aten._scaled_dot_product_flash_attention_for_cpu_backward: fused_backward})
    assert fused == counted + sum(recomputed)
    if name == "tiny-glm-4":
        assert len(recomputed) == model.spec.num_layers


@pytest.mark.parametrize("name", ["glm-4-9b", "falcon-7b"])
def test_flops_at_full_width_are_what_flop_counter_mode_counts_on_fake_tensors(name):
    """Two layers of the full-size model on fake tensors (shapes only): FlopCounterMode counts its
    forward, and its forward and backward with the math kernel. Embeddings are passed in (a lookup
    costs no FLOPs)."""
    spec, length = load_spec({**load_spec(name).to_dict(), "num_layers": 2}), 64
    with FakeTensorMode():
        model = ComposedModel(spec).train()
        embeds = torch.empty(1, length, spec.hidden_size, requires_grad=True)  # [B, S, D]
        labels = torch.zeros(1, length, dtype=torch.long)
        with torch.no_grad():
            forward = flop_count(lambda: model(inputs_embeds=embeds), CPU_SDPA)
        with sdpa_kernel(SDPBackend.MATH):
            training = flop_count(lambda: model(inputs_embeds=embeds, labels=labels).loss.backward())
    s = summarize(spec, batch=1, length=length, activations=False)
    assert (s.forward_flops, s.training_flops) == (forward, training)


def test_attention_flops_grow_with_the_keys_and_the_rest_does_not():
    short, long = summarize("tiny-seed-oss", length=8), summarize("tiny-seed-oss", length=32)
    spec = load_spec("tiny-seed-oss")
    per_key = 4 * spec.num_layers * spec.attention.num_heads * spec.attention.head_dim  # q.k and the value mix
    assert long.forward_flops_per_token - short.forward_flops_per_token == per_key * (32 - 8)


# ---------------------------------------------------------------------------------------------
# KV cache


def cache_bytes(cache) -> int:
    """The bytes of the cached key and value tensors. (After the first forward of a model with a
    fused QKV projection, a cached tensor that is a view of the projection's output keeps that whole
    output, queries included, alive until the next step concatenates: more storage than this.)"""
    return sum(t.nbytes for t in cache.keys + cache.values)


@pytest.mark.parametrize(("name", "dtype"), [*((name, torch.float32) for name in TINY),
                                             ("tiny-gemma-2", torch.bfloat16), ("tiny-cpm-ant", torch.bfloat16)])
@pytest.mark.parametrize("length", [5, LENGTH])
def test_kv_cache_bytes_are_what_the_caches_hold_after_a_forward(name, length, dtype):
    model = build_model(name, seed=0, dtype=dtype)
    ids, _ = example_batch(model, length)
    s = summarize(name, batch=BATCH, length=length, dtype=dtype, activations=False)
    with torch.no_grad():
        dynamic = model(ids, past_key_values=DynamicCache()).past_key_values
        static = model(ids, past_key_values=StaticCache(max_length=length + model.num_prepended)).past_key_values
    assert s.kv_cache_bytes == cache_bytes(dynamic)
    assert s.static_kv_cache_bytes == cache_bytes(static)
    windowed = any(getattr(layer.attention, "sliding_window", None) for layer in model.spec.layer_specs)
    assert (s.kv_cache_bytes < s.static_kv_cache_bytes) == (windowed and length > 7)


# ---------------------------------------------------------------------------------------------
# activations


def saved_bytes(model, ids, labels) -> int:
    """What autograd saves for backward in a training forward: each storage once, parameters aside."""
    params = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = StorageWeakRef(tensor.untyped_storage())
        if storage not in params:
            seen[storage] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids, **labels)
    return sum(seen.values())


@pytest.mark.parametrize("name", TINY)
def test_activation_bytes_are_what_a_training_forward_saves_for_backward(name):
    model = build_model(name, seed=0).train()
    ids, labels = example_batch(model)
    s = summary_of(name)
    if model.routed:  # how many tokens each expert saves depends on the routing: fake tensors cannot tell
        assert s.activation_bytes is None and "depends on the values computed" in s.activation_note
        return
    assert s.activation_bytes == saved_bytes(model, ids, labels) == sum(s.activation_parts.values())
    assert s.activation_parts["layers"] > s.activation_parts["embedding"]


@pytest.mark.parametrize("name", ["tiny-glm-4", "tiny-gemma-2", "tiny-bloom"])
def test_activation_bytes_in_bfloat16(name):
    """Norms keep their statistics in fp32 and the loss takes fp32 logits: not half of float32."""
    model = build_model(name, seed=0, dtype=torch.bfloat16).train()
    ids, labels = example_batch(model)
    s = summary_of(name, torch.bfloat16)
    assert s.activation_bytes == saved_bytes(model, ids, labels)
    assert summary_of(name).activation_bytes / 2 < s.activation_bytes < summary_of(name).activation_bytes


def test_activations_of_a_full_size_model_cost_no_memory():
    s = summarize("gpt2", batch=64, length=1024)  # the forward alone would need more memory than this machine has
    assert s.activation_bytes > 2**36  # 64 GiB
    assert s.activation_parts["layers"] > s.activation_parts["head"] > s.activation_parts["embedding"]


# ---------------------------------------------------------------------------------------------
# block kinds report their own numbers: a plugin's mixture of experts


class TopOneExperts(nn.Module):
    """Each token through the one expert its router scores highest (a test's minimal MoE)."""

    def __init__(self, *, router: nn.Linear, experts: nn.ModuleList):
        super().__init__()
        self.router, self.experts = router, experts

    def forward(self, x):  # x: [B, S, D]
        flat = x.flatten(0, 1)  # [N, D]
        choice = self.router(flat).argmax(-1)  # [N]
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (choice == e).nonzero().squeeze(-1)  # [n_e]
            out = out.index_add(0, rows, expert(flat[rows]))
        return out.view_as(x)  # [B, S, D]


class TopOneExpertsSpec(MLPSpec):
    """A router and ``num_experts`` plain MLPs; each token uses one."""

    kind: Literal["top_one_experts"]
    num_experts: int = 4

    def build(self, ctx):
        D, I = ctx.spec.hidden_size, self.intermediate_size
        experts = nn.ModuleList(PlainMLP(activation="relu", up=nn.Linear(D, I), down=nn.Linear(I, D))
                                for _ in range(self.num_experts))
        return TopOneExperts(router=nn.Linear(D, self.num_experts, bias=False), experts=experts)

    def active_parameters(self, module):
        return sum(p.numel() for p in [*module.router.parameters(), *module.experts[0].parameters()])

    def flops_per_token(self, module, *, keys):
        return linear_flops(module.router) + linear_flops(module.experts[0])


class ExpertsPlugin:
    @hookimpl
    def register_blocks(self, register):
        register("mlp", TopOneExpertsSpec)


def test_a_plugin_mixture_of_experts_reports_its_active_parameters_and_flops():
    with registered(ExpertsPlugin()):
        spec = load_spec({**load_spec("tiny-seed-oss").to_dict(),
                          "mlp": {"kind": "top_one_experts", "intermediate_size": 32, "num_experts": 4}})
        s = summarize(spec, batch=BATCH, length=LENGTH, dtype=torch.float32)
        model = build_model(spec, seed=0)
        ids, _ = example_batch(model)
        with torch.no_grad():
            counted = flop_count(lambda: model(ids), CPU_SDPA)
    mlp = {b.section: b for b in s.blocks}["mlp"]
    D, I, E = spec.hidden_size, 32, 4
    expert = D * I + I + I * D + D
    assert mlp.parameters == spec.num_layers * (D * E + E * expert)
    assert mlp.active_parameters == spec.num_layers * (D * E + expert)
    assert s.active_parameters == s.parameters - spec.num_layers * (E - 1) * expert
    assert s.forward_flops == counted  # each token went through one expert
    assert s.activation_bytes is None and "aten.nonzero" in s.activation_note


def test_an_attention_kind_without_head_dim_must_count_its_own_flops():
    class HeadlessSpec(AttentionSpec):
        kind: Literal["headless"]

        def build(self, ctx):
            return nn.Linear(8, 8)

        def kv_bytes_per_token(self, dtype_bytes):
            return 0

    with pytest.raises(TypeError, match=r"attention kind 'headless' has no head_dim to count its score FLOPs with: "
                                        r"give HeadlessSpec a flops_per_token\(module, \*, keys\) method"):
        HeadlessSpec(kind="headless", num_heads=2).flops_per_token(nn.Linear(8, 8), keys=4)


# ---------------------------------------------------------------------------------------------
# inputs


def test_checkpoint_directories_are_summarized_like_their_spec(tmp_path):
    build_model("tiny-olmo2", seed=0).save_pretrained(tmp_path / "ours")
    build_model("tiny-olmo2", seed=0).save_pretrained(tmp_path / "hf", format="hf")
    expected = summary_of("tiny-olmo2")
    for path in (tmp_path / "ours", tmp_path / "hf"):
        s = summarize(path, batch=BATCH, length=LENGTH, dtype=torch.float32)
        assert (s.parameters, s.forward_flops, s.kv_cache_bytes, s.activation_bytes) == \
            (expected.parameters, expected.forward_flops, expected.kv_cache_bytes, expected.activation_bytes)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch": 0}, r"batch must be a whole number >= 1, got 0"),
    ({"length": 0}, r"length must be a whole number from 1 to the spec's max_positions \(256\), got 0"),
    ({"length": 257}, r"max_positions \(256\), got 257"),
    ({"dtype": torch.int8}, r"dtype must be a floating-point torch dtype"),
])
def test_bad_sizes_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        summarize("tiny-glm-4", **kwargs)


@pytest.mark.parametrize(("name", "billions"), [("mixtral-8x7b", 12.9), ("qwen3-30b-a3b", 3.3),
                                                ("qwen1.5-moe-a2.7b", 2.7), ("olmoe-1b-7b", 1.3)])
def test_a_mixture_of_experts_computes_with_its_router_chosen_experts_and_shared_expert(name, billions):
    """Active parameters as the model cards state them, to their 0.1B (rounded or cut): Mixtral
    8x7B 12.9B, Qwen3-30B-A3B 3.3B (3.35B), Qwen1.5-MoE-A2.7B 2.7B, OLMoE-1B-7B 1.3B."""
    assert abs(summarize(name, activations=False).active_parameters / 1e9 - billions) < 0.06
