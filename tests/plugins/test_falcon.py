"""Falcon checkpoints against transformers: every head, in each of Falcon's layouts (the 7B's
multi-query parallel layers, the new decoder architecture's KV groups with one or two norms, and
Falcon-RW's ALiBi sequential layers with biases), tied and untied LM heads."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, build_reference, check_parity, check_shipped_spec, largest_difference_report

FAMILY = "falcon"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2, num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.FalconConfig(**{**fields, **overrides})


#: Falcon-RW: ALiBi, MHA, sequential layers, biases.
RW = dict(alibi=True, multi_query=False, parallel_attn=False, bias=True)
#: The new decoder architecture with 2 KV groups of 2 queries.
NEW = dict(new_decoder_architecture=True, num_kv_heads=2)

INPUTS = Inputs(vocab_size=160, pad_token_id=1)


def position_ids(inputs):
    """transformers' rotary Falcon counts positions from 0 including pads; ours follows the mask."""
    return {"position_ids": inputs.position_ids}


@pytest.mark.parametrize(("architecture", "head"), [
    ("FalconForCausalLM", "causal_lm"),
    ("FalconForSequenceClassification", "sequence_classification"),
    ("FalconForTokenClassification", "token_classification"),
    ("FalconForQuestionAnswering", "question_answering"),
    ("FalconModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize(("overrides", "kv", "wiring"), [
    ({"multi_query": False, "tie_word_embeddings": False, "bias": True}, 4, ("parallel", True)),
    ({"multi_query": False, "parallel_attn": False}, 4, ("pre_norm", None)),
    ({"parallel_attn": False, "activation": "gelu_new"}, 1, ("pre_norm", None)),
    (NEW, 2, ("parallel", False)),
    ({**NEW, "num_ln_in_parallel_attn": 1, "bias": True}, 2, ("parallel", True)),
    ({**NEW, "num_kv_heads": 1}, 1, ("parallel", False)),
], ids=["mha-parallel-untied-bias", "mha-sequential", "mqa-sequential-gelu-tanh", "new-decoder-two-norms",
        "new-decoder-one-norm-bias", "new-decoder-one-group"])
def test_rotary_layouts_match_transformers(tmp_path, overrides, kv, wiring):
    ours = check_parity(tmp_path, family=FAMILY, architecture="FalconForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.num_kv_heads == kv
    assert (ours.spec.wiring.kind, getattr(ours.spec.wiring, "shared_norm", None)) == wiring
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)


@pytest.fixture
def alibi_added_once(monkeypatch):
    """transformers 5.23's eager Falcon adds ALiBi twice: to the raw scores before scaling, and again
    (scaled) through the mask FalconModel now builds with it. Its default SDPA path, and the
    original Falcon-RW code, add it once: softmax((q·k + alibi) / sqrt(Dh) + mask). The eager path
    (the only one that returns attention maps) is patched to add it once too; the test below checks
    the patched eager path against the unpatched SDPA one."""
    from transformers.models.falcon import modeling_falcon

    forward = modeling_falcon.FalconAttention.forward

    def once(self, hidden_states, alibi=None, attention_mask=None, **kwargs):
        return forward(self, hidden_states, alibi=None if alibi is None else torch.zeros_like(alibi),
                       attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(modeling_falcon.FalconAttention, "forward", once)


@pytest.mark.parametrize(("architecture", "head", "overrides"), [
    ("FalconForCausalLM", "causal_lm", {}),
    ("FalconForCausalLM", "causal_lm", {"num_attention_heads": 16, "hidden_size": 64}),  # bf16 rounds the slopes
    ("FalconForSequenceClassification", "sequence_classification", {"num_attention_heads": 3}),
    ("FalconForCausalLM", "causal_lm", {"num_attention_heads": 6, "multi_query": True, "bias": False,
                                        "tie_word_embeddings": False}),
    ("FalconForCausalLM", "causal_lm", {**NEW, "parallel_attn": True, "num_attention_heads": 8, "hidden_size": 64}),
], ids=["rw", "rw-16-heads", "rw-3-heads-classification", "mqa-6-heads-untied", "new-decoder-8-heads"])
def test_alibi_layouts_match_transformers(tmp_path, alibi_added_once, architecture, head, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(**{**RW, **overrides}),
                        head=head, inputs=INPUTS)
    position = ours.spec.position
    assert (position.kind, position.scaled, position.bias_dtype) == ("alibi", True, "bfloat16")


def test_alibi_matches_transformers_default_attention(tmp_path):
    """Against transformers' own SDPA path, unpatched: logits of one sequence and a padded batch."""
    build_reference("FalconForCausalLM", config(**RW)).save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    reference = transformers.FalconForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for ids, mask in ((INPUTS.single, None), (INPUTS.batch, INPUTS.mask)):
            real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            diff = (ours(ids, attention_mask=mask).logits - reference(ids, attention_mask=mask).logits)[real]
            assert diff.abs().max() <= 1e-4


#: tiiuae/falcon-7b's config.json.
FALCON_7B = dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, alibi=False,
                 multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False,
                 layer_norm_epsilon=1e-5, bos_token_id=11, eos_token_id=11)
#: tiiuae/falcon-rw-1b's config.json.
FALCON_RW_1B = dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, alibi=True,
                    multi_query=False, parallel_attn=False, new_decoder_architecture=False, bias=True,
                    layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize(("name", "published"), [("falcon-7b", FALCON_7B), ("falcon-rw-1b", FALCON_RW_1B)])
def test_shipped_specs_are_what_the_published_configs_translate_to(name, published):
    from archcomposer.plugins.falcon import FAMILY as family

    published = transformers.FalconConfig(**published).to_dict()
    data = family.spec_from_hf_config(published, "FalconForCausalLM")
    data["name"], data["family"] = name, FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model(name, device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec(name, "FalconForCausalLM", transformers.FalconConfig(**published))


def test_falcon_7b_config_without_ffn_hidden_size_reads_4x():
    from archcomposer.plugins.falcon import FAMILY as family

    published = {k: v for k, v in transformers.FalconConfig(**FALCON_7B).to_dict().items() if k != "ffn_hidden_size"}
    assert family.spec_from_hf_config(published, "FalconForCausalLM")["mlp"]["intermediate_size"] == 4 * 4544


def test_qkv_rows_of_the_new_decoder_architecture_are_grouped_per_kv_head(tmp_path):
    """HF rows [Hkv, g + 2, Dh] -> ours [q | k | v]: with 2 groups of 2 queries (Dh 12), our k of
    group 1 is HF rows (4 + 2) * 12 .. (4 + 3) * 12."""
    reference = build_reference("FalconForCausalLM", config(**NEW))
    reference.save_pretrained(tmp_path)
    theirs = reference.transformer.h[0].self_attention.query_key_value.weight
    mine = from_pretrained(tmp_path).layers[0].attention.qkv.proj.weight
    Dh = 12
    assert torch.equal(mine[2 * Dh:3 * Dh], theirs[4 * Dh:5 * Dh])  # q head 2 = group 1's first query
    assert torch.equal(mine[4 * Dh + Dh:4 * Dh + 2 * Dh], theirs[6 * Dh:7 * Dh])  # k of group 1


def test_dropouts_are_the_wiring_and_attention_dropouts():
    from archcomposer.plugins.falcon import FAMILY as family

    data = family.spec_from_hf_config(config(**RW, hidden_dropout=0.1, attention_dropout=0.1).to_dict(),
                                      "FalconForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.wiring.dropout, spec.attention.dropout) == (0.1, 0.1)
    exported = family.hf_config_from_spec(spec, "FalconForCausalLM")
    assert (exported["hidden_dropout"], exported["attention_dropout"]) == (0.1, 0.1)
    rotary = family.spec_from_hf_config(config(attention_dropout=0.3).to_dict(), "FalconForCausalLM")
    assert rotary["attention"]["dropout"] == 0.0  # rotary Falcon drops no attention probabilities


@pytest.mark.parametrize(("overrides", "message"), [
    ({**NEW, "parallel_attn": False}, "config.json parallel_attn = False is not supported with "
                                      "new_decoder_architecture: transformers' Falcon cannot run it"),
    ({"num_ln_in_parallel_attn": 2}, "config.json num_ln_in_parallel_attn = 2 is not supported without "
                                     "new_decoder_architecture"),
    ({"multi_query": False, "num_kv_heads": 2}, "config.json num_kv_heads = 2 is not supported with multi_query "
                                                "and new_decoder_architecture false"),
    ({"hidden_dropout": 0.1}, "config.json hidden_dropout = 0.1 is not supported with parallel attention: Falcon "
                              "drops out the sum of the attention and MLP outputs with one mask"),
    ({**RW, "attention_dropout": 0.1}, "config.json attention_dropout = 0.1 is not supported with hidden_dropout = "
                                       "0.0 in sequential layers"),
    ({"activation": "tanh"}, "config.json activation 'tanh' is not supported"),
], ids=["new-decoder-sequential", "two-norms-old-decoder", "kv-heads-without-mqa", "parallel-hidden-dropout",
        "sequential-dropouts-differ", "activation"])
def test_config_transformers_cannot_run_or_we_cannot_express_is_refused(overrides, message):
    from archcomposer.plugins.falcon import FAMILY as family

    with pytest.raises(CheckpointError, match=message):
        family.spec_from_hf_config(config(**overrides).to_dict(), "FalconForCausalLM")


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm"}}, "attention.num_kv_heads = 2 has no equivalent in Hugging Face Falcon: its "
                                       "config.json reads back as 4"),
    ({"wiring": {"kind": "sandwich"}, "attention": {"kind": "gqa", "num_heads": 4, "fused_qkv": True}},
     "wiring.kind = 'sandwich' has no equivalent in Hugging Face Falcon: its config.json reads back as 'pre_norm'"),
    ({"wiring": {"kind": "parallel", "dropout": 0.1}}, "config.json hidden_dropout = 0.1 is not supported"),
    ({"position": {"kind": "alibi", "bias_dtype": "bfloat16"}},
     "position.scaled = False has no equivalent in Hugging Face Falcon: its config.json reads back as True"),
    ({"position": {"kind": "alibi", "scaled": True}},
     "position.bias_dtype = 'float32' has no equivalent in Hugging Face Falcon: its config.json reads back as "
     "'bfloat16'"),
    ({"position": {"kind": "alibi", "scaled": True, "bias_dtype": "bfloat16", "max_bias": 16.0}},
     "position.max_bias = 16.0 has no equivalent in Hugging Face Falcon"),
    ({"norm": {"kind": "layernorm", "bias": False}}, "norm.bias = False has no equivalent in Hugging Face Falcon"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face Falcon"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128}}, "mlp.kind = 'gated' has no equivalent"),
    ({"embedding": {"kind": "tokens", "tied": True, "norm": True}}, "embedding.norm = True has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "fused_qkv": True, "head_dim": 8}},
     "attention.head_dim = 8 has no equivalent in Hugging Face Falcon: its config.json reads back as 16"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2}},  # ours split, theirs fused
     "attention.fused_qkv = False has no equivalent in Hugging Face Falcon: its config.json reads back as True"),
], ids=["gqa-sequential", "sandwich", "parallel-dropout", "unscaled-alibi", "fp32-alibi", "alibi-max-bias",
        "norm-without-bias", "rmsnorm", "gated-mlp", "embedding-norm", "head-dim", "split-qkv"])
def test_export_of_what_falcon_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-falcon", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()

