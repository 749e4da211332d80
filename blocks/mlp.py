"""Feed-forward blocks."""

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU (GLM-4, Seed-OSS) or GeGLU (CPM-Ant).

    ``gate_up`` returns ``(gate, up)``: a fused projection (GLM-4's ``gate_up_proj``) or two."""

    def __init__(self, *, activation: str, gate_up: nn.Module, down: nn.Linear):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gate_up, self.down = gate_up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)  # 2 x [B, S, I]
        return self.down(self.act(gate) * up)  # [B, S, D]


class PlainMLP(nn.Module):
    """down(act(up(x))), as BLOOM's dense_h_to_4h -> GELU -> dense_4h_to_h."""

    def __init__(self, *, activation: str, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up, self.down = up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))  # [B, S, D]


class SoftmaxRouter(nn.Module):
    """Softmax over the experts' logits, the ``top_k`` most probable kept; ``normalize`` rescales
    the kept probabilities to sum to 1 (Mixtral always, Qwen-MoE and OLMoE with ``norm_topk_prob``).
    Ties go to ``torch.topk``'s choice on the probabilities, as in the references."""

    def __init__(self, *, gate: nn.Linear, top_k: int, normalize: bool):
        super().__init__()
        self.gate, self.top_k, self.normalize = gate, top_k, normalize

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.gate(x)  # [N, E]
        probs = F.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # [N, E]
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [N, k] each
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights, experts


class GroupedSigmoidRouter(nn.Module):
    """DeepSeek-V3's router: sigmoid scores; experts chosen on score + ``score_bias`` (the learned
    load-balancing correction, not a weight of the output) among the ``top_groups`` of
    ``num_groups`` expert groups (a group scored by its best two), weighted by their plain scores,
    optionally renormalised, times ``scale`` (``routed_scaling_factor``)."""

    def __init__(self, *, gate: nn.Linear, top_k: int, normalize: bool, num_groups: int, top_groups: int,
                 scale: float):
        super().__init__()
        self.gate, self.top_k, self.normalize = gate, top_k, normalize
        self.num_groups, self.top_groups, self.scale = num_groups, top_groups, scale
        # Set by a balancing rule, not SGD: a checkpointed buffer, as in transformers (not a parameter).
        self.score_bias = nn.Buffer(torch.empty(gate.out_features))  # [E]

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        self.score_bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least, as DeepSeek-V3
        logits = F.linear(x.to(dtype), self.gate.weight.to(dtype))  # [N, E]
        scores = logits.sigmoid()  # [N, E]
        choice = scores + self.score_bias  # [N, E]
        grouped = choice.unflatten(-1, (self.num_groups, -1))  # [N, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, G]
        groups = torch.topk(group_scores, self.top_groups, dim=-1, sorted=False).indices  # [N, g]
        kept = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)  # [N, G]
        choice = choice.masked_fill(~kept[..., None].expand_as(grouped).flatten(-2), float("-inf"))  # [N, E]
        experts = torch.topk(choice, self.top_k, dim=-1, sorted=False).indices  # [N, k]
        weights = scores.gather(1, experts)  # [N, k]
        if self.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, weights * self.scale, experts


class Experts(nn.Module):
    """``num_experts`` gated MLPs stored as 3-D weights (transformers 5's fused layout):
    ``gate_up_proj`` [E, 2I, D] (gate rows, then up rows) and ``down_proj`` [E, D, I].

    Tokens are sorted by expert and each expert runs once, on its own tokens, so the cost is that
    of the routed tokens, not of every token times every expert. That needs the tokens per expert
    on the host; while ``torch.compile`` or ``torch.export`` traces, ``_every_expert`` runs instead."""

    def __init__(self, *, num_experts: int, dim: int, intermediate_size: int, activation: str):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, intermediate_size))

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        self.gate_up_proj.normal_(0.0, std, generator=generator)
        self.down_proj.normal_(0.0, std, generator=generator)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._every_expert(x, weights, experts)
        k = experts.shape[-1]
        flat = experts.flatten()  # [N*k]
        order = flat.argsort(stable=True)  # [N*k]: assignments grouped by expert
        token = order // k  # [N*k]: the token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).tolist()  # a host sync
        routed = x[token]  # [N*k, D]
        out = []
        for e, chunk in enumerate(routed.split(counts)):
            if counts[e]:
                gate, up = F.linear(chunk, self.gate_up_proj[e]).chunk(2, dim=-1)  # 2 x [n_e, I]
                out.append(F.linear(self.act(gate) * up, self.down_proj[e]))  # [n_e, D]
        y = torch.cat(out) if out else routed  # [N*k, D]
        y = y * weights.flatten()[order, None]  # [N*k, D], in fp32 where the weights are
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))  # [N, D]

    def _every_expert(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """The path ``torch.compile`` and ``torch.export`` trace: fixed shapes, no host sync. Every
        expert runs on every token and a token keeps the outputs of its own experts, weighted and
        added in the order the sorted path adds them (expert by expert), so the result is the
        same. It costs num_experts / top_k times the routed work; torch 2.13's grouped_mm, the
        routed alternative, has no CPU backward and no float64."""
        E = self.gate_up_proj.shape[0]
        routing = torch.zeros(x.shape[0], E, dtype=weights.dtype, device=x.device).scatter(1, experts, weights)  # [N, E]
        chosen = torch.zeros(x.shape[0], E, dtype=torch.bool, device=x.device).scatter(1, experts, True)  # [N, E]
        y = torch.zeros_like(x)  # [N, D]
        for e in range(E):
            gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)  # 2 x [N, I]
            out = F.linear(self.act(gate) * up, self.down_proj[e]) * routing[:, e, None]  # [N, D], fp32 where weights are
            y = y + torch.where(chosen[:, e, None], out.to(x.dtype), 0)  # tokens that did not choose e add nothing
        return y


class MoE(nn.Module):
    """Mixture of experts: a router picks ``top_k`` experts per token and the output is their
    weighted sum, plus a ``shared`` MLP every token goes through (DeepSeek), optionally scaled by
    sigmoid(``shared_gate``(x)) (Qwen2-MoE). Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3.

    ``router_logits`` holds the last forward's router logits [B*S, E], which the model returns
    (``output_router_logits``) and the load-balancing loss reads."""

    def __init__(self, *, router: nn.Module, experts: Experts, shared: nn.Module | None = None,
                 shared_gate: nn.Linear | None = None):
        super().__init__()
        self.router, self.experts, self.shared, self.shared_gate = router, experts, shared, shared_gate
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(0, -2)  # [N, D]
        self.router_logits, weights, experts = self.router(flat)  # [N, E], [N, k], [N, k]
        y = self.experts(flat, weights, experts)  # [N, D]
        if self.shared is not None:
            s = self.shared(flat)  # [N, D]
            y = y + (torch.sigmoid(self.shared_gate(flat)) * s if self.shared_gate is not None else s)
        return y.view_as(x)  # [B, S, D]
