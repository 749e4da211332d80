"""The DeepSeek-V2 family: DeepSeek-V3's layout (``archcomposer.plugins.deepseek_v3``) with RoPE
always in adjacent pairs (transformers' complex rotation; no ``rope_interleave`` key), ``mlp_bias``
on the dense MLP, its own defaults (transformers' ``first_k_dense_replace`` 0 makes every layer a
mixture of experts), and a softmax router. Of its routers, ``topk_method: greedy`` with
``routed_scaling_factor`` 1 (DeepSeek-V2-Lite's) is read: the ``num_experts_per_tok`` most probable
experts weighted by their probabilities, never renormalised (transformers' V2 router ignores
``norm_topk_prob``). ``group_limited_greedy`` (DeepSeek-V2's) and other scaling factors are refused."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HFTable, hf_family
from archcomposer.plugins.deepseek_v3 import TENSORS, MoELayers, config_rows, moe_tensors


class GreedyMoELayers(MoELayers):
    """DeepSeek-V2's mixture-of-experts layers with its greedy softmax router."""

    def router_to_spec(self, config: dict) -> dict:
        method, scale = config.get("topk_method", "greedy"), config.get("routed_scaling_factor", 1.0)
        if method != "greedy" or scale != 1.0:
            raise CheckpointError(f"config.json topk_method = {method!r} with routed_scaling_factor = {scale!r} is "
                                  f"not supported: DeepSeek-V2's router is read with topk_method 'greedy' and "
                                  f"routed_scaling_factor 1.0 only")
        return {"kind": "softmax", "normalize": False}

    def router_to_config(self, router, config: dict) -> None:
        if router.kind != "softmax" or router.normalize:
            raise CheckpointError(f"mlp.router {router} cannot be written as a DeepSeek-V2 config (only "
                                  f"kind 'softmax' with normalize false: topk_method 'greedy')")
        config.update(topk_method="greedy", routed_scaling_factor=1.0)


TABLE = HFTable(
    display="DeepSeek-V2",
    model_types=("deepseek_v2",),
    architectures={
        "DeepseekV2ForCausalLM": "causal_lm",
        "DeepseekV2ForSequenceClassification": "sequence_classification",
        "DeepseekV2Model": None,
    },
    config=config_rows(vocab_size=102400, hidden_size=4096, layers=32, max_positions=2048, heads=32,
                       moe=GreedyMoELayers(dense_layers=0, width=1407, dense_width=11008, experts=64, top_k=None,
                                           shared=2, mlp_bias=False),
                       interleave_key=False, bos=1, eos=2),
    tensors=TENSORS,
    extra_tensors=moe_tensors,
    heads={"causal_lm": "lm_head", "sequence_classification": "score"},
)

FAMILY = hf_family(name="deepseek-v2", table=TABLE,
                   description="DeepSeek-V2: multi-head latent attention, RoPE in pairs, YaRN with mscale; dense "
                               "first layers, then routed experts (greedy softmax router) plus shared experts")


@hookimpl
def register_families(register):
    register(FAMILY)
