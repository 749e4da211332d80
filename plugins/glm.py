"""The GLM-4 family: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias."""

from composer import Family, hookimpl

FAMILY = Family(
    name="glm-4",
    description="GLM-4: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias",
    specs=("glm-4-9b", "tiny-glm-4"),
    hf_model_types=("glm",),
)


@hookimpl
def register_families(register):
    register(FAMILY)
