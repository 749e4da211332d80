"""Task heads. Each maps the final hidden states [B, S, D] (and its labels, if given) to a dict
of output fields: ``loss`` (None without labels) and the head's own fields."""

import torch
import torch.nn.functional as F
from torch import nn

from archcomposer.blocks.attention import SoftCap

IGNORE_INDEX = -100


class CausalLMHead(nn.Module):
    """Next-token logits. ``shift_labels=True`` scores position t against label t+1 (the usual
    causal-LM loss); CPM-Ant scores each position against its own label. The logits are multiplied
    by ``logit_scale`` (Cohere; Granite divides by its logits_scaling), then, with ``softcap``,
    capped at ``tanh(logits / softcap) * softcap`` (Gemma 2); the loss is taken on what results.

    With ``chunk_size`` set and labels given, the loss is taken ``chunk_size`` positions at a time,
    each chunk's gradients taken as its logits are made, so the [B, S, V] logits never exist at
    once and ``logits`` is returned as None (Liger's fused linear cross-entropy)."""

    def __init__(self, *, proj: nn.Linear, shift_labels: bool = True, logit_scale: float = 1.0,
                 softcap: float | None = None):
        super().__init__()
        self.proj, self.shift_labels, self.logit_scale = proj, shift_labels, logit_scale
        self.cap = SoftCap(cap=softcap) if softcap is not None else nn.Identity()
        self.chunk_size: int | None = None  # set by ComposedModel.chunked_loss_enable

    def forward(self, hidden: torch.Tensor, *, labels=None, logits_to_keep: int | torch.Tensor = 0, **_) -> dict:
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden  # [B, S', D]
        else:
            hidden = hidden[:, logits_to_keep]
        if labels is None:
            return {"loss": None, "logits": self.logits(hidden)}
        if self.shift_labels:
            labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]  # [B, S]
        labels = labels.to(hidden.device)
        if self.chunk_size is not None:
            return {"loss": self.chunked_loss(hidden, labels, self.chunk_size), "logits": None}
        logits = self.logits(hidden)  # [B, S, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return {"loss": loss, "logits": logits}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden)  # [..., V]
        if self.logit_scale != 1.0:  # a pass over [B, S, V] for nothing: 6% of a 512-token prefill
            logits = logits * self.logit_scale
        return self.cap(logits)

    def chunked_loss(self, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """The mean cross-entropy over the labels that are not ignored, from ``hidden`` [B, S, D]
        and ``labels`` [B, S] (already aligned), ``chunk_size`` positions at a time."""
        params = tuple(self.proj.parameters())
        total = _ChunkedLossSum.apply(self._loss_sum, chunk_size, hidden.flatten(0, 1), labels.flatten(), *params)
        return total / (labels != IGNORE_INDEX).sum()

    def _loss_sum(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(hidden).float()  # [C, V], freed after the chunk
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


class _ChunkedLossSum(torch.autograd.Function):
    """``loss_sum`` over ``chunk_size`` rows of ``hidden`` [N, D] at a time, its gradients (for
    ``hidden`` and the head's ``params``) taken chunk by chunk in forward, so backward only scales
    them: each chunk's logits are computed once and freed (Liger's fused linear cross-entropy),
    not recomputed in backward as a per-chunk checkpoint would."""

    @staticmethod
    def forward(ctx, loss_sum, chunk_size: int, hidden: torch.Tensor, labels: torch.Tensor, *params: torch.Tensor):
        wanted = [hidden.requires_grad, *(p.requires_grad for p in params)]
        grads = [torch.zeros_like(t) if need else None for t, need in zip((hidden, *params), wanted)]
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size].detach().requires_grad_(wanted[0])  # [C, D]
            y = labels[start:start + chunk_size]  # [C]
            with torch.enable_grad():
                loss = loss_sum(h, y)
                sources = [t for t, need in zip((h, *params), wanted) if need]
                found = iter(torch.autograd.grad(loss, sources) if sources else ())
            for i, need in enumerate(wanted):
                if not need:
                    continue
                if i == 0:
                    grads[0][start:start + chunk_size] = next(found)
                else:
                    grads[i] += next(found)
            total += loss.detach()
        ctx.save_for_backward(*(g if g is not None else hidden.new_empty(0) for g in grads))
        ctx.wanted = wanted
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grads = [g * grad_total if need else None for g, need in zip(ctx.saved_tensors, ctx.wanted)]
        return None, None, grads[0], None, *grads[1:]


class SequenceClassificationHead(nn.Module):
    """Scores every position and returns the score of the last non-pad token of each row (the
    rightmost token that is not ``pad_token_id``), as the causal-LM classifiers of transformers do.

    ``problem_type`` None infers the loss from the labels: regression for one label, single-label
    cross-entropy for integer labels, multi-label BCE otherwise."""

    def __init__(self, *, proj: nn.Linear, pad_token_id: int | None, problem_type: str | None = None):
        super().__init__()
        self.proj, self.pad_token_id, self.problem_type = proj, pad_token_id, problem_type
        self.num_labels = proj.out_features

    def forward(self, hidden: torch.Tensor, *, input_ids=None, labels=None, **_) -> dict:
        logits = self.proj(hidden)  # [B, S, L]
        batch = logits.shape[0]
        if self.pad_token_id is None and batch != 1:
            raise ValueError("sequence classification of a batch larger than 1 needs the spec's pad_token_id "
                             "to find the last token of each row")
        if self.pad_token_id is None or input_ids is None:
            last = torch.full((batch,), -1, device=logits.device)
        else:
            not_pad = (input_ids != self.pad_token_id).to(logits.device, torch.int32)  # [B, S]
            last = (torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32) * not_pad).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]  # [B, L]
        return {"loss": None if labels is None else self.loss(pooled, labels), "logits": pooled}

    def loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(pooled.device)
        problem = self.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(pooled.squeeze(), labels.squeeze())
            return F.mse_loss(pooled, labels)
        if problem == "single_label_classification":
            return F.cross_entropy(pooled.view(-1, self.num_labels), labels.view(-1), ignore_index=IGNORE_INDEX)
        return F.binary_cross_entropy_with_logits(pooled, labels)


class TokenClassificationHead(nn.Module):
    """Per-token labels, behind a dropout."""

    def __init__(self, *, proj: nn.Linear, dropout: float = 0.0):
        super().__init__()
        self.proj, self.dropout = proj, nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, *, labels=None, **_) -> dict:
        logits = self.proj(self.dropout(hidden))  # [B, S, L]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device),
                                   ignore_index=IGNORE_INDEX)
        return {"loss": loss, "logits": logits}


class QuestionAnsweringHead(nn.Module):
    """Extractive QA: start and end logits per token; the loss averages the two span losses and
    ignores positions outside the sequence."""

    def __init__(self, *, proj: nn.Linear):
        super().__init__()
        self.proj = proj

    def forward(self, hidden: torch.Tensor, *, start_positions=None, end_positions=None, **_) -> dict:
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in self.proj(hidden).split(1, dim=-1))  # [B, S]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).to(start_logits.device).clamp(0, ignored)
            end = end_positions.reshape(-1).to(end_logits.device).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return {"loss": loss, "start_logits": start_logits, "end_logits": end_logits}
