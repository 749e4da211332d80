"""Any composed model as a transformers model: ``Trainer``, ``pipeline``, ``generate``, PEFT and
lm-evaluation-harness take it as they take a Llama.

The optional ``hf`` extra (``pip install "archcomposer[hf]"``) brings transformers; the core never
imports this module. Importing it registers ``ArchComposerConfig`` (``model_type: "archcomposer"``,
the spec carried inside the config) with ``AutoConfig`` and the classes below with ``AutoModel``,
``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``,
``AutoModelForTokenClassification`` and ``AutoModelForQuestionAnswering``.

Ways in: ``to_transformers(model)`` wraps a built ``ComposedModel`` (no copy: the wrapper trains
the same parameters), ``ArchComposerForCausalLM.from_spec("tiny-glm-4", seed=0)`` builds one as
``build_model`` does, ``AutoModelForCausalLM.from_pretrained(dir)`` loads a checkpoint that
``save_pretrained`` (ours with ``format="hf"``, or transformers') wrote. Way out: ``hf_model.model``
is the ``ComposedModel``.

Each task class built from a config (``from_pretrained``, ``from_config``, ``from_spec``) has
one head, as transformers' do: the spec's head of its kind, or a new one (a classifier with the
config's ``num_labels``), so ``AutoModelForSequenceClassification.from_pretrained(causal_lm_dir,
num_labels=3)`` drops the LM head and adds a classifier; the bare ``ArchComposerModel`` has none.
``to_transformers`` keeps every head of the model it wraps, and ``archcomposer.from_pretrained``
reads them all back from what it saves.

``generate`` runs transformers' decoding loop on archcomposer's own caches (``DynamicCache``, or
``StaticCache`` for ``cache_implementation="static"``), which the model needs for its position
records."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import transformers.modeling_outputs
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification, GenerationMixin,
                          PreTrainedConfig, PreTrainedModel)
from transformers import initialization as init
from transformers.generation.configuration_utils import GenerationMode

from archcomposer import hf_remote
from archcomposer.build import build_model, init_module
from archcomposer.cache import DynamicCache, StaticCache
from archcomposer.errors import InputError
from archcomposer.model import ComposedModel
from archcomposer.spec import ModelSpecBase
from archcomposer.specfile import SpecLike, load_spec

__all__ = ["ArchComposerConfig", "ArchComposerForCausalLM", "ArchComposerForQuestionAnswering",
           "ArchComposerForSequenceClassification", "ArchComposerForTokenClassification", "ArchComposerModel",
           "ArchComposerPreTrainedModel", "to_transformers"]


class ArchComposerConfig(PreTrainedConfig):
    """A transformers config that carries an archcomposer spec (``spec``, the dict a YAML file
    holds). The fields tools read (``vocab_size``, ``max_position_embeddings``, the special token
    ids, ``tie_word_embeddings``, ...) are derived from it, so they cannot disagree with it."""

    model_type = hf_remote.MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    spec: dict | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    max_position_embeddings: int | None = None
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.spec is not None:
            spec = load_spec(self.spec)
            self.describe(spec)
            labels = next((h.num_labels for h in spec.heads if hasattr(h, "num_labels")), None)
            if labels is not None and self.id2label is None and "num_labels" not in kwargs:
                kwargs["num_labels"] = labels
        # Always written, so that a checkpoint saved by transformers loads with trust_remote_code
        # in a process that never imported this module; save_pretrained writes the two modules.
        self.auto_map = hf_remote.auto_map()
        super().__post_init__(**kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing to do: this class is installed code, registered on import. (transformers' own
        version would copy this whole module next to every checkpoint saved afterwards.)"""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        hf_remote.write_sources(Path(save_directory))

    def describe(self, spec: ModelSpecBase) -> None:
        """Carry ``spec``, and the fields derived from it."""
        self.spec = spec.to_dict()
        for key, value in hf_remote.config_fields(spec).items():
            setattr(self, key, value)

    @property
    def model_spec(self) -> ModelSpecBase:
        """The spec, validated."""
        if self.spec is None:
            raise InputError("this ArchComposerConfig has no spec: create it as ArchComposerConfig(spec=...)")
        return load_spec(self.spec)


def _with_head(spec: ModelSpecBase, kind: str | None, config: ArchComposerConfig) -> ModelSpecBase:
    """``spec`` with only the head a task class computes (none for the bare model), as
    transformers' task classes each have theirs: the spec's head of that kind, else a new one; a
    classifier gets the config's ``num_labels`` (and ``problem_type``), as transformers sizes it."""
    data = spec.to_dict()
    if kind is None:
        data["heads"] = []
        return load_spec(data)
    head = next((h for h in data.get("heads", []) if h["kind"] == kind), {"kind": kind})
    if kind in ("sequence_classification", "token_classification"):
        head["num_labels"] = config.num_labels
        if kind == "sequence_classification" and config.problem_type is not None:
            head["problem_type"] = config.problem_type
    data["heads"] = [head]
    return load_spec(data)


