"""The DeepSeek-V2 family: DeepSeek-V3's layout (``archcomposer.plugins.deepseek_v3``) with RoPE
always in adjacent pairs (transformers' complex rotation; no ``rope_interleave`` key), ``mlp_bias``
on the dense MLP, and its own defaults. Only configs whose layers are all dense
(``first_k_dense_replace >= num_hidden_layers``; transformers' default 0 makes every layer a
mixture of experts) are read."""

from archcomposer import hookimpl
from archcomposer.hf_table import HFTable, hf_family
from archcomposer.plugins.deepseek_v3 import TENSORS, config_rows

TABLE = HFTable(
    display="DeepSeek-V2",
    model_types=("deepseek_v2",),
    architectures={
        "DeepseekV2ForCausalLM": "causal_lm",
        "DeepseekV2ForSequenceClassification": "sequence_classification",
        "DeepseekV2Model": None,
    },
    config=config_rows(vocab_size=102400, hidden_size=4096, layers=32, max_positions=2048, heads=32,
                       intermediate_size=11008, dense_layers=0, mlp_bias=False, interleave_key=False, bos=1, eos=2),
    tensors=TENSORS,
    heads={"causal_lm": "lm_head", "sequence_classification": "score"},
)

FAMILY = hf_family(name="deepseek-v2", table=TABLE,
                   description="DeepSeek-V2: multi-head latent attention, RoPE in pairs, YaRN with mscale; dense "
                               "layers only (mixture-of-experts layers not yet)")


@hookimpl
def register_families(register):
    register(FAMILY)
