"""The parity check shared by the family tests: transformers is the oracle.

``check_parity`` builds a tiny random transformers model, saves it, loads it with
``archcomposer.from_pretrained`` and compares, in fp32: the head's outputs for one sequence and for a
left-padded batch, every hidden state and attention map, the loss, greedy generation (causal
LM), and the logits (and greedy tokens) of transformers reloading our Hugging Face export. The
largest difference per family is recorded in ``LARGEST`` and printed at the end of each test
module."""

from __future__ import annotations

import pytest
import torch
import transformers

import archcomposer

transformers.utils.logging.disable_progress_bar()
TOLERANCE = 1e-4  # max abs difference, fp32
NEW_TOKENS = 20
LARGEST: dict[str, float] = {}
LARGEST_BY_KIND: dict[tuple[str, str], float] = {}

#: The Auto class that reloads an export, by our head kind.
AUTO_CLASSES = {
    "causal_lm": transformers.AutoModelForCausalLM,
    "sequence_classification": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
    "question_answering": transformers.AutoModelForQuestionAnswering,
    None: transformers.AutoModel,
}
#: The output fields each head returns (besides loss, hidden states, attentions).
FIELDS = {
    "causal_lm": ("logits",),
    "sequence_classification": ("logits",),
    "token_classification": ("logits",),
    "question_answering": ("start_logits", "end_logits"),
    None: ("last_hidden_state",),
}


def build_reference(architecture: str, config: transformers.PretrainedConfig, seed: int = 0):
    """A transformers model with every parameter (biases, norm scales included) randomised, so a
    weight mapped to the wrong place cannot hide behind a zero or a one; DeepSeek's router score
    bias too (a buffer there), enough to change which experts are chosen."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(torch.randn_like(b) * 0.3)
    return model


def record(family: str, diff: float, what: str = "") -> None:
    LARGEST[family] = max(LARGEST.get(family, 0.0), diff)
    kind = next((k for k in ("hidden_states", "attentions", "loss") if k in what), "outputs")
    LARGEST_BY_KIND[family, kind] = max(LARGEST_BY_KIND.get((family, kind), 0.0), diff)


def report(family: str) -> str:
    kinds = ", ".join(f"{kind} {LARGEST_BY_KIND[f, kind]:.3g}" for f, kind in LARGEST_BY_KIND if f == family)
    return f"{family}: largest max-abs-diff against transformers {LARGEST.get(family, 0.0):.3g} ({kinds})"


def assert_close(family: str, what: str, ours: torch.Tensor, theirs: torch.Tensor, where=None) -> None:
    """``where`` (bool, broadcastable over the leading dims) selects the entries compared."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(theirs.shape)}"
    ours, theirs = ours.float(), theirs.float()
    if where is not None:
        while where.dim() < ours.dim():
            where = where[..., None]
        where = where.expand_as(ours)
        ours, theirs = ours[where], theirs[where]
    diff = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    record(family, diff, what)
    assert diff <= TOLERANCE, f"{what}: max abs diff {diff:.3g} > {TOLERANCE}"


