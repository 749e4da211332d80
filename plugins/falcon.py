"""The Falcon family: three layouts under one ``model_type``, each a fused QKV stored per KV group.

Hugging Face Falcon (``model_type: falcon``), under ``transformer.``:

- Falcon-RW (falcon-rw-1b): ``alibi``, sequential pre-norm layers (``parallel_attn: false``), MHA
  with QKV rows ``[H, 3, Dh]``, biases (``bias: true``). Falcon adds ALiBi to the raw scores and
  scales the sum, so the bias is multiplied by 1/sqrt(head_dim) (ALiBi ``scaled``), and computes
  it in bfloat16 whatever the model's dtype (``bias_dtype``).
- Falcon 7B: rotary, attention and MLP in parallel behind one norm (``input_layernorm``),
  multi-query attention with rows ``[q (H heads) | k | v]``, no biases.
- The new decoder architecture (40B, 180B): ``num_kv_heads`` KV groups, rows ``[Hkv, g + 2, Dh]``
  (each group's g queries, its key, its value), always parallel; two norms (``ln_attn``,
  ``ln_mlp``), or one shared norm when ``num_ln_in_parallel_attn`` is 1.

All three are ``GROUPED_QKV`` (MHA is g = 1, multi-query Hkv = 1). The MLP is plain
(``dense_h_to_4h``, GELU, ``dense_4h_to_h``), ``ffn_hidden_size`` wide (4 x hidden_size when
absent); LayerNorms with bias; the LM head is tied by default."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import (GROUPED_QKV, HEADS, Activation, Fixed, HFTable, Key, Rope, Tensor, hf_family,
                                   token_ids)


def _parallel(config: dict) -> bool:
    return bool(config.get("new_decoder_architecture") or config.get("parallel_attn", True))


class _Layout:
    """``new_decoder_architecture``, ``multi_query``, ``parallel_attn``, ``num_kv_heads`` and
    ``num_ln_in_parallel_attn`` <-> the KV heads and the wiring."""

    def to_spec(self, config, data):
        H = config.get("num_attention_heads", 71)
        kv = config.get("num_kv_heads") or H
        attention, wiring = data.setdefault("attention", {}), data.setdefault("wiring", {})
        norms = config.get("num_ln_in_parallel_attn")
        if config.get("new_decoder_architecture", False):
            if not config.get("parallel_attn", True):
                raise CheckpointError("config.json parallel_attn = False is not supported with "
                                      "new_decoder_architecture: transformers' Falcon cannot run it (its new decoder "
                                      "layers are always parallel)")
            if norms not in (None, 1, 2):
                raise CheckpointError(f"config.json num_ln_in_parallel_attn = {norms!r} is not supported (only 1 or 2)")
            attention["num_kv_heads"] = kv
            wiring.update(kind="parallel", shared_norm=norms == 1)
            return
        if config.get("parallel_attn", True) and norms == 2:
            raise CheckpointError("config.json num_ln_in_parallel_attn = 2 is not supported without "
                                  "new_decoder_architecture: transformers' Falcon builds ln_attn and ln_mlp but its "
                                  "forward reads input_layernorm, so it cannot run this config")
        multi_query = config.get("multi_query", True)
        if not multi_query and kv != H:
            raise CheckpointError(f"config.json num_kv_heads = {kv} is not supported with multi_query and "
                                  f"new_decoder_architecture false: transformers' Falcon then splits the fused QKV "
                                  f"into num_attention_heads ({H}) keys and values")
        attention["num_kv_heads"] = 1 if multi_query else H
        wiring.update(kind="parallel", shared_norm=True) if config.get("parallel_attn", True) \
            else wiring.update(kind="pre_norm")

    def to_config(self, spec, config):
        a, w = spec.attention, spec.wiring
        H, kv = a.num_heads, getattr(a, "num_kv_heads", a.num_heads)
        parallel = w.kind == "parallel"
        new = parallel and (not w.shared_norm or kv not in (1, H))
        multi_query = not new and kv == 1 and H > 1
        config.update(new_decoder_architecture=new, parallel_attn=parallel, multi_query=multi_query,
                      num_kv_heads=kv if new or multi_query else H)
        if new:
            config["num_ln_in_parallel_attn"] = 1 if w.shared_norm else 2


class _Position:
    """``alibi`` (scaled with the scores, computed in bfloat16) or rotary (``rope_parameters``)."""

    rope = Rope()

    def to_spec(self, config, data):
        if config.get("alibi", False):
            data["position"] = {"kind": "alibi", "scaled": True, "bias_dtype": "bfloat16"}
        else:
            self.rope.to_spec(config, data)

    def to_config(self, spec, config):
        config["alibi"] = spec.position.kind == "alibi"
        self.rope.to_config(spec, config)


class _Dropout:
    """``hidden_dropout`` drops each layer's branch outputs out (the wiring's dropout);
    ``attention_dropout`` the attention probabilities, with ALiBi only (rotary Falcon applies none),
    and, in sequential layers, the attention branch's output."""

    def to_spec(self, config, data):
        hidden, attn = config.get("hidden_dropout") or 0.0, config.get("attention_dropout") or 0.0
        if _parallel(config) and hidden:
            raise CheckpointError(f"config.json hidden_dropout = {hidden} is not supported with parallel attention: "
                                  f"Falcon drops out the sum of the attention and MLP outputs with one mask, "
                                  f"archcomposer's parallel wiring each branch with its own")
        if not _parallel(config) and attn != hidden:
            raise CheckpointError(f"config.json attention_dropout = {attn} is not supported with hidden_dropout = "
                                  f"{hidden} in sequential layers: Falcon drops out the attention branch with the "
                                  f"one and the MLP branch with the other; archcomposer's wiring has one dropout")
        data.setdefault("wiring", {})["dropout"] = hidden
        data.setdefault("attention", {})["dropout"] = attn if config.get("alibi", False) else 0.0

    def to_config(self, spec, config):
        dropout = spec.wiring.dropout
        config["hidden_dropout"] = dropout
        config["attention_dropout"] = getattr(spec.attention, "dropout", 0.0) if spec.position.kind == "alibi" \
            else dropout if spec.wiring.kind == "pre_norm" else 0.0


