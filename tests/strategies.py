"""Hypothesis strategies for archcomposer specs.

``spec_dicts()`` draws a valid spec (a plain dict, as a YAML file would hold) over every built-in
block kind. Valid shapes are constructed, never filtered: ``num_kv_heads`` is drawn first and
``num_heads`` is a multiple of it (``mla`` draws its own widths, its rotated part being the drawn
head_dim); a rotary ``fraction`` is drawn among those that give an even
whole number of channels for the drawn ``head_dim``; bucket counts are built from the number of
exact buckets wanted. Each section has its own strategy so a caller can combine or restrict them
(``positions=("alibi",)``, ``heads=("question_answering",)``, ``embeddings=("prompt_segments",)``).
Rotary kinds draw a frequency ``scaling`` of every type; by default only scalings whose frequencies
do not depend on how far a forward reaches, so that properties comparing forwards of different
lengths (cache equivalence, padding, generation) hold: ``length_dependent=True`` adds dynamic NTK
and LongRoPE that switch to their long factors within a few tokens, for properties of one forward
(output contract, parameter count, spec round trips).
Per-layer ``layers`` entries are drawn with every selector (range, every/offset, indices, type with
``layer_types``) and change position, attention, norm, mlp or wiring of the layers they select; an
attention change sets or clears a sliding window, so windowed and global layers mix.
Every option field is drawn too, with values of the size published models use: score scales near
head_dim**-0.5, soft-caps of 5 to 50, clip_qkv of 0.5 to 5, logit and residual scales near 1.

Weights built from these specs use ``initializer_range`` = c / sqrt(hidden_size) with c in [0.75, 1.25]:
attention scores and logits then have a spread of about c**2 and c whatever the width. The usual
0.02 would make attention nearly uniform in a tiny model, so a position or cache bug would move
the logits by less than any tolerance; a fixed large std would make wide draws so sharp that fp32
rounding alone exceeds 1e-5.

This module imports only hypothesis, so it can be reused outside the test tree."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hypothesis import strategies as st

POSITIONS = ("none", "rope", "partial_rope", "alibi", "bucket_bias")
NORMS = ("layernorm", "rmsnorm")
ATTENTIONS = ("gqa", "mla")
MLPS = ("gated", "plain", "moe")
HEADS = ("causal_lm", "sequence_classification", "token_classification", "question_answering")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
EMBEDDINGS = ("tokens", "prompt_segments")
WIRINGS = ("pre_norm", "sandwich", "post_branch_norm", "parallel", "post_norm")
#: Wirings that normalise a branch output: drawn only where attention is at least 8 channels wide,
#: since a norm of a narrower (rank < 8) vector amplifies fp32 rounding past 1e-5.
POST_BRANCH_NORMS = ("sandwich", "post_branch_norm")
SELECTORS = ("range", "every", "indices", "type")
#: RoPE frequency scalings (``position.scaling.type``); dynamic NTK is drawn only with length_dependent.
SCALINGS = ("linear", "dynamic", "yarn", "longrope", "llama3")
#: The max_positions of every drawn spec.
MAX_POSITIONS = 64

#: Every kind the strategies can draw, by spec section (a meta-test compares it with the registry).
KINDS = {"embedding": EMBEDDINGS, "position": POSITIONS, "norm": NORMS, "attention": ATTENTIONS, "mlp": MLPS,
         "wiring": WIRINGS, "head": HEADS}


# ---------------------------------------------------------------------------------------------
# position


def _rotary_fractions(head_dim: int) -> list[float]:
    """Fractions k/8 (exact in binary) for which fraction * head_dim is an even number >= 2."""
    return [k / 8 for k in range(1, 9) if head_dim * k % 16 == 0]


def head_dims(position: str) -> st.SearchStrategy[int]:
    """head_dim values valid for a position kind: any for bias schemes (odd ones included), even
    for rope, and for partial_rope ones that admit several rotary fractions."""
    if position == "rope":
        return st.sampled_from([2, 4, 6, 8, 12])
    if position == "partial_rope":
        return st.sampled_from([4, 8, 12, 16, 24])
    return st.integers(1, 12)


@st.composite
def rope_scalings(draw, *, rotary_dim: int, length_dependent: bool = False, optional: bool = True) -> dict | None:
    """A ``position.scaling`` for ``rotary_dim`` rotated channels, or (if ``optional``) None.
    Factors and lengths are small so a few tokens reach past ``original_max_positions``. Without
    ``length_dependent``, no dynamic NTK and LongRoPE's original length is ``MAX_POSITIONS`` (it
    never switches to its long factors); with it, both change their frequencies within a few tokens."""
    types = [t for t in SCALINGS if (t != "dynamic" or (length_dependent and rotary_dim >= 4))]
    kind = draw(st.sampled_from([None, *types] if optional else types))
    if kind is None:
        return None
    scaling: dict = {"type": kind}
    originals = st.sampled_from([2, 4, 8])
    if kind == "linear":
        scaling["factor"] = draw(st.sampled_from([1.0, 2.0, 4.0]))
    elif kind == "dynamic":
        scaling.update(factor=draw(st.sampled_from([2.0, 4.0])), original_max_positions=draw(originals))
    elif kind == "yarn":
        scaling.update(factor=draw(st.sampled_from([2.0, 4.0])), original_max_positions=draw(originals))
        optional = {"beta_fast": st.sampled_from([32.0, 8.0]), "beta_slow": st.sampled_from([1.0, 2.0]),
                    "truncate": st.booleans(), "attention_factor": st.sampled_from([0.9, 1.1])}
        scaling.update({k: draw(v) for k, v in optional.items() if draw(st.booleans())})
        if "attention_factor" not in scaling and draw(st.booleans()):
            scaling.update(mscale=draw(st.sampled_from([0.707, 1.0])), mscale_all_dim=1.0)
    elif kind == "longrope":
        factors = st.lists(st.sampled_from([1.0, 1.5, 2.0, 4.0]), min_size=rotary_dim // 2, max_size=rotary_dim // 2)
        scaling.update(short_factor=draw(factors), long_factor=draw(factors))
        if length_dependent or draw(st.booleans()):  # left out, it is max_positions
            scaling["original_max_positions"] = draw(originals) if length_dependent else MAX_POSITIONS
        scaling.update({k: draw(v) for k, v in {"factor": st.sampled_from([2.0, 4.0]),
                                                  "attention_factor": st.sampled_from([0.9, 1.1])}.items()
                        if draw(st.booleans())})
    else:
        scaling.update(factor=draw(st.sampled_from([2.0, 8.0])), original_max_positions=draw(originals))
        if draw(st.booleans()):
            scaling.update(low_freq_factor=2.0, high_freq_factor=draw(st.sampled_from([3.0, 4.0])))
    return scaling


@st.composite
def position_specs(draw, kind: str, *, head_dim: int, segments: bool = False, length_dependent: bool = False,
                   scaled: bool | None = None) -> dict:
    """A ``position`` section of ``kind``. ``segments``: embedding.segments is set, so a bucket
    bias may use segment-pair buckets. ``length_dependent``: rotary scalings may depend on the
    length reached (``rope_scalings``). ``scaled``: a rotary kind always (True) or never (False)
    has a scaling; None draws."""
    if kind == "none":
        return {"kind": kind}
    if kind == "alibi":
        return {"kind": kind, "max_bias": draw(st.sampled_from([8.0, 4.0, 16.0])), "scaled": draw(st.booleans()),
                "bias_dtype": draw(st.sampled_from(["float32", "bfloat16"]))}
    if kind in ("rope", "partial_rope"):
        spec = {"kind": kind, "theta": draw(st.sampled_from([100.0, 10000.0]))}
        if kind == "partial_rope":
            spec.update(fraction=draw(st.sampled_from(_rotary_fractions(head_dim))), interleaved=draw(st.booleans()))
        scaling = None if scaled is False else draw(rope_scalings(
            rotary_dim=int(head_dim * spec.get("fraction", 1.0)), length_dependent=length_dependent,
            optional=scaled is None))
        return spec if scaling is None else {**spec, "scaling": scaling}
    if kind == "bucket_bias":
        bidirectional = draw(st.booleans())
        exact = draw(st.integers(1, 4))  # buckets // (4 if bidirectional else 2)
        num_buckets = exact * (4 if bidirectional else 2) + draw(st.integers(0, 3 if bidirectional else 1))
        return {"kind": kind, "num_buckets": num_buckets, "max_distance": exact + draw(st.integers(1, 12)),
                "bidirectional": bidirectional, "segments": segments and draw(st.booleans())}
    raise ValueError(f"no strategy for position kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# attention, norm, mlp


#: Sliding windows: small, so that most drawn sequences (2 to 9 tokens) are longer than the window.
SLIDING_WINDOWS = st.one_of(st.none(), st.integers(1, 5))
#: The narrowest head a drawn q/k norm normalises (see POST_BRANCH_NORMS): each head, or the whole
#: projection, however few key heads a ``layers`` entry leaves.
MIN_NORM_WIDTH = 8


@st.composite
def qk_norm_specs(draw, *, head_dim: int) -> dict | None:
    """None or an ``attention.qk_norm`` of any scope, maybe with a norm of its own, for heads at
    least MIN_NORM_WIDTH wide. ``per_head`` without a norm of its own needs the layer's norm to
    have weights: the caller then draws norms with ``affine`` true (see needs_norm_weights)."""
    if head_dim < MIN_NORM_WIDTH or not draw(st.booleans()):
        return None
    spec = {"scope": draw(st.sampled_from(["head", "per_head", "projection"]))}
    if draw(st.booleans()):
        spec["norm"] = draw(norm_specs(affine=True if spec["scope"] == "per_head" else None))
    return spec


@st.composite
def attention_specs(draw, kinds: Sequence[str] = ATTENTIONS, *, head_dim: int, windows: bool = True) -> dict:
    """An attention section of one of ``kinds``: ``gqa`` (MHA, GQA or MQA, with or without a
    sliding window (``windows``) and each option) or ``mla`` (``mla_specs``). ``head_dim`` is the
    width a rotary position rotates (gqa's head_dim, mla's qk_rope_head_dim). Returns the section;
    for gqa, ``num_heads * head_dim`` is the model width when ``head_dim`` is left out (the caller
    sets hidden_size accordingly)."""
    if draw(st.sampled_from(kinds)) == "mla":
        return draw(mla_specs(qk_rope_head_dim=head_dim))
    num_kv_heads = draw(st.integers(1, 3))
    num_heads = num_kv_heads * draw(st.integers(1, 3))
    spec = {"kind": "gqa", "num_heads": num_heads, "head_dim": head_dim, "qkv_bias": draw(st.booleans()),
            "out_bias": draw(st.booleans()), "fused_qkv": draw(st.booleans()),
            "dropout": draw(st.sampled_from([0.0, 0.1]))}
    if num_kv_heads != num_heads or draw(st.booleans()):  # MHA may leave num_kv_heads to its default
        spec["num_kv_heads"] = num_kv_heads
    window = draw(SLIDING_WINDOWS) if windows else None
    if window is not None:
        spec["sliding_window"] = window
    options = {"scale": st.sampled_from([0.5, 1.5]).map(lambda f: round(f * head_dim**-0.5, 6)),
               "softcap": st.sampled_from([5.0, 20.0, 50.0]), "clip_qkv": st.sampled_from([0.5, 1.0, 5.0]),
               "qk_norm": qk_norm_specs(head_dim=head_dim)}
    for name, values in options.items():
        if draw(st.booleans()):
            value = draw(values)
            if value is not None:
                spec[name] = value
    return spec


@st.composite
def mla_specs(draw, *, qk_rope_head_dim: int) -> dict:
    """An ``mla`` section: queries with or without the low-rank bottleneck, value heads narrower or
    wider than query/key heads, and each option."""
    spec = {"kind": "mla", "num_heads": draw(st.integers(1, 4)), "kv_lora_rank": draw(st.integers(2, 12)),
            "qk_nope_head_dim": draw(st.integers(1, 8)), "qk_rope_head_dim": qk_rope_head_dim,
            "v_head_dim": draw(st.integers(1, 8)), "bias": draw(st.booleans()),
            "dropout": draw(st.sampled_from([0.0, 0.1]))}
    if draw(st.booleans()):
        spec["q_lora_rank"] = draw(st.integers(2, 12))
    if draw(st.booleans()):
        spec["latent_norm_eps"] = draw(st.sampled_from([1e-6, 1e-5]))
    if draw(st.booleans()):
        spec["scale"] = round(draw(st.sampled_from([0.5, 1.5])) * (spec["qk_nope_head_dim"] + qk_rope_head_dim)**-0.5, 6)
    return spec


def attention_width(attention: dict, head_dim: int) -> int:
    """The width of the attention output before its projection back to the model width."""
    if attention["kind"] == "mla":
        return attention["num_heads"] * attention["v_head_dim"]
    return attention["num_heads"] * head_dim


def needs_norm_weights(attention: dict) -> bool:
    """Whether the layer's norm must learn weights: its q/k norm gives each head its own."""
    qk_norm = attention.get("qk_norm") or {}
    return qk_norm.get("scope") == "per_head" and "norm" not in qk_norm


