"""The GPT-J family: partial interleaved RoPE, parallel attention and MLP on one LayerNorm, LM head bias.

Hugging Face GPT-J (``model_type: gptj``) rotates the first ``rotary_dim`` channels of each head
in adjacent pairs (``rotary_dim`` is a width, our ``fraction`` its share of the head; theta is
always 10000), has no attention biases but MLP ones (``fc_in``, ``fc_out``), and an LM head with a
bias. GPT-2's config key names (``n_embd``, ``n_layer``, ...), under ``transformer.``."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HEADS, Activation, Fixed, HFTable, Key, Tensor, hf_family, token_ids
from archcomposer.plugins.gpt2 import InnerWidth

THETA = 10000.0  # GPT-J's create_sinusoidal_positions


class RotaryDim:
    """``rotary_dim`` (channels rotated per head; None: all of them) <-> ``partial_rope`` with
    ``fraction`` rotary_dim / head_dim, interleaved."""

    def to_spec(self, config, data):
        head_dim = data["hidden_size"] // data["attention"]["num_heads"]
        width = config.get("rotary_dim", 64)
        width = head_dim if width is None else width
        fraction = width / head_dim
        if not (0 < width <= head_dim and width % 2 == 0 and int(head_dim * fraction) == width):
            raise CheckpointError(f"config.json rotary_dim = {width} is not supported: it must be an even number of "
                                  f"channels of a head (head_dim = {head_dim}) that is a whole fraction of it")
        data["position"] = {"kind": "partial_rope", "theta": THETA, "fraction": fraction, "interleaved": True}

    def to_config(self, spec, config):
        position, head_dim = spec.position, spec.attention.head_dim
        if position.kind == "partial_rope":
            config["rotary_dim"] = position.rotary_dim(head_dim)
        elif position.kind == "rope":
            config["rotary_dim"] = head_dim  # the read-back check names the kind (GPT-J's pairs are adjacent)


TABLE = HFTable(
    display="GPT-J",
    model_types=("gptj",),
    architectures={
        "GPTJForCausalLM": "causal_lm",
        "GPTJForSequenceClassification": "sequence_classification",
        "GPTJForQuestionAnswering": "question_answering",
        "GPTJModel": None,
    },
    base="transformer.",
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.qkv_bias", False), Fixed("attention.out_bias", False), Fixed("mlp.kind", "plain"),
        Fixed("mlp.bias", True), Fixed("wiring.kind", "parallel"), Fixed("wiring.shared_norm", True),
        Key("vocab_size", "vocab_size", 50400),
        Key(("n_embd", "hidden_size"), "hidden_size", 4096),
        Key(("n_layer", "num_hidden_layers"), "num_layers", 28),
        Key(("n_head", "num_attention_heads"), "attention.num_heads", 16),
        Key(("n_positions", "max_position_embeddings"), "max_positions", 2048),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("layer_norm_epsilon", "norm.eps", 1e-5),
        Key("embd_pdrop", "embedding.dropout", 0.0),
        Key("attn_pdrop", "attention.dropout", 0.0),
        Key("resid_pdrop", "wiring.dropout", 0.0),
        Activation("activation_function", default="gelu_new"),
        InnerWidth(),
        RotaryDim(),
        *token_ids(pad=None, bos=50256, eos=50256),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}wte"),
        Tensor("final_norm", "{base}ln_f"),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.ln_1"),
        Tensor("layers.{i}.attention.qkv.q", "{base}h.{i}.attn.q_proj"),
        Tensor("layers.{i}.attention.qkv.k", "{base}h.{i}.attn.k_proj"),
        Tensor("layers.{i}.attention.qkv.v", "{base}h.{i}.attn.v_proj"),
        Tensor("layers.{i}.attention.out", "{base}h.{i}.attn.out_proj"),
        Tensor("layers.{i}.mlp.up", "{base}h.{i}.mlp.fc_in"),
        Tensor("layers.{i}.mlp.down", "{base}h.{i}.mlp.fc_out"),
    ],
    heads=HEADS,
    ignored=(r"\.attn\.(masked_)?bias$",),  # the causal-mask buffers older GPT-J checkpoints hold
    head_fields={"causal_lm": {"bias": True}},
)

FAMILY = hf_family(name="gpt-j", table=TABLE,
                   description="GPT-J: partial interleaved RoPE, parallel attention and MLP on one LayerNorm, "
                               "LM head with bias")


@hookimpl
def register_families(register):
    register(FAMILY)
