"""archcomposer.outputs keeps the contract of transformers' ModelOutput: each class has the fields of
the transformers class of the same name, in the same order, and behaves the same way for every
pattern of None fields (transformers is the oracle here; the library itself never imports it)."""

import dataclasses
import pickle

import pytest
import torch
import transformers.modeling_outputs as hf
from hypothesis import given
from hypothesis import strategies as st

from archcomposer import outputs

CLASSES = [outputs.BaseModelOutputWithPast, outputs.CausalLMOutputWithPast, outputs.SequenceClassifierOutputWithPast,
           outputs.TokenClassifierOutput, outputs.QuestionAnsweringModelOutput]


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_are_those_of_transformers(cls):
    assert field_names(cls) == field_names(getattr(hf, cls.__name__))


@st.composite
def output_pairs(draw):
    """The same values, some fields None, in ours and in the transformers class."""
    cls = draw(st.sampled_from(CLASSES))
    values = {}
    for i, name in enumerate(field_names(cls)):
        if draw(st.booleans()):
            # tensors for tensor fields, a tuple of tensors for hidden_states/attentions, any object for the cache
            value = torch.full((2,), float(i))
            values[name] = (value, value + 1) if name in ("hidden_states", "attentions") else \
                ["cache"] if name == "past_key_values" else value
    return cls(**values), getattr(hf, cls.__name__)(**values), values


@given(pair=output_pairs(), data=st.data())
def test_access_matches_transformers(pair, data):
    ours, theirs, values = pair
    present = [name for name in field_names(type(ours)) if name in values]
    assert list(ours.keys()) == list(theirs.keys()) == present
    assert len(ours) == len(theirs) == len(present)
    assert list(ours) == list(theirs)
    assert list(ours.values()) == list(theirs.values())  # identity of each element
    assert ours.to_tuple() == theirs.to_tuple() == tuple(values[name] for name in present)
    for name in field_names(type(ours)):
        assert getattr(ours, name) is getattr(theirs, name) is values.get(name)
        if name in values:
            assert ours[name] is theirs[name] is values[name]
            assert name in ours
        else:
            assert name not in ours
            with pytest.raises(KeyError):
                ours[name]
            with pytest.raises(KeyError):
                theirs[name]
    for i in range(-len(present), len(present)):
        assert ours[i] is theirs[i]
    with pytest.raises(IndexError):
        ours[len(present)]
    start = data.draw(st.integers(-4, 4), label="start")
    stop = data.draw(st.integers(-4, 4) | st.none(), label="stop")
    step = data.draw(st.sampled_from([None, 1, 2, -1]), label="step")
    assert ours[start:stop:step] == theirs[start:stop:step]


@given(pair=output_pairs(), data=st.data())
def test_mutations_match_transformers(pair, data):
    ours, theirs, _ = pair
    for method, args in (("__delitem__", ("loss",)), ("pop", ("loss",)), ("update", ({"loss": 1},)),
                         ("setdefault", ("loss", 1))):
        for out in (ours, theirs):
            with pytest.raises(Exception, match=f"You cannot use ``{method}`` on a {type(out).__name__} instance"):
                getattr(out, method)(*args)
    # setting a field afterwards (as attribute or as key) adds it where transformers adds it
    name = data.draw(st.sampled_from(field_names(type(ours))), label="field")
    value = torch.zeros(1)
    if data.draw(st.booleans(), label="as attribute"):
        setattr(ours, name, value)
        setattr(theirs, name, value)
    else:
        ours[name] = value
        theirs[name] = value
    assert list(ours.keys()) == list(theirs.keys())
    assert getattr(ours, name) is ours[name] is value
    assert ours.to_tuple() == theirs.to_tuple()


@given(pair=output_pairs())
def test_pickle_round_trip_keeps_fields(pair):
    ours, theirs, _ = pair
    back, theirs_back = pickle.loads(pickle.dumps(ours)), pickle.loads(pickle.dumps(theirs))
    assert type(back) is type(ours)
    assert list(back.keys()) == list(theirs_back.keys()) == list(ours.keys())
    for name in field_names(type(ours)):
        a, b = getattr(back, name), getattr(ours, name)
        assert type(a) is type(b)
        assert all(torch.equal(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else \
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_unpacking_a_tuple_view():
    logits = torch.ones(1)
    out = outputs.CausalLMOutputWithPast(logits=logits)
    (only,) = out.to_tuple()
    assert only is logits and out[0] is logits and out.loss is None