@st.composite
def norm_specs(draw, kinds: Sequence[str] = NORMS, *, affine: bool | None = None) -> dict:
    """A norm section; ``affine`` None draws it, True or False fixes it."""
    kind = draw(st.sampled_from(kinds))
    spec = {"kind": kind, "eps": draw(st.sampled_from([1e-5, 1e-6]))}
    # affine is always given, and bias or unit_offset with it: a layers entry merges these fields
    # over a section that may have other values
    spec["affine"] = draw(st.sampled_from([True, False])) if affine is None else affine
    if not spec["affine"]:
        spec.update({"bias": False} if kind == "layernorm" else {"unit_offset": False})
    elif kind == "layernorm":
        spec["bias"] = draw(st.booleans())
    elif kind == "rmsnorm":
        spec["unit_offset"] = draw(st.booleans())
    return spec


@st.composite
def mlp_specs(draw, kinds: Sequence[str] = MLPS) -> dict:
    kind = draw(st.sampled_from(kinds))
    spec = {"kind": kind, "intermediate_size": draw(st.integers(4, 32)),
            "activation": draw(st.sampled_from(ACTIVATIONS))}
    if kind == "moe":
        return {**spec, **draw(moe_fields())}
    spec["bias"] = draw(st.booleans())
    if kind == "gated":
        spec["fused"] = draw(st.booleans())
    return spec


