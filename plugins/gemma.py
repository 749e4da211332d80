"""The Gemma family: Gemma's RMSNorm (scale 1 + w), embedding scaled by sqrt(hidden_size), GeGLU
(tanh GELU), head_dim independent of width, tied LM head.

Hugging Face Gemma (``model_type: gemma``) has the Llama layout under ``model.``. Its norms scale
by ``1 + weight`` (``norm.unit_offset``, the weights stored as Gemma stores them) and its token
embedding is multiplied by ``sqrt(hidden_size)`` rounded to the model dtype. ``hidden_act: gelu``
means the tanh GELU (``GemmaConfig`` converts it, for the first Gemma releases). The rows shared
with Gemma 2 and Gemma 3 live here (``gemma_config``)."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Activation, Fixed, HFTable, Key, Rope, hf_family,
                                   llama_config, token_ids, without)

_TANH = Activation("hidden_act", default="gelu_pytorch_tanh")


def _gemma_activation(name: str) -> str:
    """Gemma's activation names: ``gelu`` is the tanh approximation (as GemmaConfig reads it)."""
    return _TANH.read("gelu_pytorch_tanh" if name == "gelu" else name)


class Causal:
    """``use_bidirectional_attention`` (Gemma's embedding variants) attends both ways; ours is
    causal. transformers' default is None (Gemma, Gemma 2) or False (Gemma 3): both are causal."""

    def to_spec(self, config, data):
        if config.get("use_bidirectional_attention"):
            raise CheckpointError("config.json use_bidirectional_attention = True is not supported (only causal "
                                  "attention): every token would also attend to the tokens after it")

    def to_config(self, spec, config):
        pass


def gemma_config(*, activation: str, gelu_is_tanh: bool = False, vocab_size: int, hidden_size: int, layers: int,
                 heads: int, kv_heads: int, intermediate_size: int, max_positions: int, wiring: str) -> list:
    """The config rows Gemma, Gemma 2 and Gemma 3 share, with each one's transformers defaults:
    the Llama layout's rows (``llama_config``) with Gemma's norm, embedding and ``wiring``, no MLP
    bias, the activation under ``activation`` (``hidden_act`` or ``hidden_activation``), and
    ``use_bidirectional_attention`` for causality (Gemma has no ``is_causal``)."""
    act = Key(activation, "mlp.activation", "gelu_pytorch_tanh", read=_gemma_activation, write=_TANH.write) \
        if gelu_is_tanh else Activation(activation, default="gelu_pytorch_tanh")
    return [
        *without(llama_config(vocab_size=vocab_size, max_positions=max_positions, heads=heads, tied=True,
                              hidden_size=hidden_size, layers=layers, kv_heads=kv_heads, head_dim=256,
                              intermediate_size=intermediate_size),
                 "wiring.kind", "mlp.activation", "mlp.bias", "is_causal"),
        Fixed("embedding.scale", "sqrt_hidden_size"),
        Fixed("embedding.scale_inputs_embeds", False),  # Gemma scales inside embed_tokens
        Fixed("norm.unit_offset", True), Fixed("wiring.kind", wiring),
        act,
        Causal(),
        *token_ids(pad=0, bos=2, eos=1),
    ]


TABLE = HFTable(
    display="Gemma",
    model_types=("gemma",),
    architectures={
        "GemmaForCausalLM": "causal_lm",
        "GemmaForSequenceClassification": "sequence_classification",
        "GemmaForTokenClassification": "token_classification",
        "GemmaModel": None,
    },
    config=[
        *gemma_config(activation="hidden_act", gelu_is_tanh=True, vocab_size=256000, hidden_size=3072, layers=28,
                      heads=16, kv_heads=16, intermediate_size=24576, max_positions=8192, wiring="pre_norm"),
        Rope(),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="gemma", table=TABLE,
                   description="Gemma: RMSNorm scaled by 1 + w, embedding scaled by sqrt(hidden_size), GeGLU, "
                               "head_dim independent of width, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
