"""Task heads against transformers' loss functions (transformers.loss.loss_utils) and pooling
rule (the last token that is not the pad token); the LM head's logit scale and soft-cap against the
causal-LM models that use them."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                          GraniteForCausalLM)
from transformers.loss.loss_utils import (
    ForCausalLMLoss,
    ForQuestionAnsweringLoss,
    ForSequenceClassificationLoss,
    ForTokenClassification,
)

from archcomposer.blocks.heads import (
    CausalLMHead,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)

B, S, D = 3, 5, 8


def hidden(seed=0):
    return torch.randn(B, S, D, generator=torch.Generator().manual_seed(seed))


def labels_with_ignored(classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (B, S), generator=generator)
    labels[0, 1] = labels[2, 3] = -100
    return labels


@torch.no_grad()
def test_causal_lm_loss_equals_transformers_shifted_and_unshifted():
    head = CausalLMHead(proj=torch.nn.Linear(D, 11), shift_labels=True)
    labels = labels_with_ignored(11)
    out = head(hidden(), labels=labels)
    assert out["logits"].shape == (B, S, 11)
    torch.testing.assert_close(out["loss"], ForCausalLMLoss(out["logits"], labels, vocab_size=11), rtol=0, atol=0)
    unshifted = CausalLMHead(proj=head.proj, shift_labels=False)(hidden(), labels=labels)
    torch.testing.assert_close(unshifted["loss"], F.cross_entropy(out["logits"].flatten(0, 1), labels.flatten(),
                                                                  ignore_index=-100), rtol=0, atol=0)


@given(keep=st.integers(0, S), indices=st.lists(st.integers(0, S - 1), min_size=1, max_size=S))
@torch.no_grad()
def test_causal_lm_logits_to_keep(keep, indices):
    head = CausalLMHead(proj=torch.nn.Linear(D, 7))
    full = head(hidden())["logits"]
    torch.testing.assert_close(head(hidden(), logits_to_keep=keep)["logits"], full[:, -keep:] if keep else full,
                               rtol=0, atol=0)
    index = torch.tensor(indices)
    torch.testing.assert_close(head(hidden(), logits_to_keep=index)["logits"], full[:, index], rtol=0, atol=0)


def gemma2_lm():
    config = Gemma2Config(vocab_size=40, hidden_size=D, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=4, final_logit_softcapping=1.5,
                          layer_types=["full_attention"])
    return Gemma2ForCausalLM(config), {"softcap": 1.5}


def cohere_lm():
    config = CohereConfig(vocab_size=40, hidden_size=D, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, logit_scale=0.3, tie_word_embeddings=False)
    return CohereForCausalLM(config), {"logit_scale": 0.3}


def granite_lm():
    config = GraniteConfig(vocab_size=40, hidden_size=D, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, logits_scaling=4.0)
    return GraniteForCausalLM(config), {"logit_scale": 1 / 4.0}


@pytest.mark.parametrize("make", [gemma2_lm, cohere_lm, granite_lm], ids=lambda f: f.__name__)
@torch.no_grad()
def test_scaled_and_capped_logits_and_loss_equal_the_models_that_use_them(make):
    """Gemma 2's final_logit_softcapping, Cohere's logit_scale and Granite's logits_scaling (ours
    is its reciprocal): logits and loss of the transformers model from its last hidden state."""
    torch.manual_seed(0)
    reference, options = make()
    reference.config._attn_implementation = "eager"
    reference.eval()
    reference.lm_head.weight.mul_(20)  # logits far beyond the cap
    ids = torch.randint(0, 40, (2, 6))
    out = reference(ids, labels=ids, output_hidden_states=True)
    head = CausalLMHead(proj=torch.nn.Linear(D, 40, bias=False), **options)
    head.proj.weight.copy_(reference.lm_head.weight)
    ours = head(out.hidden_states[-1], labels=ids)
    torch.testing.assert_close(ours["logits"], out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["loss"], out.loss, rtol=1e-5, atol=1e-5)
    if "softcap" in options:
        assert ours["logits"].abs().max() < options["softcap"]


def loss_and_grads(head, h, labels):
    h = h.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    out = head(h, labels=labels)
    out["loss"].backward()
    return out, [h.grad, *(p.grad for p in head.parameters())]


@pytest.mark.parametrize("chunk_size", [1, 4, 7, S * B, 1000])
@pytest.mark.parametrize("shift_labels", [True, False], ids=["shifted", "unshifted (CPM-Ant)"])
@pytest.mark.parametrize("options", [{}, {"logit_scale": 0.3, "softcap": 1.5}], ids=["plain", "scaled+capped"])
def test_chunked_loss_equals_the_full_loss_and_its_gradients(chunk_size, shift_labels, options):
    """Chunks of one position, of a size that does not divide B*S, of all positions and larger;
    labels with ignored positions (and, shifted, each row's last position ignored too)."""
    torch.manual_seed(0)
    head = CausalLMHead(proj=torch.nn.Linear(D, 11), shift_labels=shift_labels, **options)
    head.proj.weight.data.mul_(20)  # logits beyond the cap
    labels = labels_with_ignored(11)
    full, full_grads = loss_and_grads(head, hidden(), labels)
    head.chunk_size = chunk_size
    chunked, chunked_grads = loss_and_grads(head, hidden(), labels)
    assert chunked["logits"] is None and full["logits"].shape == (B, S, 11)
    torch.testing.assert_close(chunked["loss"], full["loss"], rtol=1e-6, atol=1e-6)
    for got, expected in zip(chunked_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_chunked_loss_keeps_no_chunk_logits_and_returns_logits_without_labels():
    """Autograd keeps the chunks' inputs only, no [chunk, V] logits; without labels the head
    returns the logits as before."""
    head = CausalLMHead(proj=torch.nn.Linear(D, 1000))
    head.chunk_size = 4
    saved = []
    h = hidden().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        head(h, labels=labels_with_ignored(1000))["loss"].backward()
    assert all(1000 not in shape for shape in saved), saved
    with torch.no_grad():
        torch.testing.assert_close(head(hidden())["logits"], head.proj(hidden()), rtol=0, atol=0)


@torch.no_grad()
def test_chunked_loss_of_labels_all_ignored_is_nan_as_the_full_loss():
    head = CausalLMHead(proj=torch.nn.Linear(D, 11))
    labels = torch.full((B, S), -100)
    assert head(hidden(), labels=labels)["loss"].isnan()
    head.chunk_size = 2
    assert head(hidden(), labels=labels)["loss"].isnan()


@pytest.mark.parametrize(("num_labels", "problem_type", "labels"), [
    (1, None, torch.randn(B)),
    (3, None, torch.tensor([0, 2, 1])),
    (3, None, torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])),
    (3, "regression", torch.randn(B, 3)),
    (3, "single_label_classification", torch.tensor([2, 2, 0])),
    (2, "multi_label_classification", torch.tensor([[1.0, 0], [0, 1], [1, 1]])),
])
@torch.no_grad()
def test_sequence_classification_loss_equals_transformers(num_labels, problem_type, labels):
    head = SequenceClassificationHead(proj=torch.nn.Linear(D, num_labels), pad_token_id=0, problem_type=problem_type)
    ids = torch.tensor([[4, 5, 6, 7, 8], [4, 5, 0, 0, 0], [0, 0, 4, 5, 0]])
    out = head(hidden(), input_ids=ids, labels=labels)
    logits = head.proj(hidden())
    last = [4, 1, 3]  # the last token that is not the pad token, whatever the padding side
    torch.testing.assert_close(out["logits"], logits[torch.arange(B), last], rtol=0, atol=0)
    config = SimpleNamespace(num_labels=num_labels, problem_type=problem_type)
    torch.testing.assert_close(out["loss"], ForSequenceClassificationLoss(labels, out["logits"], config),
                               rtol=0, atol=0)