@st.composite
def moe_fields(draw) -> dict:
    """Experts, top_k and router of a ``moe`` MLP, built valid: a grouped router's groups divide
    the experts into groups of at least 2, and top_k fits the experts of the groups it keeps."""
    if draw(st.booleans()):
        router = {"kind": "softmax", "normalize": draw(st.booleans())}
        num_experts = draw(st.integers(1, 6))
        most = num_experts
    else:
        num_groups, per_group = draw(st.integers(1, 3)), draw(st.integers(2, 3))
        num_experts, top_groups = num_groups * per_group, draw(st.integers(1, num_groups))
        router = {"kind": "grouped_sigmoid", "normalize": draw(st.booleans()), "num_groups": num_groups,
                  "top_groups": top_groups, "scale": draw(st.sampled_from([1.0, 2.5]))}
        most = top_groups * per_group
    fields = {"num_experts": num_experts, "top_k": draw(st.integers(1, most)), "router": router,
              "aux_loss_coef": draw(st.sampled_from([0.0, 0.01]))}
    if draw(st.booleans()):
        fields["shared_expert"] = {"intermediate_size": draw(st.integers(4, 16)), "gated": draw(st.booleans())}
    return fields


# ---------------------------------------------------------------------------------------------
# heads and embedding


@st.composite
def head_specs(draw, kind: str) -> dict:
    if kind == "causal_lm":
        spec = {"kind": kind, "bias": draw(st.booleans()), "shift_labels": draw(st.booleans()),
                "logit_scale": draw(st.sampled_from([1.0, 0.5, 2.0]))}
        if draw(st.booleans()):
            spec["softcap"] = draw(st.sampled_from([5.0, 30.0]))
        return spec
    if kind in ("sequence_classification", "token_classification"):
        return {"kind": kind, "num_labels": draw(st.integers(1, 3)), "bias": draw(st.booleans())}
    if kind == "question_answering":
        return {"kind": kind, "bias": draw(st.booleans())}
    raise ValueError(f"no strategy for head kind {kind!r}")


