"""Falcon checkpoints against transformers: every head, in each of Falcon's layouts (the 7B's
multi-query parallel layers, the new decoder architecture's KV groups with one or two norms, and
Falcon-RW's ALiBi sequential layers with biases), tied and untied LM heads."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, report

FAMILY = "falcon"


@pytest.fixture(scope="module", autouse=True)
def report_largest_difference():
    yield
    print("\n" + report(FAMILY))


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