class Inputs:
    """One sequence and a left-padded batch of two, with what each family's forward needs."""

    def __init__(self, *, vocab_size: int, pad_token_id: int, seq_len: int = 9, pad: int = 3, low: int = 4,
                 seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.single = torch.randint(low, vocab_size, (1, seq_len), generator=g)
        batch = torch.randint(low, vocab_size, (2, seq_len), generator=g)
        self.mask = torch.ones(2, seq_len, dtype=torch.long)
        self.mask[1, :pad] = 0
        self.batch = batch.masked_fill(self.mask == 0, pad_token_id)
        self.position_ids = (self.mask.cumsum(-1) - 1).clamp(min=0)


def check_parity(tmp_path, *, family: str, architecture: str, config, head: str | None, inputs: Inputs,
                 hf_kwargs_for_batch=None, generate_batch: bool = True, reference_mask: bool = True):
    """Run every comparison for one transformers model; returns our loaded model.

    ``hf_kwargs_for_batch(inputs)``: extra arguments the reference needs for the padded batch
    (position ids). ``reference_mask=False``: the reference takes no attention mask (CPM-Ant reads
    padding from token id 0)."""
    reference = build_reference(architecture, config)
    reference.save_pretrained(tmp_path / "hf")
    ours = archcomposer.from_pretrained(tmp_path / "hf")
    assert ours.spec.family == family
    assert [h.kind for h in ours.spec.heads] == ([head] if head else [])
    batch_kwargs = hf_kwargs_for_batch(inputs) if hf_kwargs_for_batch else {}

    def run_reference(ids, mask, **kwargs):
        extra = {"attention_mask": mask} if reference_mask and mask is not None else {}
        with torch.no_grad():
            return reference(ids, output_hidden_states=True, output_attentions=True, **extra, **kwargs)

    def run_ours(ids, mask, **kwargs):
        with torch.no_grad():
            return ours(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True, **kwargs)

    for label, ids, mask, kwargs in (("single", inputs.single, None, {}),
                                     ("padded batch", inputs.batch, inputs.mask, batch_kwargs)):
        real = None if mask is None else mask.bool()  # [B, S] positions compared
        losses = loss_arguments(head, ids, mask, config)
        theirs, mine = run_reference(ids, mask, **kwargs, **losses), run_ours(ids, mask, **losses)
        for field in FIELDS[head]:
            where = None if head == "sequence_classification" else real
            assert_close(family, f"{architecture} {label} {field}", mine[field], theirs[field], where)
        if losses:
            assert_close(family, f"{architecture} {label} loss", mine.loss, theirs.loss)
        assert len(mine.hidden_states) == len(theirs.hidden_states) == ours.spec.num_layers + 1
        for i, (a, b) in enumerate(zip(mine.hidden_states, theirs.hidden_states)):
            assert_close(family, f"{architecture} {label} hidden_states[{i}]", a, b, real)
        assert len(mine.attentions) == len(theirs.attentions) == ours.spec.num_layers
        for i, (a, b) in enumerate(zip(mine.attentions, theirs.attentions)):
            rows = None if real is None else real[:, None, :]  # [B, 1, S] query rows of real tokens
            assert_close(family, f"{architecture} {label} attentions[{i}]", a, b, rows)

    if ours.routed and head in ("causal_lm", None):
        check_router_outputs(family, architecture, reference, ours, head, inputs, batch_kwargs)
    if head == "causal_lm":
        check_generation(family, reference, ours, inputs, generate_batch=generate_batch, reference_mask=reference_mask)
    check_export(tmp_path, family, architecture, reference, ours, head, inputs, batch_kwargs, reference_mask)
    return ours


def check_router_outputs(family, architecture, reference, ours, head, inputs, batch_kwargs):
    """Mixture-of-experts models: the router logits of every MoE layer (the real tokens' rows) and,
    for the causal LM, the load-balancing loss (where the reference has one) and the loss it is added
    to, with and without padding."""
    for label, ids, mask, kwargs in (("single", inputs.single, None, {}),
                                     ("padded batch", inputs.batch, inputs.mask, batch_kwargs)):
        extra = {"attention_mask": mask} if mask is not None else {}
        losses = {"labels": ids if mask is None else ids.masked_fill(mask == 0, -100)} if head else {}
        with torch.no_grad():
            theirs = reference(ids, output_router_logits=True, **extra, **kwargs, **losses)
            mine = ours(ids, output_router_logits=True, **extra, **losses)
        assert list(mine.keys()) == list(theirs.keys()), f"output fields {list(mine.keys())} != {list(theirs.keys())}"
        assert len(mine.router_logits) == len(theirs.router_logits) == len(ours.routed)
        rows = None if mask is None else mask.reshape(-1).bool()  # [B*S]
        for i, (a, b) in enumerate(zip(mine.router_logits, theirs.router_logits)):
            assert_close(family, f"{architecture} {label} router_logits[{i}]", a, b, rows)
        if head and theirs.aux_loss is None:  # DeepSeek: no load-balancing loss (the keys above agree)
            assert_close(family, f"{architecture} {label} loss with router logits", mine.loss, theirs.loss)
        elif head:
            assert_close(family, f"{architecture} {label} aux_loss", mine.aux_loss, theirs.aux_loss)
            assert_close(family, f"{architecture} {label} loss with aux_loss", mine.loss, theirs.loss)


def loss_arguments(head, ids, mask, config) -> dict:
    g = torch.Generator().manual_seed(7)
    pads = torch.zeros_like(ids, dtype=torch.bool) if mask is None else mask == 0
    if head == "causal_lm":
        return {"labels": ids.masked_fill(pads, -100)}
    if head == "sequence_classification":
        return {"labels": torch.randint(0, config.num_labels, (ids.shape[0],), generator=g)}
    if head == "token_classification":
        return {"labels": torch.randint(0, config.num_labels, ids.shape, generator=g).masked_fill(pads, -100)}
    if head == "question_answering":
        return {"start_positions": torch.randint(4, ids.shape[1], (ids.shape[0],), generator=g),
                "end_positions": torch.randint(4, ids.shape[1], (ids.shape[0],), generator=g)}
    return {}


def check_generation(family, reference, ours, inputs, *, generate_batch, reference_mask):
    cases = [(inputs.single, None)] + ([(inputs.batch, inputs.mask)] if generate_batch else [])
    for ids, mask in cases:
        extra = {"attention_mask": mask if mask is not None else torch.ones_like(ids)} if reference_mask else {}
        with torch.no_grad():
            theirs = reference.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, **extra)
        mine = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
        assert torch.equal(mine, theirs), f"greedy tokens differ:\nours   {mine.tolist()}\ntheirs {theirs.tolist()}"


