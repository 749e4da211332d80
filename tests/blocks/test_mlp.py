"""Feed-forward blocks against the references: GLM-4's fused SwiGLU, CPM-Ant's GeGLU, BLOOM's
plain GELU MLP and the mixture-of-experts blocks of Mixtral, Qwen2-MoE and DeepSeek-V3; activations
against transformers' ACT2FN."""

import pytest
import torch
from transformers import BloomConfig, CpmAntConfig, GlmConfig
from transformers.activations import ACT2FN
from transformers.models.bloom.modeling_bloom import BloomMLP
from transformers.models.cpmant.modeling_cpmant import CpmAntDenseGatedACT
from transformers.models.glm.modeling_glm import GlmMLP

from archcomposer.blocks.mlp import ACTIVATIONS, GatedMLP, PlainMLP
from archcomposer.blocks.projection import FusedProjection, SplitProjection

D, I = 16, 24


def x():
    return torch.randn(2, 5, D, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("ours", "theirs"), [("silu", "silu"), ("gelu", "gelu"), ("gelu_tanh", "gelu_pytorch_tanh"),
                                              ("relu", "relu")])
def test_activations_equal_transformers(ours, theirs):
    t = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(ACTIVATIONS[ours](t), ACT2FN[theirs](t), rtol=0, atol=0)


@torch.no_grad()
def test_fused_gated_mlp_equals_glm():
    reference = GlmMLP(GlmConfig(hidden_size=D, intermediate_size=I, hidden_act="silu"))
    ours = GatedMLP(activation="silu", down=torch.nn.Linear(I, D, bias=False),
                    gate_up=FusedProjection(proj=torch.nn.Linear(D, 2 * I, bias=False), sizes=[I, I]))
    ours.gate_up.proj.weight.copy_(reference.gate_up_proj.weight)
    ours.down.weight.copy_(reference.down_proj.weight)
    torch.testing.assert_close(ours(x()), reference(x()), rtol=0, atol=0)


@torch.no_grad()
def test_split_gated_mlp_equals_cpm_ant():
    reference = CpmAntDenseGatedACT(CpmAntConfig(hidden_size=D, dim_ff=I))
    down = torch.nn.Linear(I, D, bias=False)
    gate_up = SplitProjection(gate=torch.nn.Linear(D, I, bias=False), up=torch.nn.Linear(D, I, bias=False))
    ours = GatedMLP(activation="gelu", down=down, gate_up=gate_up)
    ours.gate_up.gate.weight.copy_(reference.w_0.weight)
    ours.gate_up.up.weight.copy_(reference.w_1.weight)
    torch.testing.assert_close(ours(x()), down(reference(x())), rtol=0, atol=0)


@torch.no_grad()
def test_plain_mlp_equals_bloom():
    reference = BloomMLP(BloomConfig(hidden_size=D, n_head=2, hidden_dropout=0.0)).eval()
    ours = PlainMLP(activation="gelu_tanh", up=torch.nn.Linear(D, 4 * D), down=torch.nn.Linear(4 * D, D))
    for mine, theirs in ((ours.up, reference.dense_h_to_4h), (ours.down, reference.dense_4h_to_h)):
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(torch.randn(theirs.bias.shape))
        theirs.bias.copy_(mine.bias)
    # BLOOM's GELU is its own tanh approximation with rounded constants
    torch.testing.assert_close(ours(x()), reference(x(), torch.zeros(2, 5, D)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# mixture of experts


def moe_block(spec: dict, hidden: int = D):
    """Our MoE block for an ``mlp`` section, built alone (a one-layer spec around it)."""
    from archcomposer import build_model

    model = build_model({"name": "moe", "vocab_size": 8, "hidden_size": hidden, "num_layers": 1,
                         "max_positions": 16, "attention": {"kind": "gqa", "num_heads": 2},
                         "position": {"kind": "none"}, "norm": {"kind": "rmsnorm"}, "mlp": spec}, seed=0)
    return model.layers[0].mlp


def copy_moe(ours, theirs, *, shared: str | None = None, shared_gate: str | None = None) -> None:
    """Their MoE block's (random) weights into ours: router, 3-D experts, shared expert."""
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        ours.router.gate.weight.copy_(theirs.gate.weight)
        ours.experts.gate_up_proj.copy_(theirs.experts.gate_up_proj)
        ours.experts.down_proj.copy_(theirs.experts.down_proj)
        if shared is not None:
            s = getattr(theirs, shared)
            ours.shared.gate_up.gate.weight.copy_(s.gate_proj.weight)
            ours.shared.gate_up.up.weight.copy_(s.up_proj.weight)
            ours.shared.down.weight.copy_(s.down_proj.weight)
        if shared_gate is not None:
            ours.shared_gate.weight.copy_(getattr(theirs, shared_gate).weight)


@pytest.mark.parametrize("top_k", [1, 2, 4])
@torch.no_grad()
def test_moe_equals_mixtral_sparse_block(top_k):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    theirs = MixtralSparseMoeBlock(MixtralConfig(hidden_size=D, intermediate_size=I, num_local_experts=4,
                                                 num_experts_per_tok=top_k)).eval()
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 4, "top_k": top_k})
    copy_moe(ours, theirs)
    torch.testing.assert_close(ours(x()), theirs(x()), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.router_logits, theirs.gate(x())[0], rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [False, True])
