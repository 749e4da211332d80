"""GPT-NeoX checkpoints against transformers: every head, parallel and sequential residuals, rotary
fractions from a quarter to the whole head, attention biases on and off, tied and untied LM heads,
Pythia's older config keys."""

import json

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gpt-neox"
report_largest_difference = largest_difference_report(FAMILY)


def config(partial_rotary_factor=0.25, scaling=None, **overrides):
    fields = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                   "partial_rotary_factor": partial_rotary_factor, **(scaling or {})})
    return transformers.GPTNeoXConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("GPTNeoXForCausalLM", "causal_lm"),
    ("GPTNeoXForSequenceClassification", "sequence_classification"),
    ("GPTNeoXForTokenClassification", "token_classification"),
    ("GPTNeoXForQuestionAnswering", "question_answering"),
    ("GPTNeoXModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.wiring.kind, ours.spec.wiring.shared_norm) == ("parallel", False)


@pytest.mark.parametrize(("factor", "overrides"), [
    (0.5, {"use_parallel_residual": False}),
    (1.0, {"tie_word_embeddings": True, "attention_bias": False}),
    (0.25, {"hidden_act": "gelu_new", "num_attention_heads": 2}),
], ids=["sequential-half-rotary", "tied-full-rotary-no-bias", "gelu-tanh-2-heads"])
def test_causal_lm_variants_match_transformers(tmp_path, factor, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPTNeoXForCausalLM",
                        config=config(partial_rotary_factor=factor, **overrides), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert spec.wiring.kind == ("parallel" if overrides.get("use_parallel_residual", True) else "pre_norm")
    assert spec.position.kind == ("rope" if factor == 1.0 else "partial_rope")
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", False)
    assert spec.attention.qkv_bias == spec.attention.out_bias == overrides.get("attention_bias", True)


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "dynamic", "factor": 2.0}], ids=["linear", "dynamic"])
def test_rope_scalings_of_the_rotated_part_match_transformers(tmp_path, scaling):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPTNeoXForCausalLM",
                        config=config(0.5, scaling, max_position_embeddings=16), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    assert (ours.spec.position.kind, ours.spec.position.scaling.type) == ("partial_rope", scaling["rope_type"])


def test_pythia_config_keys_load(tmp_path):
    """Pythia's config.json names the rotary fraction and base ``rotary_pct`` and ``rotary_emb_base``."""
    reference = build_reference("GPTNeoXForCausalLM", config(partial_rotary_factor=0.5))
    reference.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    del data["rope_parameters"]
    path.write_text(json.dumps({**data, "rotary_pct": 0.5, "rotary_emb_base": 500}))
    ours = from_pretrained(tmp_path)
    assert (ours.spec.position.fraction, ours.spec.position.theta) == (0.5, 500.0)
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_qkv_rows_are_permuted_per_head(tmp_path):
    """HF rows [H, 3, Dh] -> ours [3, H, Dh]: our q rows of head 1 are HF rows 3*Dh .. 4*Dh."""
    build = transformers.GPTNeoXForCausalLM(config()).eval()
    build.save_pretrained(tmp_path)
    theirs = build.gpt_neox.layers[0].attention.query_key_value.weight
    mine = from_pretrained(tmp_path).layers[0].attention.qkv.proj.weight
    Dh = 16
    assert torch.equal(mine[Dh:2 * Dh], theirs[3 * Dh:4 * Dh])  # q of head 1
    assert torch.equal(mine[64 + Dh:64 + 2 * Dh], theirs[4 * Dh:5 * Dh])  # k of head 1


def test_hidden_dropout_drops_the_embeddings_and_each_branch():
    from archcomposer.plugins.gpt_neox import FAMILY as family

    data = family.spec_from_hf_config(config(hidden_dropout=0.2, attention_dropout=0.1).to_dict(),
                                      "GPTNeoXForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.embedding.dropout, spec.wiring.dropout, spec.attention.dropout) == (0.2, 0.2, 0.1)
    exported = family.hf_config_from_spec(spec, "GPTNeoXForCausalLM")
    assert (exported["hidden_dropout"], exported["attention_dropout"]) == (0.2, 0.1)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gpt_neox import FAMILY as family

    published = dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=8192, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                     bos_token_id=0, eos_token_id=0, hidden_act="gelu", use_parallel_residual=True,
                     tie_word_embeddings=False, layer_norm_eps=1e-5, model_type="gpt_neox")  # pythia-1.4b
    data = family.spec_from_hf_config(published, "GPTNeoXForCausalLM")
    data["name"], data["family"] = "pythia-1.4b", FAMILY
    shipped = build_model("pythia-1.4b", device="meta").spec
    assert build_model(data, device="meta").spec == shipped
    assert check_shipped_spec("pythia-1.4b", "GPTNeoXForCausalLM", transformers.GPTNeoXConfig(**published)) \
        == 1_414_647_808


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "parallel", "shared_norm": True}},
     "wiring.shared_norm = True has no equivalent in Hugging Face GPT-NeoX: its config.json reads back as False"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True, "out_bias": True,
                    "fused_qkv": True}}, "attention.num_kv_heads = 2 has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": False, "fused_qkv": True}},
     r"attention.qkv_bias = True has no equivalent in Hugging Face GPT-NeoX: its config.json reads back as False "
     r"\(attention_bias is both attention.qkv_bias and attention.out_bias\)"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": True}},
     "attention.fused_qkv = False has no equivalent"),
    ({"position": {"kind": "partial_rope", "fraction": 0.25, "interleaved": True}},
     "position.interleaved = True has no equivalent"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128}}, "mlp.kind = 'gated' has no equivalent"),
    ({"embedding": {"kind": "tokens", "dropout": 0.1}},
     "embedding.dropout = 0.1 has no equivalent in Hugging Face GPT-NeoX: its config.json reads back as 0.0"),
], ids=["shared-norm", "sandwich", "gqa", "no-out-bias", "split-qkv", "interleaved", "rmsnorm", "gated",
        "embedding-dropout-alone"])
def test_export_of_what_gpt_neox_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gpt-neox", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_unsupported_activation_is_refused_on_import(tmp_path):
    transformers.GPTNeoXForCausalLM(config(hidden_act="mish")).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="activation 'mish' is not supported"):
        from_pretrained(tmp_path)


def test_buffers_older_checkpoints_hold_are_skipped_and_other_extra_tensors_refused(tmp_path):
    """Pythia's published files hold each layer's causal-mask buffers (attention.bias,
    attention.masked_bias) and rotary_emb.inv_freq: not weights, skipped on load as transformers
    does. Any other extra tensor is still an error."""
    from safetensors.torch import load_file, save_file

    reference = build_reference("GPTNeoXForCausalLM", config())
    reference.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    for i in range(2):
        tensors[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)
        tensors[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        tensors[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4
    tensors["gpt_neox.layers.0.attention.extra"] = torch.ones(2)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected \(1\):\n    gpt_neox.layers.0.attention.extra"):
        from_pretrained(tmp_path)