class ArchComposerPreTrainedModel(PreTrainedModel):
    """The transformers face of a ``ComposedModel`` (``self.model``), for one head kind."""

    config_class = ArchComposerConfig
    base_model_prefix = hf_remote.TENSOR_PREFIX.rstrip(".")
    main_input_name = "input_ids"
    # Trainer passes num_items_in_batch only to a forward that takes it: ours averages its loss itself.
    accepts_loss_kwargs = False
    #: The head this class returns (None: the bare model's last hidden state).
    head_kind: ClassVar[str | None] = None

    def __init__(self, config: ArchComposerConfig, model: ComposedModel | None = None):
        super().__init__(config)
        if model is None:
            model = ComposedModel(_with_head(config.model_spec, self.head_kind, config))
        elif self.head_kind is None and model.spec.heads:
            raise InputError(f"{type(self).__name__} is the bare model, but spec {model.spec.name!r} has heads "
                             f"{[h.kind for h in model.spec.heads]}: wrap it with the class of one of them")
        elif self.head_kind is not None and self.head_kind not in model.heads:
            raise InputError(f"{type(self).__name__} needs a {self.head_kind} head; spec {model.spec.name!r} has "
                             f"{[h.kind for h in model.spec.heads] or 'none'}")
        config.describe(model.spec)  # what was built: a task class may have added its head
        head = next((h for h in model.spec.heads if h.kind == self.head_kind), None)
        if hasattr(head, "num_labels") and config.num_labels != head.num_labels:
            config.num_labels = head.num_labels  # a wrapped model's classifier, whatever its spec lists first
        self.model = model
        if config.tie_word_embeddings:
            prefix = hf_remote.TENSOR_PREFIX
            self._tied_weights_keys = {f"{prefix}heads.causal_lm.proj.weight": f"{prefix}embedding.tokens.weight"}
        self.post_init()

    @classmethod
    def from_spec(cls, spec: SpecLike, *, seed: int | None = None, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None):
        """Build the model of ``spec`` (a name, YAML path, dict or spec) as ``build_model`` does
        (the same seed gives the same weights), with this class's head."""
        spec = load_spec(spec)
        config = ArchComposerConfig(spec=spec.to_dict())
        return cls._wrap(build_model(_with_head(spec, cls.head_kind, config), dtype=dtype, device=device, seed=seed),
                         config)

    @classmethod
    def _wrap(cls, model: ComposedModel, config: ArchComposerConfig):
        with init.no_init_weights():  # its weights are already initialised (or loaded)
            wrapper = cls(config, model=model)
        return wrapper.train(model.training)

    @property
    def spec(self) -> ModelSpecBase:
        return self.model.spec

    # -- transformers' hooks ------------------------------------------------------------------

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing to do: this class is installed code, registered on import (see the config's)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """archcomposer's initialisation of one module (``archcomposer.build.init_module``),
        keeping what transformers loaded: a block's initialiser writes all its parameters."""
        params = {name: p for name, p in module._parameters.items() if p is not None}
        loaded = [name for name, p in params.items() if getattr(p, "_is_hf_initialized", False)]
        if len(loaded) == len(params):
            return
        kept = {name: params[name].detach().clone() for name in loaded}
        init_module(module, std=self.config.initializer_range)
        for name, value in kept.items():
            params[name].copy_(value)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embedding.tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embedding.tokens = value

    def get_output_embeddings(self) -> nn.Module | None:
        """The LM head's projection: what transformers ties and resizes and PEFT's ``all-linear`` leaves out."""
        return self.model.heads.causal_lm.proj if "causal_lm" in self.model.heads else None

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.heads.causal_lm.proj = value

    # -- forward ------------------------------------------------------------------------------

    def _run(self, return_dict: bool | None, output_attentions: bool | None, output_hidden_states: bool | None,
             **kwargs):
        config = self.config
        out = self.model(head=self.head_kind, return_dict=True,
                         output_attentions=bool(output_attentions if output_attentions is not None
                                                else config.output_attentions),
                         output_hidden_states=bool(output_hidden_states if output_hidden_states is not None
                                                   else config.output_hidden_states), **kwargs)
        if not (return_dict if return_dict is not None else config.return_dict):
            return out.to_tuple()
        # transformers' own output class of the same name, for tools that check the type
        theirs = getattr(transformers.modeling_outputs, type(out).__name__, None)
        return theirs(**out) if theirs is not None else out


class ArchComposerModel(ArchComposerPreTrainedModel):
    """The composed model without heads: ``last_hidden_state``, as transformers' ``AutoModel``."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return self._run(return_dict, output_attentions, output_hidden_states, input_ids=input_ids,
                         attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache)


class ArchComposerForCausalLM(ArchComposerPreTrainedModel, GenerationMixin):
    """Next-token logits and the shifted loss (``labels``), and transformers' ``generate``."""

    head_kind = "causal_lm"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, logits_to_keep=0):
        return self._run(return_dict, output_attentions, output_hidden_states, input_ids=input_ids,
                         attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                         logits_to_keep=logits_to_keep)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, generation_mode,
                                      batch_size: int, max_cache_length: int) -> None:
        """transformers' generate makes one of its own caches here; the model needs its own (they
        keep each token's position for the position schemes), so make that instead: a
        ``DynamicCache``, or a ``StaticCache`` for ``cache_implementation="static"`` holding the
        ``max_cache_length`` tokens generate feeds (plus any the embedding prepends)."""
        if generation_mode == GenerationMode.ASSISTED_GENERATION or generation_config.is_assistant:
            raise InputError("assisted generation rolls its cache back, which archcomposer's caches do not do: "
                             "generate without assistant_model / prompt_lookup_num_tokens")
        given = model_kwargs.get("past_key_values")
        implementation = generation_config.cache_implementation
        if given is not None:
            if not isinstance(given, (DynamicCache, StaticCache)):
                given_type = f"{type(given).__module__}.{type(given).__qualname__}"
                raise InputError(f"past_key_values is a {given_type}; this model keeps its keys and values in "
                                 f"archcomposer.DynamicCache or archcomposer.StaticCache: pass one of those")
            if implementation is not None:
                raise InputError(f"pass either past_key_values or cache_implementation={implementation!r}, not both")
            given._is_user_defined = True  # transformers returns a cache the caller passed
            return
        if generation_config.use_cache is False:
            return
        if implementation in (None, "dynamic"):
            model_kwargs["past_key_values"] = DynamicCache()
        elif implementation == "static":
            model_kwargs["past_key_values"] = StaticCache(max_length=self.model.num_prepended + max_cache_length)
        else:
            raise InputError(f"cache_implementation={implementation!r}: archcomposer models generate with "
                             f"'dynamic' (the default) or 'static'")

    def _valid_auto_compile_criteria(self, model_kwargs, generation_config) -> bool:
        return False  # transformers compiles only for its own static caches

    def _reorder_cache(self, past_key_values, beam_idx: torch.Tensor):
        """Beam search: keep the rows of the beams that go on."""
        past_key_values.reorder(beam_idx)
        return past_key_values


