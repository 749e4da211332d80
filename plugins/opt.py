"""The OPT family: learned positions at offset 2, LayerNorm, separate q/k/v, plain ReLU MLP, tied LM head.

Hugging Face OPT (``model_type: opt``) keeps its layers under ``model.decoder.`` (``decoder.`` in
the bare model); ``enable_bias`` switches every projection bias at once. ``do_layer_norm_before``
false is OPT-350m's post-norm wiring, which has no final norm. OPT-350m also embeds in a narrower
width (``word_embed_proj_dim``) with projections in and out of the layers, which no block of ours
has: that is refused."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HEADS, Activation, Expect, Fixed, HFTable, Key, Tensor, hf_family, token_ids


class Wiring:
    """``do_layer_norm_before`` <-> pre-norm (with a final norm unless the old
    ``_remove_final_layer_norm``) or post-norm without one."""

    def to_spec(self, config, data):
        before = config.get("do_layer_norm_before", True)
        data.setdefault("wiring", {})["kind"] = "pre_norm" if before else "post_norm"
        data["final_norm"] = before and not config.get("_remove_final_layer_norm", False)

    def to_config(self, spec, config):
        before = spec.wiring.kind != "post_norm"  # another kind: the read-back check names it
        config["do_layer_norm_before"] = before
        config["_remove_final_layer_norm"] = before and not spec.final_norm


class EmbeddingWidth:
    """``word_embed_proj_dim`` must be the hidden size (no project_in / project_out)."""

    def to_spec(self, config, data):
        width = config.get("word_embed_proj_dim")
        if width is not None and width != data["hidden_size"]:
            raise CheckpointError(f"config.json word_embed_proj_dim = {width} is not supported (only hidden_size = "
                                  f"{data['hidden_size']}): it embeds in a narrower width with projections in and "
                                  f"out of the layers (project_in, project_out), as OPT-350m")

    def to_config(self, spec, config):
        config["word_embed_proj_dim"] = spec.hidden_size


TABLE = HFTable(
    display="OPT",
    model_types=("opt",),
    architectures={
        "OPTForCausalLM": "causal_lm",
        "OPTForSequenceClassification": "sequence_classification",
        "OPTForQuestionAnswering": "question_answering",
        "OPTModel": None,
    },
    base="model.decoder.",
    bases={"OPTModel": "decoder."},
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("embedding.learned_positions", {"offset": 2}),
        Fixed("position.kind", "none"), Fixed("norm.kind", "layernorm"), Fixed("norm.eps", 1e-5),
        Fixed("attention.kind", "gqa"), Fixed("mlp.kind", "plain"),
        Key("vocab_size", "vocab_size", 50272),
        Key("hidden_size", "hidden_size", 768),
        Key("num_hidden_layers", "num_layers", 12),
        Key("num_attention_heads", "attention.num_heads", 12),
        Key("max_position_embeddings", "max_positions", 2048),
        Key("init_std", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", True),
        # One flag for every bias: export writes the last row's field, and the read-back check
        # names any of the others that differs from it.
        Key("enable_bias", "mlp.bias", True),
        Key("enable_bias", "attention.out_bias", True),
        Key("enable_bias", "attention.qkv_bias", True),
        Key("ffn_dim", "mlp.intermediate_size", 3072),
        Activation("activation_function", default="relu"),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("dropout", "wiring.dropout", 0.1),
        Key("layer_norm_elementwise_affine", "norm.affine", True),
        Expect("layerdrop", 0.0, "it skips whole layers at random in training"),
        Wiring(),
        EmbeddingWidth(),
        *token_ids(pad=1, bos=2, eos=2),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}embed_tokens"),
        Tensor("embedding.positions", "{base}embed_positions"),
        Tensor("final_norm", "{base}final_layer_norm"),
        Tensor("layers.{i}.attn_norm", "{base}layers.{i}.self_attn_layer_norm"),
        Tensor("layers.{i}.attention.qkv.q", "{base}layers.{i}.self_attn.q_proj"),
        Tensor("layers.{i}.attention.qkv.k", "{base}layers.{i}.self_attn.k_proj"),
        Tensor("layers.{i}.attention.qkv.v", "{base}layers.{i}.self_attn.v_proj"),
        Tensor("layers.{i}.attention.out", "{base}layers.{i}.self_attn.out_proj"),
        Tensor("layers.{i}.mlp_norm", "{base}layers.{i}.final_layer_norm"),
        Tensor("layers.{i}.mlp.up", "{base}layers.{i}.fc1"),
        Tensor("layers.{i}.mlp.down", "{base}layers.{i}.fc2"),
    ],
    heads=HEADS,
)

FAMILY = hf_family(name="opt", table=TABLE,
                   description="OPT: learned positions (offset 2), LayerNorm, pre- or post-norm, plain ReLU MLP, "
                               "tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
