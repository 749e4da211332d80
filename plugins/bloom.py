"""The BLOOM family: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head."""

from composer import Family, hookimpl

FAMILY = Family(
    name="bloom",
    description="BLOOM: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head",
    specs=("bloom-560m", "bloom-176b", "tiny-bloom"),
    hf_model_types=("bloom",),
)


@hookimpl
def register_families(register):
    register(FAMILY)