def test_sequence_classification_without_pad_token():
    head = SequenceClassificationHead(proj=torch.nn.Linear(D, 2), pad_token_id=None)
    one = hidden()[:1]
    torch.testing.assert_close(head(one, input_ids=torch.ones(1, S, dtype=torch.long))["logits"],
                               head.proj(one)[:, -1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the spec's pad_token_id"):
        head(hidden(), input_ids=torch.ones(B, S, dtype=torch.long))


@torch.no_grad()
def test_token_classification_equals_transformers_and_drops_out_only_while_training():
    head = TokenClassificationHead(proj=torch.nn.Linear(D, 4), dropout=0.5).eval()
    labels = labels_with_ignored(4)
    out = head(hidden(), labels=labels)
    torch.testing.assert_close(out["logits"], head.proj(hidden()), rtol=0, atol=0)
    expected = ForTokenClassification(out["logits"], labels, SimpleNamespace(num_labels=4))
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    assert not torch.equal(head.train()(hidden())["logits"], out["logits"])


@torch.no_grad()
def test_question_answering_equals_transformers_and_ignores_positions_outside():
    head = QuestionAnsweringHead(proj=torch.nn.Linear(D, 2))
    start, end = torch.tensor([0, 4, 9]), torch.tensor([2, 99, 4])  # 9 and 99 lie outside the 5 tokens
    out = head(hidden(), start_positions=start, end_positions=end)
    logits = head.proj(hidden())
    torch.testing.assert_close(out["start_logits"], logits[..., 0], rtol=0, atol=0)
    torch.testing.assert_close(out["end_logits"], logits[..., 1], rtol=0, atol=0)
    expected = ForQuestionAnsweringLoss(out["start_logits"], out["end_logits"], start, end)
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    assert head(hidden(), start_positions=start)["loss"] is None
