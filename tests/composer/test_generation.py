"""generate(): greedy decoding is the argmax of one full forward at every step, for every block
kind and both caches; a left-padded batch decodes each row as it decodes alone; EOS stops rows
one by one; sampling is reproducible and respects top-k and top-p."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from archcomposer import InputError, build_model, load_spec
from tests.strategies import POSITIONS, spec_dicts

NEAR_TIE = 1e-4  # a greedy token must have the largest full-forward logit, up to rounding


def draw_model_and_prompt(data, **strategy_kwargs):
    spec = data.draw(spec_dicts(**strategy_kwargs), label="spec")
    model = build_model(spec, seed=data.draw(st.integers(0, 2**16), label="seed"))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="ids seed"))
    ids = torch.randint(1, spec["vocab_size"], (2, data.draw(st.integers(1, 5), label="prompt length")),
                        generator=generator)
    return spec, model, ids


@torch.no_grad()
def full_forward_logits(model, sequence: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Logits predicting each generated token [B, new, V], from one forward without a cache over
    prompt + continuation (the prompt being the context of a prefix_lm model)."""
    inputs = sequence[:, :-1]
    prefix_mask = None
    if model.prefix_lm:
        prefix_mask = (torch.arange(inputs.shape[1]) < prompt_length).long().expand_as(inputs)
    return model(inputs, prefix_mask=prefix_mask, use_cache=False).logits[:, prompt_length - 1:]


@pytest.mark.parametrize("position", POSITIONS)
@given(data=st.data())
def test_greedy_is_the_argmax_of_one_full_forward_with_either_cache(position, data):
    _, model, ids = draw_model_and_prompt(data, positions=(position,))
    new = data.draw(st.integers(1, 6), label="max_new_tokens")
    dynamic = model.generate(ids, max_new_tokens=new, eos_token_id=[])
    static = model.generate(ids, max_new_tokens=new, eos_token_id=[], cache="static")
    assert dynamic.shape == (2, ids.shape[1] + new) and torch.equal(dynamic[:, :ids.shape[1]], ids)
    assert torch.equal(static, dynamic)
    logits = full_forward_logits(model, dynamic, ids.shape[1])  # [B, new, V]
    chosen = logits.gather(-1, dynamic[:, ids.shape[1]:, None]).squeeze(-1)
    assert (chosen >= logits.max(-1).values - NEAR_TIE).all()


@pytest.mark.parametrize("position", POSITIONS)
@given(data=st.data())
def test_left_padded_batch_generates_what_each_row_generates_alone(position, data):
    spec, model, _ = draw_model_and_prompt(data, positions=(position,))
    length = data.draw(st.integers(2, 5), label="length")
    lengths = [length, data.draw(st.integers(1, length - 1), label="short row")]
    ids = torch.randint(1, spec["vocab_size"], (2, length))
    mask = torch.stack([(torch.arange(length) >= length - n).long() for n in lengths])
    cache = data.draw(st.sampled_from(["dynamic", "static"]), label="cache")
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[], cache=cache)
    for i, n in enumerate(lengths):
        alone = model.generate(ids[i:i + 1, length - n:], max_new_tokens=4, eos_token_id=[], cache=cache)
        assert torch.equal(batch[i, length:], alone[0, n:])


def test_eos_stops_each_row_and_pads_the_finished_ones():
    model = build_model("tiny-seed-oss", seed=0)
    ids = torch.tensor([[5, 17, 42, 8], [9, 10, 11, 12]])
    free = model.generate(ids, max_new_tokens=8, eos_token_id=[])[:, 4:]  # [2, 8]
    eos, pad = int(free[0, 1]), 255
    assert pad not in free
    out = model.generate(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad)

    expected_rows, stops = [], []
    for row in free.tolist():
        stop = row.index(eos) + 1 if eos in row else len(row)  # tokens up to and including the first EOS
        stops.append(stop)
        expected_rows.append(row[:stop] + [pad] * (len(row) - stop))
    width = max(stops)  # generation ends when every row has finished
    assert stops[0] <= 2 and out.shape == (2, 4 + width)
    assert out[:, 4:].tolist() == [row[:width] for row in expected_rows]


