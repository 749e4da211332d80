"""Training memory: activation checkpointing (``gradient_checkpointing_enable``) gives the gradients
of the model without it, bit for bit, and those of transformers with its own; the chunked loss
(``chunked_loss_enable``) gives the loss and gradients of the full one. The head's chunking itself
is tested in tests/blocks/test_heads.py."""

import pytest
import torch
import transformers

import archcomposer
from archcomposer import CacheError, DynamicCache, InputError, build_model, load_spec
from archcomposer.checkpoint import _to_hf

IDS = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(0))


def with_dropout(name: str):
    spec = load_spec(name).to_dict()
    spec["attention"]["dropout"] = 0.1
    spec["wiring"]["dropout"] = 0.1
    return spec


def grads(model, ids=IDS, **kwargs):
    """One training forward (dropout drawn from seed 7) and backward: the output and the gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = model(ids, labels=ids, **kwargs)
    out.loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("spec", ["tiny-glm-4", "tiny-mixtral", "tiny-deepseek-v2", with_dropout("tiny-gpt2")],
                         ids=["glm", "mixtral (MoE)", "deepseek-v2 (MLA, MoE)", "gpt2 (dropout 0.1)"])
def test_checkpointing_gives_the_same_loss_and_gradients(spec):
    """Same loss, aux loss and router logits, and bit-equal gradients: the recompute draws the
    same dropout masks (checkpoint keeps the RNG state) and routes to the same experts."""
    model = build_model(spec, seed=0).train()
    kwargs = {"output_router_logits": True} if model.routed else {}
    plain, expected = grads(model, **kwargs)
    model.gradient_checkpointing_enable()
    checkpointed, got = grads(model, **kwargs)
    assert torch.equal(checkpointed.loss, plain.loss)
    if model.routed:
        assert torch.equal(checkpointed.aux_loss, plain.aux_loss)
        assert all(map(torch.equal, checkpointed.router_logits, plain.router_logits))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_backward_recomputes_each_layer_once_in_training_mode_only():
    model = build_model("tiny-mixtral", seed=0).train()
    calls = []
    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    out = model(IDS, labels=IDS, output_router_logits=True)
    kept = [layer.mlp.router_logits for layer in model.layers]
    out.loss.backward()
    assert sorted(calls) == [0, 0, 1, 1]
    # The recompute leaves the router logits of the forward (a recomputed tensor would keep its graph).
    assert all(layer.mlp.router_logits is logits for layer, logits in zip(model.layers, kept))
    calls.clear()
    model.eval()(IDS, labels=IDS).loss.backward()  # eval mode: no recompute, whatever the flag
    assert calls == [0, 1]
    calls.clear()
    model.train().gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    model.activation_checkpointing_enable()  # transformers 5's names
    assert model.is_activation_checkpointing and model.is_gradient_checkpointing
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    model(IDS, labels=IDS).loss.backward()
    assert calls == [0, 1]


def test_checkpointing_keeps_only_each_layers_input():
    """What autograd holds outside the checkpointed layers: no [B, H, S, S] attention weights or
    [B, S, I] MLP activations, so far fewer bytes than without checkpointing."""
    model = build_model("tiny-glm-4", seed=0).train()

    def saved_bytes():
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = model(IDS, labels=IDS).loss
        loss.backward()
        return sum(sizes)

    plain = saved_bytes()
    model.gradient_checkpointing_enable()
    assert saved_bytes() < plain / 2


def test_checkpointing_leaves_eval_mode_and_its_cache_unchanged():
    model = build_model("tiny-glm-4", seed=0).eval()
    with torch.no_grad():
        expected = model(IDS)
        model.gradient_checkpointing_enable()
        got = model(IDS)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    assert got.past_key_values.get_seq_length() == IDS.shape[1]


def test_a_cache_is_refused_while_checkpointing_in_training_mode():
    """transformers drops the cache with a warning (its layers get ``past_key_values=None``);
    ours records positions in the cache before the layers run, so a dropped cache would be left
    half written: it is refused. Without asking for one, training mode uses none."""
    model = build_model("tiny-glm-4", seed=0).train()
    model.gradient_checkpointing_enable()
    for kwargs in ({"use_cache": True}, {"past_key_values": DynamicCache()}):
        with pytest.raises(CacheError, match="recomputes each layer in backward.*gradient_checkpointing_disable"):
            model(IDS, **kwargs)
    assert model(IDS).past_key_values is None
    model.gradient_checkpointing_disable()
    assert model(IDS, use_cache=True).past_key_values.get_seq_length() == IDS.shape[1]


def test_checkpointing_equals_transformers_with_its_own(tmp_path):
    """GLM, both libraries checkpointing every layer: the loss and every parameter's gradient."""
    config = transformers.GlmConfig(vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
                                    eos_token_id=[1, 2])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = transformers.GlmForCausalLM(config)
    reference.save_pretrained(tmp_path)
    ours = archcomposer.from_pretrained(tmp_path).train()
    reference.train().activation_checkpointing_enable()  # transformers 5's name of gradient_checkpointing_enable
    ours.gradient_checkpointing_enable()
    theirs = reference(IDS, labels=IDS)
    theirs.loss.backward()
    mine, got = grads(ours)
    torch.testing.assert_close(mine.loss, theirs.loss, rtol=1e-6, atol=1e-6)
    _, got = _to_hf(ours.spec, {name: got.get(name, t) for name, t in ours.state_dict().items()}, None)
    expected = {name: p.grad for name, p in reference.named_parameters()}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_loss_in_a_checkpointed_training_step():
    """Both on: the loss and gradients of both off; ``logits`` is None with labels, the logits
    come back without them; disabling restores the full loss's output."""
    model = build_model("tiny-mixtral", seed=0).train()
    plain, expected = grads(model, output_router_logits=True)
    model.gradient_checkpointing_enable()
    model.chunked_loss_enable(chunk_size=5)
    lean, got = grads(model, output_router_logits=True)
    assert lean.logits is None
    torch.testing.assert_close(lean.loss, plain.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lean.aux_loss, plain.aux_loss, rtol=0, atol=0)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, plain.logits, rtol=0, atol=0)
    model.chunked_loss_disable()
    assert model(IDS, labels=IDS).logits.shape == (*IDS.shape, 256)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "1024", None])
def test_chunked_loss_refuses_a_chunk_size_that_is_not_a_positive_int(chunk_size):
    model = build_model("tiny-glm-4", seed=0)
    with pytest.raises(InputError, match=r"chunk_size=\.\.\.\) takes a number of positions, an int > 0"):
        model.chunked_loss_enable(chunk_size=chunk_size)


def test_chunked_loss_needs_a_causal_lm_head():
    spec = load_spec("tiny-glm-4").to_dict()
    spec["heads"] = [{"kind": "token_classification", "num_labels": 3}]
    with pytest.raises(InputError, match="the chunked loss is the causal-LM head's; this model's heads are "
                                         r"\['token_classification'\]"):
        build_model(spec, seed=0).chunked_loss_enable()
