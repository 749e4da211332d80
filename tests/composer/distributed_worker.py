"""Run by tests/composer/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

For each case (a tiny spec) and each sharding (FSDP2, tensor parallel), every rank trains a
sharded model and, alongside, an unsharded copy on the whole batch (the one-process reference);
then it checks the checkpoints a sharded model writes. Rank 0 writes what it measured to
``results.json`` in the directory given as the only argument; the test judges it."""

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication

import archcomposer
from archcomposer import distributed

BOTH = ("fsdp", "tp")
CASES = {  # name: (spec, overrides, shardings)
    # GQA (4 query heads, 2 key/value heads) with fused q/k/v and fused gate/up, and a q/k norm
    # weight that every head shares
    "gqa-fused": ("tiny-glm-4", {"attention": {"fused_qkv": True, "qk_norm": {"scope": "head"}}}, BOTH),
    # ALiBi with 6 heads (BLOOM's extra slopes for a non-power of two), fused q/k/v, plain MLP
    "bloom-alibi": ("tiny-bloom", {"hidden_size": 48, "attention": {"num_heads": 6}, "mlp": {"intermediate_size": 192}},
                    BOTH),
    # MQA (one key/value head for 4 query heads: replicated on both ranks), fused q/k/v
    "mqa-fused": ("tiny-starcoder", {}, BOTH),
    # multi-head latent attention (DeepSeek-V2) with a query bottleneck
    "mla": ("tiny-deepseek-v2", {"attention": {"q_lora_rank": 24}}, BOTH),
    # a learned bucket bias shared by the layers, CPM-Ant's prompt and segments
    "cpmant-bucket": ("tiny-cpm-ant", {}, BOTH),
    # a mixture of experts (Mixtral): FSDP only, tensor parallelism refuses it
    "moe": ("tiny-mixtral", {}, ("fsdp",)),
}
STEPS, BATCH, SEQ = 3, 4, 8


def full_state(model) -> dict[str, torch.Tensor]:
    return {n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()
            for n, t in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[n].float() - b[n].float()).abs().max().item() for n in a)


def shard(model, how: str):
    return distributed.apply_fsdp(model) if how == "fsdp" else distributed.apply_tp(model)


def optimizer_for(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, foreach=True)