def test_eos_defaults_to_the_spec_and_a_list_stops_on_any():
    model = build_model("tiny-glm-4", seed=0)  # eos_token_id: [1, 2]
    ids = torch.tensor([[5, 17, 42, 8]])
    free = model.generate(ids, max_new_tokens=6, eos_token_id=[])[0, 4:].tolist()
    first, second = free[2], free[4]
    out = model.generate(ids, max_new_tokens=6, eos_token_id=[second, first])[0, 4:].tolist()
    assert out == free[:free.index(first) + 1]
    spec = load_spec("tiny-glm-4").to_dict()
    spec["eos_token_id"] = first
    out = build_model(spec, seed=0).generate(ids, max_new_tokens=6)[0, 4:].tolist()
    assert out == free[:free.index(first) + 1]


@given(data=st.data())
def test_sampling_with_a_seed_is_reproducible_and_the_seed_matters(data):
    _, model, ids = draw_model_and_prompt(data)
    kwargs = {"max_new_tokens": 6, "do_sample": True, "temperature": 2.0, "eos_token_id": []}
    a = model.generate(ids, seed=7, **kwargs)
    assert torch.equal(a, model.generate(ids, seed=7, **kwargs))
    assert any(not torch.equal(a, model.generate(ids, seed=s, **kwargs)) for s in range(8, 14))


@given(data=st.data())
def test_top_k_1_and_a_tiny_top_p_are_greedy(data):
    _, model, ids = draw_model_and_prompt(data)
    greedy = model.generate(ids, max_new_tokens=4, eos_token_id=[])
    temperature = data.draw(st.sampled_from([0.5, 1.0, 3.0]), label="temperature")
    for filters in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = model.generate(ids, max_new_tokens=4, eos_token_id=[], do_sample=True, seed=1,
                                 temperature=temperature, **filters)
        assert torch.equal(sampled, greedy), filters


