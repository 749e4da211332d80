"""Speed of the mixture-of-experts layer against transformers' ``MixtralSparseMoeBlock``, and of a
whole small Mixtral, side by side in one run, as tokens per second and their ratio.

Both sides hold identical weights: the block's router and 3-D experts are copied into ours, and
the model is saved by transformers and loaded with ``archcomposer.from_pretrained``. The default
case is a batch of 8 x 512 tokens through 8 experts, top 2. A ratio above 1 means archcomposer
is faster.

    python benchmarks/bench_moe.py [--hidden 1024] [--intermediate 3584] [--layers 2] [--batch 8] [--seq 512]
                                   [--device cuda] [--dtype bfloat16]

Needs the test extra (transformers); nothing is downloaded. Timings are medians of --repeats runs,
ours and theirs alternately, after one warm-up each (synchronised on CUDA)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def median_seconds(ours, theirs, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of each, timed alternately (so a machine that slows down mid-run slows both)."""
    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(ours), timed(theirs)  # warm-up
    pairs = [(timed(ours), timed(theirs)) for _ in range(repeats)]
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def mixtral_config(args):
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), num_local_experts=args.experts,
                         num_experts_per_tok=args.top_k, max_position_embeddings=max(4096, args.seq))


@torch.no_grad()
def bench_block(args, device, dtype) -> tuple[float, float, float]:
    """Tokens/s of our MoE block and of MixtralSparseMoeBlock on the same input; their largest difference."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    import archcomposer

    torch.manual_seed(0)
    theirs = MixtralSparseMoeBlock(mixtral_config(args))
    for p in theirs.parameters():
        p.normal_(0, 0.02)
    theirs = theirs.to(device, dtype).eval()
    spec = {"name": "moe-bench", "vocab_size": 8, "hidden_size": args.hidden, "num_layers": 1, "max_positions": 8,
            "attention": {"kind": "gqa", "num_heads": args.hidden // 64}, "position": {"kind": "none"},
            "norm": {"kind": "rmsnorm"},
            "mlp": {"kind": "moe", "intermediate_size": args.intermediate, "num_experts": args.experts,
                    "top_k": args.top_k}}
    ours = archcomposer.build_model(spec, seed=0, device=device, dtype=dtype).layers[0].mlp
    ours.router.gate.weight.copy_(theirs.gate.weight)
    ours.experts.gate_up_proj.copy_(theirs.experts.gate_up_proj)
    ours.experts.down_proj.copy_(theirs.experts.down_proj)
    x = torch.randn(args.batch, args.seq, args.hidden, device=device, dtype=dtype)
    diff = (ours(x).float() - theirs(x).float()).abs().max().item()
    tokens = args.batch * args.seq
    mine, reference = median_seconds(lambda: ours(x), lambda: theirs(x), args.repeats, device)
    return tokens / mine, tokens / reference, diff


@torch.no_grad()
def bench_model(args, device, dtype) -> tuple[float, float]:
    """Tokens/s of a forward (prefill, no cache) of the whole model, ours and transformers'."""
    from transformers import MixtralForCausalLM

    import archcomposer

    torch.manual_seed(0)
    reference = MixtralForCausalLM(mixtral_config(args)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = archcomposer.from_pretrained(tmp).to(device, dtype).eval()
    reference = reference.to(device, dtype)
    ids = torch.randint(0, 4096, (args.batch, args.seq), device=device)
    tokens = args.batch * args.seq
    mine, theirs = median_seconds(lambda: ours(ids, use_cache=False), lambda: reference(ids, use_cache=False),
                                  args.repeats, device)
    return tokens / mine, tokens / theirs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (e.g. --hidden 4096 for Mixtral 8x7B)")
    parser.add_argument("--intermediate", type=int, default=3584, help="expert width (e.g. --intermediate 14336)")
    parser.add_argument("--experts", type=int, default=8, help="experts per layer (e.g. --experts 8)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (e.g. --top-k 2)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the whole-model case (e.g. --layers 2)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (e.g. --batch 8)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (e.g. --seq 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case, median kept (e.g. --repeats 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (e.g. --device cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="parameter dtype; default bfloat16 on CUDA, float32 on CPU (e.g. --dtype float32)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    print(f"{args.batch} x {args.seq} tokens, {args.experts} experts top-{args.top_k}, hidden {args.hidden}, "
          f"expert width {args.intermediate}, {device} {dtype}, torch {torch.__version__}")
    ours, theirs, diff = bench_block(args, device, dtype)
    print(f"MoE block     archcomposer {ours:12,.0f} tok/s   transformers {theirs:12,.0f} tok/s   "
          f"ratio {ours / theirs:.2f}x   max abs diff {diff:.2g}")
    ours, theirs = bench_model(args, device, dtype)
    print(f"{args.layers}-layer model archcomposer {ours:12,.0f} tok/s   transformers {theirs:12,.0f} tok/s   "
          f"ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