def check_export(tmp_path, family, architecture, reference, ours, head, inputs, batch_kwargs, reference_mask):
    out = ours.save_pretrained(tmp_path / "export", format="hf")
    reloaded = AUTO_CLASSES[head].from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == architecture
    field = FIELDS[head][0]
    for ids, mask, kwargs in ((inputs.single, None, {}), (inputs.batch, inputs.mask, batch_kwargs)):
        extra = {"attention_mask": mask} if reference_mask and mask is not None else {}
        with torch.no_grad():
            theirs = reloaded(ids, **extra, **kwargs)[field]
            mine = ours(ids, attention_mask=mask)[field]
        real = None if mask is None or head == "sequence_classification" else mask.bool()
        assert_close(family, f"{architecture} export {field}", mine, theirs, real)
    if head == "causal_lm":
        extra = {"attention_mask": torch.ones_like(inputs.single)} if reference_mask else {}
        with torch.no_grad():
            theirs = reloaded.generate(inputs.single, max_new_tokens=NEW_TOKENS, do_sample=False, **extra)
        assert torch.equal(ours.generate(inputs.single, max_new_tokens=NEW_TOKENS), theirs)


def check_shipped_spec(name: str, architecture: str, config: transformers.PretrainedConfig) -> int:
    """The shipped spec ``name`` has as many parameters as transformers' ``architecture`` built on
    the meta device from the published ``config`` (tied weights counted once); returns the count."""
    with torch.device("meta"):
        reference = getattr(transformers, architecture)(config)
    theirs = sum(p.numel() for p in reference.parameters())  # parameters() yields a tied weight once
    ours = archcomposer.build_model(name, device="meta").num_parameters()
    assert ours == theirs, f"{name}: {ours:,} parameters, transformers' {architecture} has {theirs:,}"
    return ours


def position_ids(inputs: Inputs) -> dict:
    """``hf_kwargs_for_batch`` for references whose forward counts positions from 0 including
    pads: they get our positions, which follow the mask."""
    return {"position_ids": inputs.position_ids}


def largest_difference_report(family: str):
    """A module fixture that prints ``report(family)`` after the module's tests:
    ``report_largest_difference = largest_difference_report(FAMILY)``."""

    @pytest.fixture(scope="module", autouse=True)
    def report_largest_difference():
        yield
        print("\n" + report(family))

    return report_largest_difference