@torch.no_grad()
def test_moe_with_gated_shared_expert_equals_qwen2_moe_block(normalize):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    theirs = Qwen2MoeSparseMoeBlock(Qwen2MoeConfig(hidden_size=D, moe_intermediate_size=I, num_experts=6,
                                                   num_experts_per_tok=3, norm_topk_prob=normalize,
                                                   shared_expert_intermediate_size=8)).eval()
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 6, "top_k": 3,
                      "router": {"kind": "softmax", "normalize": normalize},
                      "shared_expert": {"intermediate_size": 8, "gated": True}})
    copy_moe(ours, theirs, shared="shared_expert", shared_gate="shared_expert_gate")
    torch.testing.assert_close(ours(x()), theirs(x()), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("groups", "top_groups", "top_k", "normalize"), [(1, 1, 2, True), (4, 2, 3, True),
                                                                          (4, 1, 2, False), (2, 2, 8, True)])
@torch.no_grad()
def test_grouped_sigmoid_router_and_shared_experts_equal_deepseek_v3(groups, top_groups, top_k, normalize):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    theirs = DeepseekV3MoE(DeepseekV3Config(hidden_size=D, moe_intermediate_size=I, n_routed_experts=8,
                                            num_experts_per_tok=top_k, n_group=groups, topk_group=top_groups,
                                            norm_topk_prob=normalize, routed_scaling_factor=2.5,
                                            n_shared_experts=2)).eval()
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 8, "top_k": top_k,
                      "router": {"kind": "grouped_sigmoid", "num_groups": groups, "top_groups": top_groups,
                                 "normalize": normalize, "scale": 2.5},
                      "shared_expert": {"intermediate_size": 2 * I}})
    copy_moe(ours, theirs, shared="shared_experts")
    theirs.gate.e_score_correction_bias.normal_(0, 0.3)  # the load-balancing bias moves the choice, not the weight
    ours.router.score_bias.copy_(theirs.gate.e_score_correction_bias)
    torch.testing.assert_close(ours(x()), theirs(x()), rtol=0, atol=1e-5)


