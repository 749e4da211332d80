"""The example plugin's Llama family against transformers: every head, Llama 3.1's scaled RoPE
(``llama3_rope``), attention and MLP biases, tied embeddings; and its ``sliding_window`` attention
against Mistral, whose attention it is."""

import pytest
import torch
import transformers

import archcomposer
from tests.plugins.parity import Inputs, build_reference, check_parity, report

FAMILY = "llama"
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}
INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.fixture(scope="module", autouse=True)
def report_largest_difference(llama_plugin):
    yield
    print("\n" + report(FAMILY))


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters=LLAMA3)
    return transformers.LlamaConfig(**{**fields, **overrides})


def position_ids(inputs):
    """transformers' forward counts positions from 0 including pads; ours follows the mask."""
    return {"position_ids": inputs.position_ids}


@pytest.mark.parametrize(("architecture", "head"), [
    ("LlamaForCausalLM", "causal_lm"),
    ("LlamaForSequenceClassification", "sequence_classification"),
    ("LlamaForQuestionAnswering", "question_answering"),
    ("LlamaModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.position.kind == "llama3_rope" and ours.spec.position.original_max_positions == 8


@pytest.mark.parametrize("overrides", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}, "attention_bias": True, "mlp_bias": True},
    {"num_key_value_heads": 1, "tie_word_embeddings": True, "head_dim": 16},
], ids=["default-rope-with-biases", "mqa-tied-head-dim"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    check_parity(tmp_path, family=FAMILY, architecture="LlamaForCausalLM", config=config(**overrides),
                 head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)


def test_the_scaled_frequencies_matter():
    """Positions beyond original_max_positions rotate differently under llama3 scaling than under
    plain RoPE (so the parity above tests the scaling, not just RoPE)."""
    spec = archcomposer.load_spec("tiny-llama").to_dict()
    scaled = archcomposer.build_model(spec, seed=0)
    plain = archcomposer.build_model({**spec, "position": {"kind": "rope", "theta": spec["position"]["theta"]}}, seed=0)
    ids = torch.randint(3, 256, (1, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (scaled(ids).logits - plain(ids).logits).abs().max() > 1e-3


def test_unsupported_rope_type_is_a_clear_error(tmp_path):
    build_reference("LlamaForCausalLM", config(rope_parameters={"rope_type": "linear", "rope_theta": 500.0,
                                                                 "factor": 2.0})).save_pretrained(tmp_path)
    with pytest.raises(archcomposer.CheckpointError, match="rope_type = 'linear' is not supported by the llama family "
                                                       r"\(only 'default' and 'llama3'\)"):
        archcomposer.from_pretrained(tmp_path)


def test_sliding_window_export_is_refused_naming_the_field(tmp_path):
    model = archcomposer.build_model("tiny-llama-swa", seed=0)
    with pytest.raises(archcomposer.CheckpointError, match="attention.kind = 'sliding_window' has no equivalent in "
                                                       "Hugging Face Llama, which needs 'gqa'"):
        model.save_pretrained(tmp_path / "hf", format="hf")


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm", "dropout": 0.1}}, "wiring.dropout = 0.1 has no equivalent in Hugging Face Llama"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face Llama"),
    ({"layers": [{"range": [0, 1], "position": {"kind": "rope"}}]},
     "layers: per-layer differences have no equivalent in Hugging Face Llama"),
], ids=["wiring-dropout", "sandwich", "layers"])
def test_export_of_what_llama_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**archcomposer.load_spec("tiny-llama").to_dict(), **change}
    with pytest.raises(archcomposer.CheckpointError, match=message):
        archcomposer.build_model(spec, seed=0).save_pretrained(tmp_path / "hf", format="hf")


@pytest.mark.parametrize("window", [1, 3, 64])
def test_sliding_window_matches_mistral(tmp_path, window):
    """Mistral is Llama with a sliding window and the same tensor names: its checkpoint, read
    through the llama family (model_type rewritten), then given our sliding_window attention."""
    mistral = transformers.MistralConfig(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                                         max_position_embeddings=256, rope_parameters={"rope_type": "default",
                                                                                       "rope_theta": 500.0})
    reference = build_reference("MistralForCausalLM", mistral)
    reference.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text.replace('"mistral"', '"llama"').replace("MistralForCausalLM",
                                                                                        "LlamaForCausalLM"))
    full = archcomposer.from_pretrained(tmp_path)
    spec = full.spec.to_dict()
    windowed = {**spec["attention"], "kind": "sliding_window", "window": window}
    ours = archcomposer.build_model({**spec, "attention": windowed})
    ours.load_state_dict(full.state_dict())
    ids = INPUTS.single  # [1, 9]
    with torch.no_grad():
        theirs = reference(ids).logits
        torch.testing.assert_close(ours(ids).logits, theirs, atol=1e-4, rtol=0)
        if window < ids.shape[1]:
            assert (full(ids).logits - theirs).abs().max() > 1e-3  # the window matters here