class ArchComposerForSequenceClassification(ArchComposerPreTrainedModel):
    """One score vector per sequence, at its last non-pad token (``config.num_labels``)."""

    head_kind = "sequence_classification"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return self._run(return_dict, output_attentions, output_hidden_states, input_ids=input_ids,
                         attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache)


class ArchComposerForTokenClassification(ArchComposerPreTrainedModel):
    """One score vector per token (``config.num_labels``)."""

    head_kind = "token_classification"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return self._run(return_dict, output_attentions, output_hidden_states, input_ids=input_ids,
                         attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                         labels=labels)


class ArchComposerForQuestionAnswering(ArchComposerPreTrainedModel):
    """Extractive QA: span start and end logits."""

    head_kind = "question_answering"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return self._run(return_dict, output_attentions, output_hidden_states, input_ids=input_ids,
                         attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                         start_positions=start_positions, end_positions=end_positions)


CLASSES: dict[str | None, type[ArchComposerPreTrainedModel]] = {
    cls.head_kind: cls for cls in (ArchComposerModel, ArchComposerForCausalLM, ArchComposerForSequenceClassification,
                                   ArchComposerForTokenClassification, ArchComposerForQuestionAnswering)}


def to_transformers(model: ComposedModel, *, head: str | None = None) -> ArchComposerPreTrainedModel:
    """``model`` as a transformers model of the class for ``head`` (default: its first head, or
    the bare model if it has none). Nothing is copied: the wrapper holds ``model`` as ``.model``,
    so training one trains the other."""
    if not isinstance(model, ComposedModel):
        raise InputError(f"to_transformers takes an archcomposer ComposedModel, got {type(model).__name__}")
    kinds = [h.kind for h in model.spec.heads]
    kind = head if head is not None else (kinds[0] if kinds else None)
    if kind not in CLASSES:
        raise InputError(f"head={kind!r}: transformers classes exist for {[k for k in CLASSES if k is not None]} "
                         f"and the bare model (a spec without heads)")
    return CLASSES[kind]._wrap(model, ArchComposerConfig(spec=model.spec.to_dict()))


def _register() -> None:
    AutoConfig.register(hf_remote.MODEL_TYPE, ArchComposerConfig, exist_ok=True)
    autos = {"AutoModel": AutoModel, "AutoModelForCausalLM": AutoModelForCausalLM,
             "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
             "AutoModelForTokenClassification": AutoModelForTokenClassification,
             "AutoModelForQuestionAnswering": AutoModelForQuestionAnswering}
    for kind, (_, auto) in hf_remote.ARCHITECTURES.items():
        autos[auto].register(ArchComposerConfig, CLASSES[kind], exist_ok=True)


_register()

