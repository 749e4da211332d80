"""A model family: the knowledge that connects a published architecture to specs (its shipped
specs, and, for checkpoint import/export, its Hugging Face config and weight names)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What a family plugin registers.

    name: the value of a spec's ``family`` field.
    description: one line for ``archcomposer plugins``.
    specs: names of the shipped specs of this family.
    hf_model_types: ``model_type`` values of Hugging Face ``config.json`` this family reads.
    """

    name: str
    description: str = ""
    specs: tuple[str, ...] = ()
    hf_model_types: tuple[str, ...] = ()
