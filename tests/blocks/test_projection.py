"""A fused projection is the separate projections stacked: same outputs, same order."""

import torch

from archcomposer.blocks.projection import FusedProjection, SplitProjection


@torch.no_grad()
def test_fused_projection_equals_the_split_one():
    parts = {"q": torch.nn.Linear(6, 8), "k": torch.nn.Linear(6, 4), "v": torch.nn.Linear(6, 4)}
    split = SplitProjection(**parts)
    fused = FusedProjection(proj=torch.nn.Linear(6, 16), sizes=[8, 4, 4])
    fused.proj.weight.copy_(torch.cat([p.weight for p in parts.values()]))
    fused.proj.bias.copy_(torch.cat([p.bias for p in parts.values()]))
    x = torch.randn(2, 3, 6)
    for a, b, p in zip(fused(x), split(x), parts.values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b, p(x), rtol=0, atol=0)
    assert [t.shape[-1] for t in fused(x)] == [8, 4, 4]


def test_split_projection_keeps_the_callers_names_and_order():
    split = SplitProjection(up=torch.nn.Linear(2, 3), gate=torch.nn.Linear(2, 5))
    assert [name for name, _ in split.named_children()] == ["up", "gate"]
    assert [t.shape[-1] for t in split(torch.randn(1, 2))] == [3, 5]
