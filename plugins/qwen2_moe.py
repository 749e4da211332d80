"""The Qwen2-MoE family (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention with a mixture of experts
and a gated shared expert in the sparse layers, a dense MLP in the others.

Hugging Face Qwen2-MoE (``model_type: qwen2_moe``) has the Llama layout under ``model.``, a
q/k/v bias (``qkv_bias``), and in each sparse layer ``mlp``: a router (``gate``) keeping the
``num_experts_per_tok`` most probable of ``num_experts`` experts (their probabilities renormalised
when ``norm_topk_prob``), experts ``moe_intermediate_size`` wide stored per expert, and a shared
expert ``shared_expert_intermediate_size`` wide scaled by sigmoid(``shared_expert_gate``(x)).
A layer is sparse unless ``mlp_only_layers`` names it or ``decoder_sparse_step`` skips it (layer
i is sparse when (i + 1) % step == 0); dense layers have a gated MLP ``intermediate_size`` wide.
The spec's ``mlp`` is the experts; ``layers`` entries give the dense layers their MLP."""

from archcomposer import hookimpl
from archcomposer.hf_table import (ACTIVATIONS_TO_HF, HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, Tensor,
                                   _activation, expert_tensors, hf_family, llama_config, token_ids, without)
from archcomposer.plugins.qwen2 import FULL, SLIDING, WindowLayers


class SparseLayers:
    """Qwen-MoE's ``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
    ``norm_topk_prob``, ``router_aux_loss_coef``, the shared expert (``shared``: its default width,
    None where the family has none) and which layers are sparse (``decoder_sparse_step``,
    ``mlp_only_layers``) <-> the spec's ``mlp`` (the experts) and a ``layers`` entry with the dense
    MLP (``intermediate_size`` wide) of the other layers. Runs after ``num_hidden_layers``."""

    def __init__(self, *, experts: int, top_k: int, width: int, dense_width: int, shared: int | None = None,
                 experts_keys: tuple[str, ...] = ("num_experts", "num_local_experts")):
        self.experts, self.top_k, self.width, self.dense_width, self.shared = experts, top_k, width, dense_width, shared
        #: The expert count's config keys, the one transformers writes first (the other is its alias).
        self.experts_keys = experts_keys

    def to_spec(self, config: dict, data: dict) -> None:
        activation = _activation(config.get("hidden_act", "silu"))
        dense = {"kind": "gated", "intermediate_size": config.get("intermediate_size", self.dense_width),
                 "activation": activation, "bias": False}
        experts = next((config[k] for k in self.experts_keys if k in config), self.experts)
        step = config.get("decoder_sparse_step", 1) or 1
        only_dense = set(config.get("mlp_only_layers") or [])
        dense_layers = [i for i in range(data["num_layers"])
                        if i in only_dense or experts == 0 or (i + 1) % step != 0]
        if len(dense_layers) == data["num_layers"]:
            data["mlp"] = dense
            return
        data["mlp"] = {"kind": "moe", "num_experts": experts, "top_k": config.get("num_experts_per_tok", self.top_k),
                       "intermediate_size": config.get("moe_intermediate_size", self.width),
                       "activation": activation,
                       "router": {"kind": "softmax", "normalize": config.get("norm_topk_prob", False)},
                       "aux_loss_coef": config.get("router_aux_loss_coef", 0.001)}
        if self.shared is not None:
            data["mlp"]["shared_expert"] = {
                "intermediate_size": config.get("shared_expert_intermediate_size", self.shared), "gated": True}
        if dense_layers:
            data.setdefault("layers", []).append({"indices": dense_layers, "mlp": dense})

    def to_config(self, spec, config: dict) -> None:
        mlps = [layer.mlp for layer in spec.layer_specs]
        moe = next((m for m in mlps if m.kind == "moe"), None)
        dense = next((m for m in mlps if m.kind != "moe"), None)
        config["decoder_sparse_step"] = 1
        config["mlp_only_layers"] = [i for i, m in enumerate(mlps) if m.kind != "moe"]
        config["hidden_act"] = ACTIVATIONS_TO_HF.get((moe or dense).activation)
        if dense is not None:
            config["intermediate_size"] = dense.intermediate_size
        config[self.experts_keys[0]] = moe.num_experts if moe is not None else 0
        if moe is None:
            return
        config.update(num_experts_per_tok=moe.top_k,
                      moe_intermediate_size=moe.intermediate_size,
                      norm_topk_prob=getattr(moe.router, "normalize", None), router_aux_loss_coef=moe.aux_loss_coef)
        if self.shared is not None and moe.shared_expert is not None:
            config["shared_expert_intermediate_size"] = moe.shared_expert.intermediate_size


class MoEWindowLayers(WindowLayers):
    """Qwen2's windows, but a config without ``layer_types`` slides the even layers below
    ``max_window_layers`` (Qwen2-MoE's default), not the layers from it on."""

    def to_spec(self, config, data):
        if not config.get("layer_types"):
            sliding = config.get("use_sliding_window", False)
            start = config.get("max_window_layers", self.max_window_layers)
            config = {**config, "layer_types": [SLIDING if sliding and i % 2 == 0 and i < start else FULL
                                                for i in range(data["num_layers"])]}
        super().to_spec(config, data)


#: The sparse MLP's tensors as Qwen-MoE, OLMoE and others name them (``mlp.gate``, ``mlp.experts``).
MOE_TENSORS = [Tensor("layers.{i}.mlp.router.gate", "{base}layers.{i}.mlp.gate")]
EXPERTS = expert_tensors(experts="{base}layers.{i}.mlp.experts", gate="gate_proj", up="up_proj", down="down_proj")

TABLE = HFTable(
    display="Qwen2-MoE",
    model_types=("qwen2_moe",),
    architectures={
        "Qwen2MoeForCausalLM": "causal_lm",
        "Qwen2MoeForSequenceClassification": "sequence_classification",
        "Qwen2MoeForTokenClassification": "token_classification",
        "Qwen2MoeForQuestionAnswering": "question_answering",
        "Qwen2MoeModel": None,
    },
    config=[
        *without(llama_config(vocab_size=151936, max_positions=32768, heads=16, kv_heads=16, hidden_size=2048,
                              layers=24),
                 "attention.qkv_bias", "attention.out_bias", "mlp.bias", "mlp.kind", "mlp.intermediate_size",
                 "mlp.activation"),
        Key("qkv_bias", "attention.qkv_bias", True), Fixed("attention.out_bias", False),
        SparseLayers(experts=60, top_k=4, width=1408, dense_width=5632, shared=5632),
        MoEWindowLayers(),
        Rope(),
        *token_ids(pad=None, bos=None, eos=None),
    ],
    tensors=[*LLAMA_TENSORS, *MOE_TENSORS,
             Tensor("layers.{i}.mlp.shared.gate_up.gate", "{base}layers.{i}.mlp.shared_expert.gate_proj"),
             Tensor("layers.{i}.mlp.shared.gate_up.up", "{base}layers.{i}.mlp.shared_expert.up_proj"),
             Tensor("layers.{i}.mlp.shared.down", "{base}layers.{i}.mlp.shared_expert.down_proj"),
             Tensor("layers.{i}.mlp.shared_gate", "{base}layers.{i}.mlp.shared_expert_gate")],
    extra_tensors=EXPERTS,
    heads=HEADS,
)

FAMILY = hf_family(name="qwen2-moe", table=TABLE,
                   description="Qwen2-MoE: Qwen2 attention, routed experts plus a sigmoid-gated shared expert, "
                               "dense MLPs on the layers mlp_only_layers names")


@hookimpl
def register_families(register):
    register(FAMILY)
