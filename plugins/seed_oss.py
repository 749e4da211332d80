"""The Seed-OSS family: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim independent of width."""

from composer import Family, hookimpl

FAMILY = Family(
    name="seed-oss",
    description="Seed-OSS: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim independent of width",
    specs=("seed-oss-36b", "tiny-seed-oss"),
    hf_model_types=("seed_oss",),
)


@hookimpl
def register_families(register):
    register(FAMILY)