@st.composite
def embedding_specs(draw, kind: str) -> dict:
    """``tokens`` with each option drawn, or CPM-Ant's ``prompt_segments``."""
    if kind == "prompt_segments":
        segments, prompts = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        return {"kind": kind,
                "segments": {"num_types": segments, "token_segment": draw(st.integers(0, segments - 1))},
                "prompt": {"num_types": prompts, "length": draw(st.integers(1, 3)),
                           "type": draw(st.integers(0, prompts - 1))}}
    spec = {"kind": kind, "tied": draw(st.booleans()), "norm": draw(st.booleans()),
            "scale": draw(st.sampled_from([1.0, 0.5, "sqrt_hidden_size"])), "scale_inputs_embeds": draw(st.booleans()),
            "dropout": draw(st.sampled_from([0.0, 0.1]))}
    if draw(st.booleans()):
        spec["learned_positions"] = {"offset": draw(st.integers(0, 2))}
    return spec


@st.composite
def wiring_specs(draw, *, attention_width: int) -> dict:
    kind = draw(st.sampled_from([k for k in WIRINGS if attention_width >= 8 or k not in POST_BRANCH_NORMS]))
    spec = {"kind": kind, "dropout": draw(st.sampled_from([0.0, 0.1])),
            "residual_scale": draw(st.sampled_from([1.0, 0.25, 1.5]))}
    if kind == "pre_norm":
        spec["residual_from_norm"] = draw(st.booleans())
    if kind == "parallel":
        spec["shared_norm"] = draw(st.booleans())
    return spec


