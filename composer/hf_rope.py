"""RoPE between a Hugging Face ``config.json`` and our ``position`` section, for families.

A config gives RoPE in one of two forms: ``rope_parameters`` (transformers 5: ``rope_type``,
``rope_theta`` and the type's fields, sometimes ``partial_rotary_factor``) or, in older
checkpoints, a top-level ``rope_theta`` beside a ``rope_scaling`` dict typed by ``type`` or
``rope_type``. A family reads either in two calls and writes the transformers 5.23 form back::

    rope = rope_parameters_of(config)
    position = position_from_hf(rope, max_positions=config["max_position_embeddings"])
    ...
    hf["rope_parameters"] = rope_parameters_to_hf(spec.position, max_positions=spec.max_positions)

Every ``rope_type`` whose frequencies transformers computes in ``modeling_rope_utils`` without a
model-specific rotary class is supported: ``ROPE_TYPES``. Fields transformers does not read for a
type are ignored, as transformers ignores them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from archcomposer.errors import CheckpointError
from archcomposer.spec import PartialRopeSpec, PositionSpec, RopeSpec

#: The rope_type values we translate ("default" is RoPE without ``scaling``).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
#: transformers' ``default_theta`` (a few config classes override it: pass theirs to ``rope_parameters_of``).
DEFAULT_THETA = 10000.0
#: The types whose pretraining length transformers keeps in ``original_max_position_embeddings``.
_WITH_ORIGINAL = ("llama3", "yarn", "longrope")
_ROTARY_KINDS = TypeAdapter(Annotated[RopeSpec | PartialRopeSpec, Field(discriminator="kind")])


def rope_parameters_of(config: dict[str, Any], *, layer_type: str | None = None,
                       default_theta: float = DEFAULT_THETA) -> dict[str, Any]:
    """The standardized ``rope_parameters`` of a config.json dict, as transformers' config
    ``standardize_rope_params`` makes them: ``rope_scaling`` (legacy) wins over ``rope_parameters``;
    ``rope_type`` is read from ``type`` when missing (``type`` is dropped); ``rope_theta`` and
    ``partial_rotary_factor`` come from the top level when the dict lacks them; ``llama3``, ``yarn``
    and ``longrope`` get ``original_max_position_embeddings`` from the top level (Phi-3 keeps it
    there, and transformers lets that win) or else ``max_position_embeddings``.

    ``layer_type``: for configs that give parameters per layer type (keys of ``layer_types``, as
    Gemma 3), the entry to read. Returns a new dict; ``config`` is not changed."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    per_type = [key for key in rope if key in (config.get("layer_types") or ())]
    if per_type:
        if layer_type not in per_type:
            raise CheckpointError(f"config.json rope_parameters is given per layer type ({', '.join(per_type)}); "
                                  f"pass layer_type= one of them, got {layer_type!r}")
        if rope[layer_type] is None:
            raise CheckpointError(f"config.json rope_parameters.{layer_type} is null: those layers have no RoPE")
        rope = rope[layer_type]
    rope = dict(rope)
    legacy_type = rope.pop("type", None)
    rope.setdefault("rope_type", legacy_type or "default")
    if rope.get("rope_theta") is None:
        rope["rope_theta"] = config["rope_theta"] if config.get("rope_theta") is not None else default_theta
    if config.get("partial_rotary_factor") is not None:
        rope.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
    if rope["rope_type"] in _WITH_ORIGINAL:
        if config.get("original_max_position_embeddings") is not None:
            rope["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        elif config.get("max_position_embeddings") is not None:
            rope.setdefault("original_max_position_embeddings", config["max_position_embeddings"])
    return rope


def position_from_hf(rope: dict[str, Any], *, max_positions: int, fraction: float = 1.0,
                     interleaved: bool = False) -> dict[str, Any]:
    """Our ``position`` section for a standardized ``rope_parameters`` dict (``rope_parameters_of``):
    ``rope`` when the whole head rotates in halves, else ``partial_rope``; ``scaling`` unless
    ``rope_type`` is ``default``. ``max_positions``: the config's ``max_position_embeddings`` (YaRN's
    missing ``factor`` is derived from it, as transformers does). ``fraction``: the family's
    ``partial_rotary_factor`` when ``rope`` has none; ``interleaved``: the family rotates adjacent
    pairs (GLM). Raises ``CheckpointError`` for an unsupported ``rope_type`` or a missing field."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(f"config.json rope_parameters.rope_type = {rope_type!r} is not supported; "
                              f"supported: {', '.join(ROPE_TYPES)}")
    theta = rope.get("rope_theta")
    theta = DEFAULT_THETA if theta is None else theta
    if rope.get("partial_rotary_factor") is not None:
        fraction = rope["partial_rotary_factor"]
    if fraction == 1.0 and not interleaved:
        position: dict[str, Any] = {"kind": "rope", "theta": theta}
    else:
        position = {"kind": "partial_rope", "theta": theta, "fraction": fraction, "interleaved": interleaved}
    if rope_type != "default":
        position["scaling"] = _scaling_from_hf(rope_type, rope, max_positions)
    return position


def _scaling_from_hf(rope_type: str, rope: dict[str, Any], max_positions: int) -> dict[str, Any]:
    def need(key: str):
        if rope.get(key) is None:
            raise CheckpointError(f"config.json rope_parameters.{key} is missing: rope_type {rope_type!r} needs it")
        return rope[key]

    scaling: dict[str, Any] = {"type": rope_type}
    original = rope.get("original_max_position_embeddings") or max_positions
    if rope_type in ("linear", "dynamic"):  # dynamic scales from max_position_embeddings, whatever else is given
        scaling["factor"] = need("factor")
    elif rope_type == "yarn":
        factor = rope.get("factor")
        scaling.update(factor=factor if factor is not None else max_positions / original,
                       original_max_positions=original, beta_fast=rope.get("beta_fast") or 32.0,
                       beta_slow=rope.get("beta_slow") or 1.0, truncate=bool(rope.get("truncate", True)))
        scaling.update({key: rope[key] for key in ("mscale", "mscale_all_dim", "attention_factor")
                        if rope.get(key) is not None})
    elif rope_type == "longrope":
        scaling.update(short_factor=list(need("short_factor")), long_factor=list(need("long_factor")),
                       original_max_positions=original)
        scaling.update({key: rope[key] for key in ("factor", "attention_factor") if rope.get(key) is not None})
    else:  # llama3
        scaling.update(factor=need("factor"), low_freq_factor=need("low_freq_factor"),
                       high_freq_factor=need("high_freq_factor"), original_max_positions=original)
    return scaling


def rope_parameters_to_hf(position: PositionSpec | dict[str, Any], *, max_positions: int) -> dict[str, Any]:
    """The ``rope_parameters`` transformers 5.23 writes for our ``rope`` or ``partial_rope``
    section (a spec object or its dict): ``rope_type``, ``rope_theta``, ``partial_rotary_factor``
    for ``partial_rope``, and the scaling's fields under transformers' names, with
    ``original_max_position_embeddings`` filled in from ``max_positions`` (the spec's) where the
    scaling leaves it out. Raises ``CheckpointError`` for another position kind, or a ``dynamic``
    scaling whose ``original_max_positions`` is not ``max_positions`` (transformers' dynamic NTK
    scales from ``max_position_embeddings``)."""
    if isinstance(position, dict):
        if position.get("kind") not in ("rope", "partial_rope"):
            raise CheckpointError(f"position.kind {position.get('kind')!r} has no rope_parameters "
                                  f"(only 'rope' and 'partial_rope')")
        position = _ROTARY_KINDS.validate_python(position)
    if not isinstance(position, RopeSpec | PartialRopeSpec):
        raise CheckpointError(f"position.kind {position.kind!r} has no rope_parameters "
                              f"(only 'rope' and 'partial_rope')")
    scaling = position.scaling
    rope: dict[str, Any] = {"rope_type": scaling.type if scaling is not None else "default",
                            "rope_theta": position.theta}
    if isinstance(position, PartialRopeSpec):
        rope["partial_rotary_factor"] = position.fraction
    if scaling is None:
        return rope
    fields = scaling.model_dump(mode="json", exclude={"type"}, exclude_none=True)
    original = fields.pop("original_max_positions", None)
    if scaling.type == "dynamic":
        if original not in (None, max_positions):
            raise CheckpointError(f"position.scaling.original_max_positions ({original}) must equal max_positions "
                                  f"({max_positions}) to be written for transformers: its dynamic NTK scales "
                                  f"from max_position_embeddings")
    elif scaling.type in _WITH_ORIGINAL:
        fields["original_max_position_embeddings"] = original or max_positions
    return {**rope, **fields}
