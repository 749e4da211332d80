"""The transformers checkpoint of a spec that no transformers family expresses.

Such a checkpoint is a transformers directory whose ``config.json`` has ``model_type:
"archcomposer"``, the spec itself under ``spec``, and an ``auto_map`` naming two small modules
written next to it, ``configuration_archcomposer.py`` and ``modeling_archcomposer.py``, which only
import the classes of ``archcomposer.hf``. So ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` loads it wherever archcomposer (with its ``hf`` extra) is installed, and
``archcomposer.from_pretrained(dir)`` reads it too. The tensors are ours, under ``model.`` (where the
transformers classes keep the composed model).

This module is the core's side of that format: it writes and reads it without importing
transformers (the modules' text is data); ``archcomposer.hf`` is the transformers side and uses the
same names and fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archcomposer.errors import CheckpointError

if TYPE_CHECKING:
    from archcomposer.spec import ModelSpecBase

MODEL_TYPE = "archcomposer"
#: Where the transformers classes keep the ComposedModel: our tensor names follow it.
TENSOR_PREFIX = "model."
CONFIG_MODULE = "configuration_archcomposer"
MODELING_MODULE = "modeling_archcomposer"

#: The transformers class for each head kind (None: the bare model) and the Auto class that loads it.
ARCHITECTURES: dict[str | None, tuple[str, str]] = {
    None: ("ArchComposerModel", "AutoModel"),
    "causal_lm": ("ArchComposerForCausalLM", "AutoModelForCausalLM"),
    "sequence_classification": ("ArchComposerForSequenceClassification", "AutoModelForSequenceClassification"),
    "token_classification": ("ArchComposerForTokenClassification", "AutoModelForTokenClassification"),
    "question_answering": ("ArchComposerForQuestionAnswering", "AutoModelForQuestionAnswering"),
}

CONFIG_SOURCE = f'''"""The transformers config of an archcomposer checkpoint (written by archcomposer).

It needs archcomposer with its transformers extra: pip install "archcomposer[hf]"."""

from archcomposer.hf import ArchComposerConfig

__all__ = ["ArchComposerConfig"]
'''

_CLASSES = sorted(name for name, _ in ARCHITECTURES.values())
MODELING_SOURCE = f'''"""The transformers model classes of an archcomposer checkpoint (written by archcomposer).

They are archcomposer's own, imported: the weights are a composed model's and the spec is in
config.json. It needs archcomposer with its transformers extra: pip install "archcomposer[hf]"."""

from archcomposer.hf import {", ".join(_CLASSES)}

__all__ = {_CLASSES!r}
'''

#: The files written next to config.json, by name.
SOURCES = {f"{CONFIG_MODULE}.py": CONFIG_SOURCE, f"{MODELING_MODULE}.py": MODELING_SOURCE}


def auto_map() -> dict[str, str]:
    """config.json's ``auto_map``: each Auto class -> the class in the modules above."""
    return {"AutoConfig": f"{CONFIG_MODULE}.ArchComposerConfig",
            **{auto: f"{MODELING_MODULE}.{name}" for name, auto in ARCHITECTURES.values()}}


def config_fields(spec: ModelSpecBase) -> dict[str, Any]:
    """The config.json fields that tools read (generation's special tokens, lm-eval's context
    length, weight tying), derived from the spec, which stays the one source of truth."""
    return {"vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
            "max_position_embeddings": spec.max_positions, "initializer_range": spec.initializer_range,
            "pad_token_id": spec.pad_token_id, "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id,
            "tie_word_embeddings": any(h.tied_to_embedding(spec) for h in spec.heads)}


def hf_config(spec: ModelSpecBase, head: str | None, dtype: str | None) -> dict[str, Any]:
    """The whole config.json of a checkpoint of ``spec`` whose architecture has ``head``."""
    if head not in ARCHITECTURES:
        raise CheckpointError(f"head={head!r}: transformers has no Auto class for it; archcomposer's transformers "
                              f"classes cover {[k for k in ARCHITECTURES if k is not None]} and the bare model")
    config = {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURES[head][0]], "auto_map": auto_map(),
              "spec": spec.to_dict(), **config_fields(spec)}
    num_labels = next((h.num_labels for h in spec.heads if hasattr(h, "num_labels")), None)
    if num_labels is not None:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    if dtype is not None:
        config["dtype"] = dtype
    return config


def spec_data(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The spec (as a dict) that an archcomposer config.json carries."""
    spec = config.get("spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: model_type {MODEL_TYPE!r} needs the spec under 'spec' (a mapping), "
                              f"got {type(spec).__name__}")
    return spec


def write_sources(directory) -> None:
    """Write the two modules that ``auto_map`` names into ``directory``."""
    for name, text in SOURCES.items():
        path = directory / name
        path.unlink(missing_ok=True)  # a save may have hard-linked the previous checkpoint's copy here
        path.write_text(text)