# ---------------------------------------------------------------------------------------------
# per-layer differences


@st.composite
def layer_overrides(draw, *, num_layers: int, layer_types: list[str] | None, num_heads: int, head_dim: int,
                    segments: bool, length_dependent: bool = False, norm_weights: bool = False,
                    attention: dict | None = None) -> dict:
    """One ``layers`` entry: a selector that picks at least one layer, and one or two sections
    with fields or kinds that stay valid for the drawn widths (``norm_weights``: norms keep
    learned weights, which the attention's q/k norm needs; ``attention``: the base section, whose
    kind says which fields an entry may change). A ``partial_rope`` entry always
    gives its own scaling: merged over a base ``partial_rope`` of another fraction, the base's could
    not fit its width (LongRoPE's factor lists)."""
    selectors = [s for s in SELECTORS if s != "type" or layer_types]
    selector = draw(st.sampled_from(selectors))
    if selector == "range":
        start = draw(st.integers(0, num_layers - 1))
        entry: dict = {"range": [start, draw(st.integers(start + 1, num_layers))]}
    elif selector == "every":
        entry = {"every": draw(st.integers(1, 3)), "offset": draw(st.integers(0, num_layers - 1))}
    elif selector == "indices":
        entry = {"indices": draw(st.lists(st.integers(0, num_layers - 1), min_size=1, max_size=3, unique=True))}
    else:
        entry = {"type": draw(st.sampled_from(sorted(set(layer_types))))}
    sections = draw(st.lists(st.sampled_from(["position", "attention", "norm", "mlp", "wiring"]), min_size=1,
                             max_size=2, unique=True))
    for section in sections:
        if section == "position":
            kinds = [k for k in POSITIONS if k not in ("rope", "partial_rope")
                     or (k == "rope" and head_dim % 2 == 0) or (k == "partial_rope" and head_dim % 4 == 0)]
            kind = draw(st.sampled_from(kinds))
            entry["position"] = draw(position_specs(kind, head_dim=head_dim, segments=segments,
                                                    length_dependent=length_dependent,
                                                    scaled=True if kind == "partial_rope" else None))
        elif section == "attention" and attention is not None and attention["kind"] == "mla":
            entry["attention"] = {"q_lora_rank": draw(st.one_of(st.none(), st.integers(2, 12))),
                                  "bias": draw(st.booleans())}
            if draw(st.booleans()):
                width = attention["qk_nope_head_dim"] + attention["qk_rope_head_dim"]
                entry["attention"]["scale"] = round(draw(st.sampled_from([0.75, 1.25])) * width**-0.5, 6)
        elif section == "attention":
            divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
            entry["attention"] = {"num_kv_heads": draw(st.sampled_from(divisors)),
                                  "qkv_bias": draw(st.booleans())}
            if not segments:  # see spec_dicts
                entry["attention"]["sliding_window"] = draw(SLIDING_WINDOWS)
            if draw(st.booleans()):
                entry["attention"]["scale"] = round(draw(st.sampled_from([0.75, 1.25])) * head_dim**-0.5, 6)
        elif section == "norm":
            entry["norm"] = draw(norm_specs(affine=True if norm_weights else None))
        elif section == "mlp":
            entry["mlp"] = draw(st.one_of(st.fixed_dictionaries({"intermediate_size": st.integers(4, 32)}),
                                          mlp_specs()))
        else:
            width = attention_width(attention, head_dim) if attention is not None else num_heads * head_dim
            entry["wiring"] = draw(wiring_specs(attention_width=width))
    return entry