@given(data=st.data())
def test_sampled_tokens_lie_in_the_top_k_and_the_nucleus(data):
    _, model, ids = draw_model_and_prompt(data)
    top_k = data.draw(st.integers(2, 5), label="top_k")
    top_p = data.draw(st.sampled_from([0.3, 0.6, 0.9]), label="top_p")
    temperature = data.draw(st.sampled_from([0.7, 1.5]), label="temperature")
    common = {"max_new_tokens": 5, "eos_token_id": [], "do_sample": True, "temperature": temperature}
    seed = data.draw(st.integers(0, 100), label="sampling seed")

    by_k = model.generate(ids, top_k=top_k, seed=seed, **common)
    logits = full_forward_logits(model, by_k, ids.shape[1])  # [B, new, V]
    chosen = logits.gather(-1, by_k[:, ids.shape[1]:, None])  # [B, new, 1]
    better = (logits > chosen + NEAR_TIE).sum(-1)  # tokens clearly more likely than the sampled one
    assert (better < top_k).all()

    by_p = model.generate(ids, top_p=top_p, seed=seed, **common)
    probs = (full_forward_logits(model, by_p, ids.shape[1]) / temperature).softmax(-1)  # [B, new, V]
    chosen = probs.gather(-1, by_p[:, ids.shape[1]:, None])
    mass_before = (probs * (probs > chosen + 1e-6)).sum(-1)  # of the tokens more likely than the sampled one
    assert (mass_before < top_p + 1e-4).all()


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [
    (1.0, None, None), (0.7, 4, None), (1.0, None, 0.8), (1.5, 5, 0.6), (1.0, 3, 0.999), (2.0, 10, 0.5),
])
def test_sampling_distribution_equals_transformers_warpers(temperature, top_k, top_p):
    """Draw many times from one row of logits: the tokens drawn are exactly those transformers'
    temperature -> top-k -> top-p warpers keep, at their probabilities."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from archcomposer.generation import _sample

    logits = torch.tensor([[2.0, 1.6, 1.3, 1.0, 0.8, 0.5, 0.2, -0.1]])  # every kept token has p >= 0.02
    warped = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k is not None:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p is not None:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = warped.softmax(-1)[0]
    draws = 20000
    generator = torch.Generator().manual_seed(0)
    tokens = _sample(logits.expand(draws, -1), temperature, top_k, top_p, generator)  # [draws]
    frequency = torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws
    assert set(tokens.unique().tolist()) == set(torch.nonzero(expected).flatten().tolist())
    torch.testing.assert_close(frequency, expected, rtol=0, atol=0.015)


def test_zero_new_tokens_returns_the_prompt():
    model = build_model("tiny-glm-4", seed=0)
    ids = torch.tensor([[5, 6]])
    assert torch.equal(model.generate(ids, max_new_tokens=0), ids)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0, got -1 \(int\)"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer >= 0, got 2.5 \(float\)"),
    ({"do_sample": True, "temperature": 0.0}, r"temperature must be > 0 when sampling, got 0.0"),
    ({"temperature": float("nan")}, r"temperature must be a number in \[0, inf\), got nan"),
    ({"do_sample": True, "top_k": 0}, r"top_k must be an integer >= 1, got 0 \(int\)"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\], got 1.5"),
    ({"cache": "paged"}, r"cache must be 'dynamic' or 'static', got 'paged' \(str\)"),
    ({"cache": "static", "max_new_tokens": 10**12}, r"cache='static' preallocates a slot per token: 2 of the prompt "
                                                    r"\+ max_new_tokens=1000000000000 = 1000000000002, more than the "
                                                    r"256 positions this model supports \(max_positions\)"),
    ({"pad_token_id": 256}, r"pad_token_id must be a token id in \[0, vocab_size=256\), got 256 \(int\)"),
    ({"eos_token_id": [2, -1]}, r"eos_token_id must be a token id, or a list of them, in \[0, vocab_size=256\)"),
])
def test_bad_arguments_raise_input_error(kwargs, message):
    model = build_model("tiny-glm-4", seed=0)
    with pytest.raises(InputError, match=message):
        model.generate(torch.tensor([[5, 6]]), **kwargs)


def test_generate_needs_a_causal_lm_head():
    spec = load_spec("tiny-glm-4").to_dict()
    spec["heads"] = [{"kind": "token_classification"}]
    model = build_model(spec, seed=0)
    with pytest.raises(InputError, match=r"generate needs a causal_lm head; spec 'tiny-glm-4' has "
                                         r"\['token_classification'\]"):
        model.generate(torch.tensor([[5, 6]]))


def test_out_of_vocabulary_prompt_raises_input_error():
    model = build_model("tiny-glm-4", seed=0)
    with pytest.raises(InputError, match="input_ids must lie in"):
        model.generate(torch.tensor([[5, 300]]))


class Recorder:
    """A streamer with transformers' protocol that keeps what it receives."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def test_a_streamer_receives_the_prompt_then_each_steps_tokens_then_end():
    model = build_model("tiny-seed-oss", seed=0)
    ids = torch.tensor([[5, 17, 42, 8], [9, 10, 11, 12]])
    free = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, 6])  # row 0 stops after 3 tokens; row 1 goes on and is padded from then on
    recorder = Recorder()
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=255, streamer=recorder)
    assert [kind for kind, _ in recorder.calls] == ["put"] * (1 + out.shape[1] - 4) + ["end"]
    assert torch.equal(recorder.calls[0][1], ids)
    steps = torch.stack([value for _, value in recorder.calls[1:-1]], dim=1)  # [B, new]
    assert torch.equal(steps, out[:, 4:]) and steps[0, -1] == 255


def test_a_callable_streamer_gets_each_steps_tokens():
    model = build_model("tiny-glm-4", seed=0)
    ids = torch.tensor([[5, 17, 42, 8]])
    steps = []
    out = model.generate(ids, max_new_tokens=5, eos_token_id=[], streamer=steps.append)
    assert [s.shape for s in steps] == [torch.Size([1])] * 5
    assert torch.equal(torch.stack(steps, dim=1), out[:, 4:])
    with pytest.raises(InputError, match="streamer must have put\\(\\) and end\\(\\) or be callable, got int"):
        model.generate(ids, streamer=3)


def test_transformers_text_streamer_and_ours_print_the_decoded_continuation(text_checkpoints, capsys):
    from transformers import TextStreamer as TheirStreamer

    from archcomposer import TextStreamer, from_pretrained

    model = from_pretrained(text_checkpoints["tokenizers"])
    tokenizer = model.tokenizer
    ids = torch.tensor([tokenizer.encode("the cat sat")])
    out = model.generate(ids, max_new_tokens=12, eos_token_id=[])
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"
    for streamer in (TextStreamer(tokenizer, skip_prompt=True),
                     TheirStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)):
        assert torch.equal(model.generate(ids, max_new_tokens=12, eos_token_id=[], streamer=streamer), out)
        assert capsys.readouterr().out == expected
