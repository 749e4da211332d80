"""The Qwen3-MoE family (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention with a mixture of
experts in the sparse layers and a dense MLP in the others.

Hugging Face Qwen3-MoE (``model_type: qwen3_moe``) has Qwen3's attention (``q_norm``/``k_norm``
per head, ``attention_bias``, ``head_dim``) under ``model.`` and Qwen2-MoE's sparse layers
without the shared expert (``SparseLayers``). With ``use_sliding_window`` every layer slides
over ``sliding_window`` tokens."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Rope, Tensor, hf_family, llama_config,
                                   token_ids, without)
from archcomposer.plugins.qwen2_moe import EXPERTS, MOE_TENSORS, SparseLayers


class EveryLayerWindow:
    """``use_sliding_window`` and ``sliding_window`` <-> one ``attention.sliding_window`` for every
    layer (transformers ignores ``sliding_window`` while ``use_sliding_window`` is off)."""

    def to_spec(self, config, data):
        if config.get("use_sliding_window", False):
            data.setdefault("attention", {})["sliding_window"] = config.get("sliding_window", 4096)

    def to_config(self, spec, config):
        window = getattr(spec.attention, "sliding_window", None)
        config["use_sliding_window"], config["sliding_window"] = window is not None, window


TABLE = HFTable(
    display="Qwen3-MoE",
    model_types=("qwen3_moe",),
    architectures={
        "Qwen3MoeForCausalLM": "causal_lm",
        "Qwen3MoeForSequenceClassification": "sequence_classification",
        "Qwen3MoeForTokenClassification": "token_classification",
        "Qwen3MoeForQuestionAnswering": "question_answering",
        "Qwen3MoeModel": None,
    },
    bases={"Qwen3MoeForQuestionAnswering": "transformer."},
    config=[
        *without(llama_config(vocab_size=151936, max_positions=32768, kv_heads=4, hidden_size=2048, layers=24),
                 "mlp.bias", "mlp.kind", "mlp.intermediate_size", "mlp.activation"),
        Fixed("attention.qk_norm", {"scope": "head"}),
        SparseLayers(experts=128, top_k=8, width=768, dense_width=6144,
                     experts_keys=("num_local_experts", "num_experts")),
        EveryLayerWindow(),
        Rope(),
        *token_ids(pad=None, bos=None, eos=None),
    ],
    tensors=[*LLAMA_TENSORS, *MOE_TENSORS,
             Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
             Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm")],
    extra_tensors=EXPERTS,
    heads=HEADS,
)

FAMILY = hf_family(name="qwen3-moe", table=TABLE,
                   description="Qwen3-MoE: Qwen3 attention (per-head q/k RMSNorm), routed experts, dense MLPs on "
                               "the layers mlp_only_layers names")


@hookimpl
def register_families(register):
    register(FAMILY)