# ---------------------------------------------------------------------------------------------
# the whole spec


@st.composite
def spec_dicts(draw, *, positions: Sequence[str] = POSITIONS, heads: Sequence[str] = ("causal_lm",),
               embeddings: Sequence[str] = EMBEDDINGS, max_layers: int = 3, overrides: bool = True,
               length_dependent: bool = False, attentions: Sequence[str] = ATTENTIONS) -> dict:
    """A valid spec dict. ``positions`` and ``embeddings``: the kinds to draw from (the base
    position; ``layers`` entries may give some layers another). ``heads``: the heads the spec
    lists, in order (empty: the bare trunk). ``overrides``: draw per-layer ``layers`` entries.
    ``length_dependent``: also draw RoPE scalings whose frequencies follow the length a forward
    reaches (see the module docstring). ``attentions``: the attention kinds to draw from."""
    position = draw(st.sampled_from(positions))
    embedding = draw(embedding_specs(draw(st.sampled_from(embeddings))))
    segments = embedding["kind"] == "prompt_segments"
    head_dim = draw(head_dims(position))
    # No sliding window with prompt_segments: a window counts cache slots, pads included (as
    # transformers), and the prompt sits before a padded row's pads, so it would leave the window
    # sooner than in the row alone (the padding properties would not hold; the cache still would).
    attention = draw(attention_specs(attentions, head_dim=head_dim, windows=not segments))
    # Widths of 8 or more: a norm over fewer channels is so ill-conditioned that fp32 rounding
    # alone moves the logits by about 1e-5.
    if attention["kind"] == "gqa" and attention["num_heads"] * head_dim >= 8 and draw(st.booleans()):  # default head_dim
        hidden_size = attention["num_heads"] * attention.pop("head_dim")
    else:
        hidden_size = draw(st.integers(8, 24))
    num_layers = draw(st.integers(1, max_layers))
    spec = {
        "name": "hypothesis",
        "vocab_size": draw(st.integers(16, 48)),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "max_positions": MAX_POSITIONS,
        "pad_token_id": 0,
        "initializer_range": round(draw(st.sampled_from([0.75, 1.0, 1.25])) / math.sqrt(hidden_size), 4),
        "embedding": embedding,
        "position": draw(position_specs(position, head_dim=head_dim, segments=segments,
                                        length_dependent=length_dependent)),
        "attention": attention,
        "norm": draw(norm_specs(affine=True if needs_norm_weights(attention) else None)),
        "mlp": draw(mlp_specs()),
        "wiring": draw(wiring_specs(attention_width=attention_width(attention, head_dim))),
        "final_norm": draw(st.booleans()),
        "heads": [draw(head_specs(kind)) for kind in heads],
    }
    if overrides and draw(st.booleans()):
        layer_types = None
        if draw(st.booleans()):
            layer_types = draw(st.lists(st.sampled_from(["local", "global"]), min_size=num_layers,
                                        max_size=num_layers))
            spec["layer_types"] = layer_types
        spec["layers"] = draw(st.lists(layer_overrides(num_layers=num_layers, layer_types=layer_types,
                                                       num_heads=attention["num_heads"], head_dim=head_dim,
                                                       segments=segments, length_dependent=length_dependent,
                                                       norm_weights=needs_norm_weights(attention),
                                                       attention=attention),
                                       min_size=1, max_size=2))
    return spec
