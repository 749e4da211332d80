"""The CPM-Ant family: bucketed relative bias with segments, prompt tokens, prefix-LM mask, GeGLU."""

from composer import Family, hookimpl

FAMILY = Family(
    name="cpm-ant",
    description="CPM-Ant: bucketed relative bias with segments, prompt tokens, prefix-LM mask, GeGLU",
    specs=("cpm-ant-10b", "tiny-cpm-ant"),
    hf_model_types=("cpmant",),
)


@hookimpl
def register_families(register):
    register(FAMILY)