class _MLPWidth:
    """``ffn_hidden_size``, 4 x hidden_size when the config lacks it (Falcon 7B's config.json)."""

    def to_spec(self, config, data):
        data.setdefault("mlp", {})["intermediate_size"] = config.get("ffn_hidden_size") or 4 * data["hidden_size"]

    def to_config(self, spec, config):
        config["ffn_hidden_size"] = spec.mlp.intermediate_size


def _two_norms(layer) -> bool:
    return layer.wiring.kind == "parallel" and not layer.wiring.shared_norm


def _one_norm(layer) -> bool:
    return not _two_norms(layer)


TABLE = HFTable(
    display="Falcon",
    model_types=("falcon",),
    architectures={
        "FalconForCausalLM": "causal_lm",
        "FalconForSequenceClassification": "sequence_classification",
        "FalconForTokenClassification": "token_classification",
        "FalconForQuestionAnswering": "question_answering",
        "FalconModel": None,
    },
    base="transformer.",
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.fused_qkv", True), Fixed("mlp.kind", "plain"),
        Key("vocab_size", "vocab_size", 65024),
        Key(("hidden_size", "n_embed"), "hidden_size", 4544),
        Key("num_hidden_layers", "num_layers", 32),
        Key("num_attention_heads", "attention.num_heads", 71),
        Key("max_position_embeddings", "max_positions", 2048),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", True),
        Key("layer_norm_epsilon", "norm.eps", 1e-5),
        Key("bias", "attention.qkv_bias", False),
        Key("bias", "attention.out_bias", False),
        Key("bias", "mlp.bias", False),
        Activation("activation", default="gelu"),
        _Layout(), _Position(), _Dropout(), _MLPWidth(),
        *token_ids(pad=None, bos=11, eos=11),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}word_embeddings"),
        Tensor("final_norm", "{base}ln_f"),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.input_layernorm", when=_one_norm),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.ln_attn", when=_two_norms),
        Tensor("layers.{i}.attention.qkv.proj", "{base}h.{i}.self_attention.query_key_value", GROUPED_QKV),
        Tensor("layers.{i}.attention.out", "{base}h.{i}.self_attention.dense"),
        Tensor("layers.{i}.mlp_norm", "{base}h.{i}.post_attention_layernorm", when=_one_norm),
        Tensor("layers.{i}.mlp_norm", "{base}h.{i}.ln_mlp", when=_two_norms),
        Tensor("layers.{i}.mlp.up", "{base}h.{i}.mlp.dense_h_to_4h"),
        Tensor("layers.{i}.mlp.down", "{base}h.{i}.mlp.dense_4h_to_h"),
    ],
    heads={**HEADS, "token_classification": "classifier"},
)

FAMILY = hf_family(name="falcon", table=TABLE,
                   description="Falcon: RW (ALiBi, sequential), 7B (rotary, multi-query, parallel) and the new "
                               "decoder architecture (grouped KV, two parallel norms); fused QKV per KV group")


@hookimpl
def register_families(register):
    register(FAMILY)
