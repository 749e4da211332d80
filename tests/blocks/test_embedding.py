"""The embedding: token rows, plus segment rows (CPM-Ant), then the optional norm (BLOOM)."""

import torch

from archcomposer.blocks.embedding import Embedding


@torch.no_grad()
def test_tokens_plus_segments_then_norm():
    norm = torch.nn.LayerNorm(4)
    embedding = Embedding(num_embeddings=10, hidden_size=4, num_segments=3, norm=norm)
    ids, segments = torch.tensor([[1, 2, 9]]), torch.tensor([[0, 2, 1]])
    expected = norm(embedding.tokens.weight[ids] + embedding.segments.weight[segments])
    torch.testing.assert_close(embedding(input_ids=ids, segment_ids=segments), expected, rtol=0, atol=0)


@torch.no_grad()
def test_plain_embedding_and_inputs_embeds():
    embedding = Embedding(num_embeddings=10, hidden_size=4)
    assert embedding.segments is None
    ids = torch.tensor([[1, 2, 9]])
    torch.testing.assert_close(embedding(input_ids=ids), embedding.tokens.weight[ids], rtol=0, atol=0)
    given = torch.randn(1, 3, 4)
    assert torch.equal(embedding(inputs_embeds=given), given)
