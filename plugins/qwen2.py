"""The Qwen2 family: the Llama layout with a q/k/v bias (no output bias), and sliding windows on
the layers ``layer_types`` names.

Hugging Face Qwen2 (``model_type: qwen2``, Qwen 1.5, 2 and 2.5) has the Llama layout under
``model.`` (``transformer.`` for the QA head). A layer slides over ``sliding_window`` tokens when
``use_sliding_window`` is on and its ``layer_types`` entry is ``sliding_attention``; a config
without ``layer_types`` slides the layers from ``max_window_layers`` on. The spec keeps those
names in its ``layer_types`` and gives the sliding layers their window through a ``layers`` entry."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Rope, hf_family, llama_config, token_ids,
                                   without)

SLIDING, FULL = "sliding_attention", "full_attention"


class WindowLayers:
    """``use_sliding_window``, ``sliding_window``, ``max_window_layers`` and ``layer_types`` <-> the
    spec's ``layer_types`` and a ``layers`` entry with the window of the sliding layers (Qwen2,
    Qwen3, SmolLM3: transformers gives a ``sliding_attention`` layer the window only when
    ``use_sliding_window`` is on). ``window`` and ``max_window_layers``: the family's defaults (None:
    it has no ``max_window_layers``)."""

    def __init__(self, *, window: int | None = 4096, max_window_layers: int | None = 28):
        self.window, self.max_window_layers = window, max_window_layers

    def to_spec(self, config, data):
        window = config.get("sliding_window", self.window) if config.get("use_sliding_window", False) else None
        n, start = data["num_layers"], config.get("max_window_layers", self.max_window_layers) or 0
        types = config.get("layer_types") or [SLIDING if window is not None and i >= start else FULL
                                              for i in range(n)]
        unknown = sorted(set(types) - {SLIDING, FULL})
        if unknown:
            raise CheckpointError(f"config.json layer_types names {unknown}; supported: {[SLIDING, FULL]}")
        if SLIDING not in types:
            return
        if window is None:
            raise CheckpointError("config.json layer_types names sliding_attention layers but use_sliding_window is "
                                  "false or sliding_window is null: transformers then masks those layers with no "
                                  "window it can state")
        data["layer_types"] = list(types)
        data.setdefault("layers", []).append({"type": SLIDING, "attention": {"sliding_window": window}})

    def to_config(self, spec, config):
        windows = [getattr(layer.attention, "sliding_window", None) for layer in spec.layer_specs]
        slides = [i for i, w in enumerate(windows) if w is not None]
        config["use_sliding_window"] = bool(slides)
        config["sliding_window"] = windows[slides[0]] if slides else None  # read back: one window for all
        if self.max_window_layers is not None:
            config["max_window_layers"] = slides[0] if slides else spec.num_layers
        config["layer_types"] = [FULL if w is None else SLIDING for w in windows]


TABLE = HFTable(
    display="Qwen2",
    model_types=("qwen2",),
    architectures={
        "Qwen2ForCausalLM": "causal_lm",
        "Qwen2ForSequenceClassification": "sequence_classification",
        "Qwen2ForTokenClassification": "token_classification",
        "Qwen2ForQuestionAnswering": "question_answering",
        "Qwen2Model": None,
    },
    bases={"Qwen2ForQuestionAnswering": "transformer."},
    config=[
        *without(llama_config(vocab_size=151936, max_positions=32768, kv_heads=32, intermediate_size=22016),
                 "attention.qkv_bias", "attention.out_bias", "mlp.bias"),
        Fixed("attention.qkv_bias", True), Fixed("attention.out_bias", False), Fixed("mlp.bias", False),
        WindowLayers(),
        Rope(),
        *token_ids(pad=None, bos=None, eos=None),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="qwen2", table=TABLE,
                   description="Qwen2: the Llama layout with q/k/v bias, sliding windows on the layers layer_types "
                               "names")


@hookimpl
def register_families(register):
    register(FAMILY)
