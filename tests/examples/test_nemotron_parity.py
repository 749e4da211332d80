"""The example plugin's Nemotron family against transformers: every head, partial RoPE, its own
LayerNorm1P and squared-ReLU blocks, biases, GQA and tied embeddings."""

import pytest
import transformers

import archcomposer
from tests.plugins.parity import Inputs, build_reference, check_parity, check_shipped_spec, report

FAMILY = "nemotron"
INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.fixture(scope="module", autouse=True)
def report_largest_difference(nemotron_plugin):
    yield
    print("\n" + report(FAMILY))


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})
    return transformers.NemotronConfig(**{**fields, **overrides})


def position_ids(inputs):
    """transformers' forward counts positions from 0 including pads; ours follows the mask."""
    return {"position_ids": inputs.position_ids}


@pytest.mark.parametrize(("architecture", "head"), [
    ("NemotronForCausalLM", "causal_lm"),
    ("NemotronForSequenceClassification", "sequence_classification"),
    ("NemotronForTokenClassification", "token_classification"),
    ("NemotronForQuestionAnswering", "question_answering"),
    ("NemotronModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.norm.kind, ours.spec.mlp.kind) == ("layernorm1p", "squared_relu")
    assert (ours.spec.position.kind, ours.spec.position.fraction) == ("partial_rope", 0.5)


@pytest.mark.parametrize("overrides", [
    {"attention_bias": True, "mlp_bias": True},
    {"num_key_value_heads": 1, "tie_word_embeddings": True,
     "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0}},
], ids=["biases", "mqa-tied-full-rotary"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    check_parity(tmp_path, family=FAMILY, architecture="NemotronForCausalLM", config=config(**overrides),
                 head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)


def test_another_activation_is_refused_naming_the_key(tmp_path):
    build_reference("NemotronForCausalLM", config(hidden_act="silu")).save_pretrained(tmp_path)
    with pytest.raises(archcomposer.CheckpointError, match=r"config.json hidden_act = 'silu' is not supported "
                                                           r"\(only 'relu2'\): the squared_relu MLP is relu\^2"):
        archcomposer.from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face Nemotron: its "
                                    "config.json reads back as 'layernorm1p'"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face Nemotron"),
    ({"layers": [{"range": [0, 1], "position": {"kind": "rope"}}]},
     r"position.kind \(layers 0\) = 'rope' has no equivalent in Hugging Face Nemotron"),
], ids=["rmsnorm", "sandwich", "layers"])
def test_export_of_what_nemotron_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**archcomposer.load_spec("tiny-nemotron").to_dict(), **change}
    with pytest.raises(archcomposer.CheckpointError, match=message):
        archcomposer.build_model(spec, seed=0).save_pretrained(tmp_path / "hf", format="hf")


def test_shipped_spec_has_the_published_size():
    published = transformers.NemotronConfig(hidden_size=4096, intermediate_size=16384, num_hidden_layers=32,
                                            num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                                            vocab_size=256000, max_position_embeddings=4096)
    assert check_shipped_spec("nemotron-3-8b", "NemotronForCausalLM", published) == 8_540_135_424
