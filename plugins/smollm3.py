"""The SmolLM3 family: the Llama layout with no RoPE on some layers (NoPE), and sliding windows on
the layers ``layer_types`` names.

Hugging Face SmolLM3 (``model_type: smollm3``) has the Llama layout under ``model.``
(``transformer.`` for the QA head). ``no_rope_layers`` has a 1 for each layer that rotates q and
k, a 0 for one that does not (default: every ``no_rope_layer_interval``-th layer has none); the
spec gives those layers ``position: {kind: none}`` through a ``layers`` entry. transformers masks a
``sliding_attention`` layer with ``sliding_window`` whether or not ``use_sliding_window`` is on
(that flag only picks the default ``layer_types``: the NoPE layers)."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HEADS, LLAMA_TENSORS, HFTable, Rope, hf_family, llama_config, token_ids
from archcomposer.plugins.qwen2 import FULL, SLIDING, WindowLayers


class NoRopeLayers:
    """``no_rope_layers`` (or ``no_rope_layer_interval``) <-> a ``layers`` entry that gives the
    NoPE layers ``position: {kind: none}``."""

    def to_spec(self, config, data):
        n = data["num_layers"]
        interval = config.get("no_rope_layer_interval", 4)
        flags = config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
        if len(flags) < n:
            raise CheckpointError(f"config.json no_rope_layers has {len(flags)} entries; expected one per layer, "
                                  f"num_hidden_layers = {n}")
        nope = [i for i in range(n) if not flags[i]]
        if nope:
            data.setdefault("layers", []).append({"indices": nope, "position": {"kind": "none"}})

    def to_config(self, spec, config):
        config["no_rope_layers"] = [int(layer.position.kind != "none") for layer in spec.layer_specs]


class SmolLM3Windows(WindowLayers):
    """As ``WindowLayers``, but the window applies to the ``sliding_attention`` layers whatever
    ``use_sliding_window`` says, and the default ``layer_types`` slide the NoPE layers."""

    def __init__(self):
        super().__init__(window=None, max_window_layers=None)

    def to_spec(self, config, data):
        if not config.get("layer_types"):
            n, interval = data["num_layers"], config.get("no_rope_layer_interval", 4)
            flags = config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
            slides = config.get("use_sliding_window", False) and config.get("sliding_window") is not None
            config = {**config, "layer_types": [SLIDING if slides and not flags[i] else FULL for i in range(n)]}
        super().to_spec({**config, "use_sliding_window": True}, data)


TABLE = HFTable(
    display="SmolLM3",
    model_types=("smollm3",),
    architectures={
        "SmolLM3ForCausalLM": "causal_lm",
        "SmolLM3ForSequenceClassification": "sequence_classification",
        "SmolLM3ForTokenClassification": "token_classification",
        "SmolLM3ForQuestionAnswering": "question_answering",
        "SmolLM3Model": None,
    },
    bases={"SmolLM3ForQuestionAnswering": "transformer."},
    config=[
        *llama_config(vocab_size=128256, max_positions=32768, tied=True, hidden_size=2048, layers=36, heads=16,
                      kv_heads=4),
        NoRopeLayers(),
        SmolLM3Windows(),
        Rope(theta=2000000.0),
        *token_ids(pad=128004, bos=128000, eos=128001),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="smollm3", table=TABLE,
                   description="SmolLM3: the Llama layout with no RoPE on some layers (NoPE), sliding windows on "
                               "the layers layer_types names")


@hookimpl
def register_families(register):
    register(FAMILY)