def train(model, ids, how: str | None, optimizer: torch.optim.Optimizer, steps: int = STEPS) -> list[float]:
    """SGD steps on ``ids``, gradients clipped to norm 1; FSDP ranks each take their half of the batch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if how == "fsdp":
        ids = ids.chunk(world)[rank]
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        # tensor parallel mixes DTensors (sharded) and tensors (replicated): foreach kernels need this
        with implicit_replication():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the gradients' norm is ~4: clipped
            optimizer.step()
        optimizer.zero_grad()
        if how == "fsdp":  # the whole batch's loss: the mean of the ranks' (equal token counts)
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
    return losses


@torch.no_grad()
def decode_logits_diff(model, reference, cache: str) -> float:
    """The largest difference of the logits of a prompt and two cached decoding steps."""
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    diffs = []
    for m in (model.eval(), reference.eval()):
        past = archcomposer.StaticCache(max_length=16) if cache == "static" else archcomposer.DynamicCache()
        logits = [m(ids, past_key_values=past, use_cache=True).logits]
        for token in (7, 11):
            logits.append(m(torch.tensor([[token]]), past_key_values=past, use_cache=True).logits)
        diffs.append(torch.cat(logits, dim=1))
    model.train(), reference.train()
    return (diffs[0] - diffs[1]).abs().max().item()


def run_case(name: str, how: str, work: Path) -> dict:
    rank = dist.get_rank()
    spec, overrides, shardings = CASES[name]
    started = time.perf_counter()
    model = archcomposer.build_model(spec, seed=0, **overrides).train()
    reference = copy.deepcopy(model)
    ids = torch.randint(4, model.spec.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    reference_losses = train(reference, ids, None, optimizer_for(reference))
    shard(model, how)
    optimizer = optimizer_for(model)
    losses = train(model, ids, how, optimizer)
    trained = full_state(model)
    result = {"losses_1proc": reference_losses, "losses_2proc": losses,
              "max_param_diff": max_diff(trained, full_state(reference))}

    result["decode_diff"] = max(decode_logits_diff(model, reference, cache) for cache in ("dynamic", "static"))

    # a full checkpoint from the sharded model: every rank gathers, rank 0 writes
    full_dir = work / f"{name}-{how}-full"
    model.save_pretrained(full_dir)
    if rank == 0:
        result["full_save_diff"] = max_diff(full_state(archcomposer.from_pretrained(full_dir)), trained)
    if name == "bloom-alibi":  # a transformers checkpoint too (the test loads it with transformers)
        model.save_pretrained(work / f"{name}-{how}-hf", format="hf")

    # sharded checkpoints, with the optimizer: into a differently initialised model sharded the
    # same way, and the other way; one more step from there equals one more step from here
    sharded_dir = work / f"{name}-{how}-dcp"
    distributed.save_sharded(model, sharded_dir, optimizer=optimizer)
    train(model, ids, how, optimizer, steps=1)
    continued = full_state(model)
    for target in shardings:
        fresh = shard(archcomposer.build_model(spec, seed=7, **overrides).train(), target)
        fresh_optimizer = optimizer_for(fresh)
        distributed.load_sharded(fresh, sharded_dir, optimizer=fresh_optimizer)
        result[f"sharded_load_into_{target}_diff"] = max_diff(full_state(fresh), trained)
        train(fresh, ids, target, fresh_optimizer, steps=1)
        result[f"resumed_in_{target}_diff"] = max_diff(full_state(fresh), continued)
    result["seconds"] = time.perf_counter() - started
    return result


def mixed_precision() -> dict:
    """FSDP computing in bfloat16 (parameters gathered and cast), reducing gradients in fp32: each
    rank's loss against one process's model cast to bfloat16 on the same half batch."""
    rank = dist.get_rank()
    model = archcomposer.build_model("tiny-glm-4", seed=0).train()
    reference = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.randint(4, 256, (BATCH, SEQ), generator=torch.Generator().manual_seed(1)).chunk(2)[rank]
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    distributed.apply_fsdp(model, mixed_precision=policy)
    loss = model(ids, labels=ids).loss
    loss.backward()
    grad_dtypes = sorted({str(p.grad.dtype) for p in model.parameters()})
    return {"loss": loss.item(), "loss_1proc": reference(ids, labels=ids).loss.item(),
            "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}), "grad_dtypes": grad_dtypes}


#: What apply_tp refuses: spec, and the message (a regular expression) of its named error.
REFUSED = {"heads": ("tiny-bloom", r"SpecError: apply_tp: layer 0: attention.num_heads \(5\) must be divisible"),
           "moe": ("tiny-mixtral", r"SpecError: apply_tp: layer 0: mlp.kind 'moe' is not split"),
           "twice": ("tiny-glm-4", r"InputError: apply_tp: this model is already sharded")}


def refusals() -> dict[str, str]:
    messages = {}
    for case, (spec, _) in REFUSED.items():
        model = archcomposer.build_model(spec, seed=0)
        try:
            distributed.apply_tp(model)
            distributed.apply_tp(model)  # "twice"; the others fail on the first
        except archcomposer.ComposerError as exc:
            messages[case] = f"{type(exc).__name__}: {exc}"
    return messages


def main() -> None:
    work = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {f"{name}/{how}": run_case(name, how, work)
               for name, (*_, shardings) in CASES.items() for how in shardings}
    results["refused"] = refusals()
    results["mixed_precision"] = mixed_precision()
    if dist.get_rank() == 0:
        (work / "results.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