@torch.no_grad()
def test_tied_router_scores_go_to_torch_topk_choice_as_in_mixtral():
    """Experts that score the same: the router keeps ``torch.topk``'s choice over the
    probabilities, the very call the references make, so ours and Mixtral's pick the same experts
    (on CPU, the lower index first) and give the same output."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    theirs = MixtralSparseMoeBlock(MixtralConfig(hidden_size=D, intermediate_size=I, num_local_experts=4,
                                                 num_experts_per_tok=2)).eval()
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 4, "top_k": 2})
    copy_moe(ours, theirs)
    row = torch.randn(D, generator=torch.Generator().manual_seed(3))
    for gate in (theirs.gate.weight, ours.router.gate.weight):
        gate.copy_(torch.stack([row, row, row, -row]))  # experts 0, 1, 2 tie for every token
    _, weights, experts = ours.router(x().flatten(0, 1))
    expected = torch.topk(torch.softmax(x().flatten(0, 1) @ ours.router.gate.weight.T, -1), 2).indices
    assert torch.equal(experts, expected) and torch.equal(experts, theirs.gate(x())[2])
    tied = (experts < 3).all(-1)  # tokens whose two experts both come from the tie: equal weights
    assert tied.any() and torch.allclose(weights[tied], torch.full_like(weights[tied], 0.5))
    torch.testing.assert_close(ours(x()), theirs(x()), rtol=0, atol=1e-6)


@torch.no_grad()
def test_each_expert_runs_once_on_its_own_tokens():
    """The experts' work is the routed tokens: each expert's weights are used in one matmul whose
    rows are exactly the tokens routed to it (none for an expert no token chose)."""
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 4, "top_k": 2})
    rows_seen: list[int] = []
    original = torch.nn.functional.linear

    def counting(input, weight, bias=None):
        if weight.shape == (2 * I, D):
            rows_seen.append(input.shape[0])
        return original(input, weight, bias)

    tokens = x().flatten(0, 1)
    experts = ours.router(tokens)[2]
    torch.nn.functional.linear = counting
    try:
        ours(x())
    finally:
        torch.nn.functional.linear = original
    counts = torch.bincount(experts.flatten(), minlength=4)
    assert rows_seen == [int(c) for c in counts if c] and sum(rows_seen) == 2 * tokens.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("router", [{"kind": "softmax"}, {"kind": "grouped_sigmoid", "num_groups": 2, "scale": 2.5}])
@torch.no_grad()
def test_every_expert_path_equals_the_sorted_path(router, dtype):
    """While compiling, every expert runs on every token (fixed shapes, no host sync); each token
    keeps its own experts' weighted outputs, added in the sorted path's order. Only the matmuls'
    row counts differ, which can move fp32 results by an ulp."""
    ours = moe_block({"kind": "moe", "intermediate_size": I, "num_experts": 4, "top_k": 2, "router": router})
    ours.to(dtype)
    tokens = x().flatten(0, 1).to(dtype)  # [N, D]
    _, weights, experts = ours.router(tokens)
    sorted_path = ours.experts(tokens, weights, experts)  # eager: the sorted path
    every_expert = ours.experts._every_expert(tokens, weights, experts)
    assert every_expert.dtype == sorted_path.dtype == dtype
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(every_expert, sorted_path, rtol=tolerance, atol=tolerance)


def test_moe_spec_rules_name_the_values():
    from archcomposer import SpecError, load_spec

    base = {"name": "m", "vocab_size": 8, "hidden_size": 8, "num_layers": 1, "max_positions": 8,
            "attention": {"kind": "gqa", "num_heads": 2}, "position": {"kind": "none"}, "norm": {"kind": "rmsnorm"}}
    cases = [({"top_k": 5}, r"mlp.top_k \(5\) must be at most mlp.num_experts \(4\)"),
             ({"router": {"kind": "grouped_sigmoid", "num_groups": 3}},
              r"mlp.num_experts \(4\) must split into router.num_groups \(3\) groups of at least 2"),
             ({"router": {"kind": "grouped_sigmoid", "num_groups": 2, "top_groups": 3}},
              r"mlp.router.top_groups \(3\) must be at most router.num_groups \(2\)"),
             ({"top_k": 3, "router": {"kind": "grouped_sigmoid", "num_groups": 2, "top_groups": 1}},
              r"mlp.top_k \(3\) must be at most the experts of router.top_groups \(1\) groups of 2"),
             ({"router": {"kind": "sigmoid"}}, "mlp.router.kind: .*did you mean 'grouped_sigmoid'")]
    for change, message in cases:
        with pytest.raises(SpecError, match=message):
            load_spec({**base, "mlp": {"kind": "moe", "intermediate_size": 4, "num_experts": 4, "top_k": 2,
                                       **change}})
