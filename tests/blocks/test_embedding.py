"""Input kinds: token rows (scaled, plus learned positions, then the optional norm), and CPM-Ant's
prompt + segments with its prefix-LM context."""

import pytest
import torch

from archcomposer.blocks.embedding import PromptSegmentsEmbedding, TokenEmbedding
from archcomposer.errors import InputError


def step(embedding, ids=None, embeds=None, *, first=True, prefix_mask=None, positions=None):
    B, S = (ids if ids is not None else embeds).shape[:2]
    S_all = S + (embedding.num_prepended if first else 0)
    positions = positions if positions is not None else torch.arange(S_all).expand(B, S_all)
    return embedding(input_ids=ids, inputs_embeds=embeds, positions=positions,
                     token_mask=torch.ones(B, S_all, dtype=torch.bool), first=first, prefix_mask=prefix_mask)


@torch.no_grad()
def test_tokens_scaled_plus_learned_positions_then_norm():
    norm = torch.nn.LayerNorm(4)
    tokens, positions = torch.nn.Embedding(10, 4), torch.nn.Embedding(8, 4)
    embedding = TokenEmbedding(tokens=tokens, scale=3.0, positions=positions, position_offset=2, norm=norm)
    ids = torch.tensor([[1, 2, 9]])
    out = step(embedding, ids, positions=torch.tensor([[0, 1, 5]]))
    expected = norm(3.0 * tokens.weight[ids] + positions.weight[torch.tensor([[2, 3, 7]])])
    torch.testing.assert_close(out.x, expected, rtol=0, atol=1e-6)
    assert out.segments is None and out.context is None
    with pytest.raises(InputError, match="beyond the 6 learned positions"):
        step(embedding, ids, positions=torch.tensor([[0, 1, 6]]))


@torch.no_grad()
def test_plain_tokens_and_inputs_embeds():
    embedding = TokenEmbedding(tokens=torch.nn.Embedding(10, 4))
    ids = torch.tensor([[1, 2, 9]])
    torch.testing.assert_close(step(embedding, ids).x, embedding.tokens.weight[ids], rtol=0, atol=0)
    given = torch.randn(1, 3, 4)
    assert torch.equal(step(embedding, embeds=given).x, given)
    with pytest.raises(InputError, match="prefix_mask"):
        step(embedding, ids, prefix_mask=torch.ones(1, 3))


@torch.no_grad()
def test_dropout_only_in_training():
    embedding = TokenEmbedding(tokens=torch.nn.Embedding(10, 64), dropout=0.5)
    ids = torch.arange(10)[None]
    assert torch.equal(step(embedding.eval(), ids).x, embedding.tokens.weight[ids])
    dropped = step(embedding.train(), ids).x
    assert (dropped == 0).any()
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * embedding.tokens.weight[ids][kept])


@torch.no_grad()
def test_prompt_segments_prepend_the_prompt_once_and_mark_context():
    tokens, segments = torch.nn.Embedding(10 + 6, 4), torch.nn.Embedding(3, 4)
    embedding = PromptSegmentsEmbedding(tokens=tokens, segments=segments, prompt_start=12, prompt_length=2,
                                        token_segment=2)
    ids = torch.tensor([[1, 2, 9]])
    out = step(embedding, ids)
    rows = torch.tensor([[12, 13, 1, 2, 9]])
    expected_segments = torch.tensor([[0, 0, 2, 2, 2]])
    torch.testing.assert_close(out.x, tokens.weight[rows] + segments.weight[expected_segments], rtol=0, atol=0)
    assert torch.equal(out.segments, expected_segments) and out.context.all()
    narrowed = step(embedding, ids, prefix_mask=torch.tensor([[1, 1, 0]]))
    assert narrowed.context.tolist() == [[True, True, True, True, False]]
    later = step(embedding, torch.tensor([[4]]), first=False)
    assert later.x.shape == (1, 1, 4) and later.context is None and later.segments.tolist() == [[2]]
    with pytest.raises(InputError, match="first forward"):
        step(embedding, torch.tensor([[4]]), first=False, prefix_mask=torch.ones(1, 1))
