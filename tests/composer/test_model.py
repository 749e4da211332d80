"""ComposedModel.forward: padding, the output contract of each head, hidden states, attention
probabilities, logits_to_keep, inputs_embeds, parameter counts and argument errors.

Specs are drawn across every block kind (tests/strategies.py); expected values are computed here
from the inputs and the model's weights (cross-entropy, pooling, the LM projection), never taken
from the code under test."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from archcomposer import InputError, build_model, load_spec
from archcomposer import outputs as out_types
from tests.strategies import HEADS, POSITIONS, spec_dicts

ATOL = 1e-5
OUTPUT_CLASS = {
    None: out_types.BaseModelOutputWithPast,
    "causal_lm": out_types.CausalLMOutputWithPast,
    "sequence_classification": out_types.SequenceClassifierOutputWithPast,
    "token_classification": out_types.TokenClassifierOutput,
    "question_answering": out_types.QuestionAnsweringModelOutput,
}


def draw_model(data, **strategy_kwargs):
    spec = data.draw(spec_dicts(**strategy_kwargs), label="spec")
    return spec, build_model(spec, seed=data.draw(st.integers(0, 2**16), label="seed"))


def left_padded_batch(data, vocab_size: int, *, rows: int = 3):
    """ids [B, S] with garbage (not pad_token_id) left of each row's real tokens, the mask, and
    the real rows. The first row is full length, the others shorter."""
    length = data.draw(st.integers(2, 7), label="length")
    lengths = [length] + [data.draw(st.integers(1, length - 1), label="row length") for _ in range(rows - 1)]
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="ids seed"))
    ids = torch.randint(1, vocab_size, (rows, length), generator=generator)
    mask = torch.stack([(torch.arange(length) >= length - n).long() for n in lengths])  # [B, S]
    return ids, mask, [ids[i, length - n:] for i, n in enumerate(lengths)]


# ---------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("position", POSITIONS)
@given(data=st.data())
@torch.no_grad()
def test_left_padded_rows_get_the_logits_they_get_alone(position, data):
    spec, model = draw_model(data, positions=(position,))
    ids, mask, rows = left_padded_batch(data, spec["vocab_size"])
    batch = model(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None]).logits
        # A row alone runs other matmul shapes, so fp32 rounds differently, more so as logits grow:
        # 2e-5 where they reach 4.6 (3 post-norm layers, no final norm; exact in fp64).
        atol = ATOL * max(1.0, alone.abs().max().item())
        torch.testing.assert_close(batch[i, ids.shape[1] - len(row):], alone[0], atol=atol, rtol=0)


@given(data=st.data())
@torch.no_grad()
def test_explicit_position_ids_equal_the_implied_ones(data):
    spec, model = draw_model(data)
    ids, mask, _ = left_padded_batch(data, spec["vocab_size"])
    implied = model(ids, attention_mask=mask).logits
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    explicit = model(ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    torch.testing.assert_close(explicit[real], implied[real], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# the output of each head


def expected_loss(kind: str, spec: dict, out, labels: dict) -> torch.Tensor:
    """The loss transformers' heads compute, from the output's own logits."""
    if kind == "causal_lm":
        logits, target = out.logits, labels["labels"]
        if spec["heads"][0]["shift_labels"]:
            logits, target = logits[:, :-1], target[:, 1:]
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
    if kind == "sequence_classification":
        if spec["heads"][0]["num_labels"] == 1:
            return F.mse_loss(out.logits.squeeze(), labels["labels"].squeeze())
        return F.cross_entropy(out.logits, labels["labels"])
    if kind == "token_classification":
        return F.cross_entropy(out.logits.flatten(0, 1), labels["labels"].flatten(), ignore_index=-100)
    start, end = labels["start_positions"], labels["end_positions"]
    return (F.cross_entropy(out.start_logits, start) + F.cross_entropy(out.end_logits, end)) / 2


def draw_labels(data, kind: str, spec: dict, batch: int, length: int) -> dict:
    """Labels for ``kind``; per-token labels ignore some positions (-100) but never the last one,
    so that some position is scored (length >= 2 when causal_lm shifts)."""
    ints = st.integers
    if kind in ("causal_lm", "token_classification"):
        classes = spec["vocab_size"] if kind == "causal_lm" else spec["heads"][0]["num_labels"]
        values = data.draw(st.lists(ints(-1, classes - 1), min_size=batch * length, max_size=batch * length),
                           label="labels")
        labels = torch.tensor(values).view(batch, length)
        labels[:, -1] = labels[:, -1].clamp(min=0)
        return {"labels": labels.masked_fill(labels < 0, -100)}
    num_labels = spec["heads"][0].get("num_labels")
    if kind == "sequence_classification":
        if num_labels == 1:
            return {"labels": torch.randn(batch)}
        return {"labels": torch.tensor(data.draw(st.lists(ints(0, num_labels - 1), min_size=batch, max_size=batch)))}
    positions = st.lists(ints(0, length - 1), min_size=batch, max_size=batch)
    return {"start_positions": torch.tensor(data.draw(positions)), "end_positions": torch.tensor(data.draw(positions))}


@pytest.mark.parametrize("kind", [*HEADS, None])
@given(data=st.data())
@torch.no_grad()
def test_each_head_returns_its_output_type_shapes_loss_and_cache(kind, data):
    spec, model = draw_model(data, heads=(kind,) if kind else (), length_dependent=True)
    batch, length = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(2, 6), label="length")
    ids = torch.randint(1, spec["vocab_size"], (batch, length))
    out = model(ids)
    expected_class = OUTPUT_CLASS[kind]
    if model.routed:  # as transformers' MoE families: their causal LM and bare model return the Moe* classes
        expected_class = out_types.MOE_OUTPUTS.get(expected_class, expected_class)
    assert type(out) is expected_class
    D = spec["hidden_size"]
    num_labels = spec["heads"][0].get("num_labels") if kind else None
    shapes = {
        None: {"last_hidden_state": (batch, length, D)},
        "causal_lm": {"logits": (batch, length, spec["vocab_size"])},
        "sequence_classification": {"logits": (batch, num_labels)},
        "token_classification": {"logits": (batch, length, num_labels)},
        "question_answering": {"start_logits": (batch, length), "end_logits": (batch, length)},
    }[kind]
    for name, shape in shapes.items():
        assert out[name].shape == shape, name

    # past_key_values: present iff use_cache, for the heads whose output has the field
    has_cache_field = "past_key_values" in {f for f in out.__dataclass_fields__}
    assert has_cache_field == (kind in (None, "causal_lm", "sequence_classification"))
    if has_cache_field:
        assert out.past_key_values.get_seq_length() == model.num_prepended + length
        assert "past_key_values" in out.keys()
        without = model(ids, use_cache=False)
        assert without.past_key_values is None and "past_key_values" not in without.keys()
        assert len(without.to_tuple()) == len(out.to_tuple()) - 1
    assert "loss" not in out.keys()
    assert not any(name in out.keys() for name in ("hidden_states", "attentions"))

    if model.routed:
        check_router_outputs(model, ids, kind)
    if kind is None:
        return
    labels = draw_labels(data, kind, spec, batch, length)
    if kind == "question_answering":  # the loss needs both positions
        assert model(ids, start_positions=labels["start_positions"]).loss is None
    with_loss = model(ids, **labels)
    assert with_loss.loss.shape == () and list(with_loss.keys())[0] == "loss" and with_loss[0] is with_loss.loss
    torch.testing.assert_close(with_loss.loss, expected_loss(kind, spec, with_loss, labels), atol=ATOL, rtol=1e-5)
    as_tuple = model(ids, return_dict=False, **labels)
    assert type(as_tuple) is tuple and len(as_tuple) == len(with_loss.to_tuple())
    for mine, theirs in zip(with_loss.to_tuple(), as_tuple):
        if isinstance(mine, torch.Tensor):
            torch.testing.assert_close(theirs, mine, rtol=0, atol=0)
        else:
            assert type(theirs) is type(mine) and theirs.get_seq_length() == mine.get_seq_length()


def check_router_outputs(model, ids, kind):
    """A mixture-of-experts model: router logits [B*S, E] per MoE layer, in transformers' field
    order, where transformers returns them (causal LM, bare model), and the load-balancing loss,
    recomputed here, for the causal LM."""
    asked = model(ids, output_router_logits=True)
    if kind not in ("causal_lm", None):
        assert "router_logits" not in asked.keys()
        return
    moes = [model.spec.layer_specs[i].mlp for i in model.routed]
    assert [tuple(r.shape) for r in asked.router_logits] == [(ids.numel(), m.num_experts) for m in moes]
    if kind is None:
        assert list(asked.keys()) == ["last_hidden_state", "past_key_values", "router_logits"]
        return
    assert list(asked.keys()) == ["aux_loss", "logits", "past_key_values", "router_logits"]
    E, k = moes[0].num_experts, moes[0].top_k
    probs = [F.softmax(r, dim=-1) for r in asked.router_logits]  # each [N, E]
    share = sum(F.one_hot(p.topk(k).indices, E).sum(1).float().mean(0) for p in probs) / len(probs)  # [E]
    mean_prob = sum(p.mean(0) for p in probs) / len(probs)  # [E]
    torch.testing.assert_close(asked.aux_loss, E * (share * mean_prob).sum(), atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_sequence_classification_reads_the_last_non_pad_token():
    spec = load_spec("tiny-glm-4").to_dict()
    spec["heads"] = [{"kind": "sequence_classification", "num_labels": 3}]
    model = build_model(spec, seed=0)
    pad = spec["pad_token_id"]
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, pad, pad], [9, pad, pad, pad]])
    mask = (ids != pad).long()
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    proj = model.heads["sequence_classification"].proj
    last = [3, 1, 0]
    expected = torch.stack([proj(out.hidden_states[-1][i, j]) for i, j in enumerate(last)])
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# hidden states and attention probabilities


@given(data=st.data())
@torch.no_grad()
def test_hidden_states_and_attentions(data):
    spec, model = draw_model(data)
    ids, mask, _ = left_padded_batch(data, spec["vocab_size"])
    B, S = ids.shape
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    L, H, D = spec["num_layers"], spec["attention"]["num_heads"], spec["hidden_size"]
    real = mask.bool()

    # hidden_states: the embedding output, one per layer, the last after the final norm
    assert len(out.hidden_states) == L + 1 and all(h.shape == (B, S, D) for h in out.hidden_states)
    P = model.num_prepended  # the embedding block on its own (tests/blocks), fed the positions the mask gives
    full_mask = torch.cat([torch.ones(B, P, dtype=torch.bool), real], dim=1)
    embedded = model.embedding(input_ids=ids, inputs_embeds=None, positions=(full_mask.long().cumsum(-1) - 1).clamp(min=0),
                               token_mask=full_mask, first=True).x[:, P:]  # [B, S, D]
    torch.testing.assert_close(out.hidden_states[0][real], embedded[real], rtol=0, atol=ATOL)
    last = out.hidden_states[-1][real]  # final norm with its initial unit scale and zero shift
    if not spec["final_norm"]:
        pass
    elif spec["norm"]["kind"] == "rmsnorm":
        torch.testing.assert_close(last.pow(2).mean(-1), torch.ones(len(last)), rtol=0, atol=1e-3)
    else:
        torch.testing.assert_close(last.mean(-1), torch.zeros(len(last)), rtol=0, atol=1e-4)
        torch.testing.assert_close(last.var(-1, unbiased=False), torch.ones(len(last)), rtol=0, atol=1e-3)
    head = spec["heads"][0]
    logits = model.heads["causal_lm"].proj(out.hidden_states[-1]) * head["logit_scale"]
    if "softcap" in head:
        logits = torch.tanh(logits / head["softcap"]) * head["softcap"]
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=ATOL)

    # attentions: [B, H, S, S], rows are distributions over the keys each query may see
    assert len(out.attentions) == L and all(a.shape == (B, H, S, S) for a in out.attentions)
    position = torch.arange(S)
    may_see = real[:, None, :] & (position[None, :, None] >= position[None, None, :])  # [B, S, S]
    if model.prefix_lm:  # the whole first forward is context
        may_see = real[:, None, :].expand(B, S, S)
    for a in out.attentions:
        a = a.permute(0, 2, 1, 3)[real]  # [real queries, H, S]
        assert (a[~may_see[real][:, None, :].expand_as(a)] == 0).all()
        if model.num_prepended:  # the prompt's columns are dropped from what is returned
            assert (a.sum(-1) <= 1 + 1e-5).all()
        else:
            torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)

    # asking for the probabilities takes the explicit path; it computes the same thing
    torch.testing.assert_close(out.logits, model(ids, attention_mask=mask).logits, rtol=0, atol=ATOL)


@torch.no_grad()
def test_attentions_while_decoding_cover_the_cache():
    model = build_model("tiny-cpm-ant", seed=0)  # 3 prompt tokens stay in the cache
    out = model(torch.tensor([[5, 6, 7], [8, 9, 10]]), use_cache=True)
    step = model(torch.tensor([[11], [12]]), past_key_values=out.past_key_values, output_attentions=True)
    assert [a.shape for a in step.attentions] == [(2, 4, 1, 3 + 3 + 1)] * 2
    torch.testing.assert_close(step.attentions[0].sum(-1), torch.ones(2, 4, 1), rtol=0, atol=1e-5)


@torch.no_grad()
def test_bare_trunk_returns_the_final_hidden_states():
    spec = load_spec("tiny-bloom").to_dict()
    spec["heads"] = []
    model = build_model(spec, seed=0)
    ids = torch.tensor([[5, 6, 7]])
    out = model(ids, output_hidden_states=True)
    assert type(out) is out_types.BaseModelOutputWithPast
    assert out.last_hidden_state is out.hidden_states[-1]
    assert list(out.keys()) == ["last_hidden_state", "past_key_values", "hidden_states"]
    with pytest.raises(InputError, match="this model's heads are none"):
        model(ids, head="causal_lm")


# ---------------------------------------------------------------------------------------------
# logits_to_keep, inputs_embeds


@given(data=st.data())
@torch.no_grad()
def test_logits_to_keep(data):
    spec, model = draw_model(data)
    S = data.draw(st.integers(1, 6), label="length")
    ids = torch.randint(0, spec["vocab_size"], (2, S))
    full = model(ids).logits
    keep = data.draw(st.integers(0, S), label="logits_to_keep")
    kept = model(ids, logits_to_keep=keep).logits
    torch.testing.assert_close(kept, full[:, -keep:] if keep else full, rtol=0, atol=ATOL)
    index = torch.tensor(data.draw(st.lists(st.integers(0, S - 1), min_size=1, max_size=S), label="indices"))
    torch.testing.assert_close(model(ids, logits_to_keep=index).logits, full[:, index], rtol=0, atol=ATOL)


@given(data=st.data())
@torch.no_grad()
def test_inputs_embeds_equal_input_ids(data):
    spec, model = draw_model(data)
    ids, mask, _ = left_padded_batch(data, spec["vocab_size"])
    by_ids = model(ids, attention_mask=mask).logits
    embeds = model.embedding.tokens(ids)  # [B, S, D]
    if not getattr(model.spec.embedding, "scale_inputs_embeds", True):  # Gemma: the caller passes scaled rows
        embeds = embeds * torch.tensor(model.embedding.scale, dtype=embeds.dtype)
    by_embeds = model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# parameters


def expected_parameters(spec) -> int:
    """Parameters a spec describes, counted from its fields (tied weights once)."""
    D, V = spec.hidden_size, spec.vocab_size

    def norm(n, width: int = D) -> int:
        return width * (2 if n.kind == "layernorm" and n.bias else 1) if n.affine else 0

    emb = spec.embedding
    if emb.kind == "prompt_segments":
        total = (V + emb.prompt.num_types * emb.prompt.length) * D + emb.segments.num_types * D
    else:
        total = V * D + (norm(spec.norm) if emb.norm else 0)
        if emb.learned_positions is not None:
            total += (spec.max_positions + emb.learned_positions.offset) * D
    schemes = []
    for layer in spec.layer_specs:
        a, m = layer.attention, layer.mlp
        H, I = a.num_heads, m.intermediate_size
        if a.kind == "mla":  # queries (maybe through a normed bottleneck), latent + shared rotary key, up, out
            R, Dn, Dr, Dv, Q = a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.q_lora_rank
            bias = int(a.bias)
            total += D * H * (Dn + Dr) if Q is None else D * Q + bias * Q + Q + Q * H * (Dn + Dr)
            total += D * (R + Dr) + bias * (R + Dr) + R + R * H * (Dn + Dv) + H * Dv * D + bias * D
        else:
            Hkv, Dh = a.num_kv_heads, a.head_dim
            qkv = (H + 2 * Hkv) * Dh
            total += D * qkv + (qkv if a.qkv_bias else 0) + H * Dh * D + (D if a.out_bias else 0)
            if a.qk_norm is not None:  # a query and a key norm
                widths = (Dh, Dh) if a.qk_norm.scope == "head" else (H * Dh, Hkv * Dh)
                total += sum(norm(a.qk_norm.norm or layer.norm, width) for width in widths)
        if m.kind == "moe":  # router, experts, shared expert and its gate (a grouped router's score bias: a buffer)
            total += D * m.num_experts + m.num_experts * 3 * D * I
            if m.shared_expert is not None:
                total += 3 * D * m.shared_expert.intermediate_size + (D if m.shared_expert.gated else 0)
        else:
            total += (3 * D * I + ((2 * I + D) if m.bias else 0)) if m.kind == "gated" \
                else (2 * D * I + ((I + D) if m.bias else 0))
        norms = {"pre_norm": 2, "sandwich": 4, "post_branch_norm": 2, "post_norm": 2,
                 "parallel": 1 if getattr(layer.wiring, "shared_norm", False) else 2}[layer.wiring.kind]
        total += norms * norm(layer.norm)
        p = layer.position
        if (p, a) not in schemes:  # layers with the same scheme and attention share the module
            schemes.append((p, a))
            if p.kind == "bucket_bias":
                total += ((emb.num_segments**2 if p.segments else 0) + p.num_buckets) * H
    total += norm(spec.norm) if spec.final_norm else 0
    for head in spec.heads:
        outputs = {"causal_lm": V, "question_answering": 2}.get(head.kind) or head.num_labels
        total += (0 if head.tied_to_embedding(spec) else D * outputs) + (outputs if head.bias else 0)
    return total


@given(spec=spec_dicts(heads=HEADS, length_dependent=True))
def test_parameter_count_follows_the_spec(spec):
    model = build_model(spec, device="meta")
    assert model.num_parameters() == expected_parameters(load_spec(spec))
    if spec["embedding"].get("tied"):
        assert model.heads["causal_lm"].proj.weight is model.embedding.tokens.weight


@pytest.mark.parametrize(("qk_norm", "norm", "shapes"), [
    ({"scope": "head"}, {"kind": "rmsnorm", "unit_offset": True},
     {"q_norm.norm.weight": (4,), "k_norm.norm.weight": (4,)}),
    ({"scope": "per_head", "norm": {"kind": "layernorm", "bias": False}}, {"kind": "rmsnorm"},
     {"q_norm.norm.weight": (4, 4), "k_norm.norm.weight": (2, 4)}),
    ({"scope": "per_head"}, {"kind": "layernorm"}, {"q_norm.norm.weight": (4, 4), "q_norm.norm.bias": (4, 4),
                                                    "k_norm.norm.weight": (2, 4), "k_norm.norm.bias": (2, 4)}),
    ({"scope": "projection"}, {"kind": "rmsnorm"}, {"q_norm.norm.weight": (16,), "k_norm.norm.weight": (8,)}),
    ({"scope": "projection"}, {"kind": "layernorm", "affine": False}, {}),
])
def test_qk_norm_parameters_have_their_names_shapes_and_identity_initial_values(qk_norm, norm, shapes):
    """The names and shapes a checkpoint converter maps to (StableLM's per-head norms stacked);
    scales start at 1, or at 0 for a unit_offset norm (which scales by 1 + weight), shifts at 0."""
    spec = {"name": "t", "vocab_size": 32, "hidden_size": 16, "num_layers": 1, "max_positions": 32,
            "position": {"kind": "rope"}, "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2,
                                                       "qk_norm": qk_norm},
            "norm": norm, "mlp": {"kind": "gated", "intermediate_size": 32}, "heads": [{"kind": "causal_lm"}]}
    model = build_model(spec, seed=0)
    params = {name.removeprefix("layers.0.attention."): p for name, p in model.named_parameters()
              if "_norm." in name and ".attention." in name}
    assert {name: tuple(p.shape) for name, p in params.items()} == shapes
    offset = (qk_norm.get("norm") or norm).get("unit_offset", False)
    for name, p in params.items():
        assert torch.all(p == (1.0 if name.endswith("weight") and not offset else 0.0)), name
    if offset:  # every norm of the model scales by 1 + weight: all start at the identity
        assert all(torch.all(p == 0) for name, p in model.named_parameters() if "norm" in name)


# ---------------------------------------------------------------------------------------------
# argument errors


@pytest.fixture(scope="module")
def glm():
    return build_model("tiny-glm-4", seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of input_ids or inputs_embeds"),
    ({"input_ids": torch.tensor([[1, 2]]), "inputs_embeds": torch.zeros(1, 2, 64)}, "exactly one of"),
    ({"input_ids": torch.tensor([1, 2])}, r"input_ids must be \[batch, seq\], got shape \(2,\)"),
    ({"input_ids": torch.tensor([[1, 256]])}, r"input_ids must lie in \[0, vocab_size=256\), got values in \[1, 256\]"),
    ({"input_ids": torch.tensor([[-1, 2]])}, r"got values in \[-1, 2\]"),
    ({"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.ones(1, 3)},
     r"attention_mask has shape \(1, 3\); expected \(1, 2\)"),
    ({"input_ids": torch.tensor([[1, 2]]), "head": "question_answering"},
     r"head='question_answering': this model's heads are \['causal_lm'\]"),
    ({"inputs_embeds": torch.zeros(1, 2, 63)}, r"inputs_embeds must be \[batch, seq, hidden_size=64\], got shape \(1, 2, 63\)"),
    ({"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([[1, 2]]), "logits_to_keep": 1},
     "labels need the logits of every position"),
    ({"input_ids": torch.tensor([[1, 2]], dtype=torch.uint8)},
     r"input_ids must hold integers of dtype torch.int64 \(or torch.int32\), got torch.uint8; convert with "
     r"input_ids.long\(\)"),
    ({"input_ids": [[1, 2]]},
     r"input_ids must be a torch.Tensor \(token ids \[batch, seq\]\), got \[\[1, 2\]\] \(list\)"),
    ({"input_ids": torch.tensor([[1, 2]]), "position_ids": torch.tensor([[0, 1, 2]])},
     r"position_ids has shape \(1, 3\); expected \(1, 2\): one position per input token"),
    ({"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([[-100, 300]])},
     r"labels must lie in \[0, vocab_size=256\) or be the ignore index -100, got values in \[300, 300\]"),
    ({"input_ids": torch.tensor([[1, 2]]), "logits_to_keep": -1},
     r"logits_to_keep must be an int >= 0 \(keep the last N positions; 0: all\) or a 1-D tensor of positions, "
     r"got -1 \(int\)"),
    ({"input_ids": torch.tensor([[1, 2]]), "logits_to_keep": torch.tensor([2])},
     r"logits_to_keep must lie in \[-2, the input's length=2\), got values in \[2, 2\]"),
    ({"inputs_embeds": torch.zeros(1, 2, 64, dtype=torch.float64)},
     r"inputs_embeds has dtype torch.float64; expected torch.float32, the model's"),
])
def test_bad_arguments_raise_input_error(glm, kwargs, message):
    with pytest.raises(InputError, match=message):
        glm(**kwargs)


def test_prefix_mask_is_checked():
    cpm = build_model("tiny-cpm-ant", seed=0)
    with pytest.raises(InputError, match=r"prefix_mask has shape \(1, 3\); expected \(1, 2\)"):
        cpm(torch.tensor([[5, 6]]), prefix_mask=torch.ones(1, 3))
    with pytest.raises(InputError, match="prefix_mask marks prefix-LM context, which only an embedding kind"):
        build_model("tiny-glm-4", seed=0)(torch.tensor([[5, 6]]), prefix_mask=torch.ones(1, 2))
