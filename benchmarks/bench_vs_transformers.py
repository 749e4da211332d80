"""Speed of composed models against transformers, side by side in one run, as ratios.

For each family, a random model of the same (small, CPU-friendly) shape is made with
transformers, saved with its own ``save_pretrained``, and loaded with ``archcomposer.from_pretrained``,
so both sides run identical weights. Measured: prefill (one forward over the prompt batch) and
greedy decoding with the KV cache. A ratio below 1 means archcomposer is faster.

    python benchmarks/bench_vs_transformers.py [--hidden 256] [--layers 4] [--batch 4] [--prompt 128] [--new 32]

Needs the test extra (transformers); nothing is downloaded. Timings are medians of --repeats runs
after one warm-up, on whatever threads torch uses here (set OMP_NUM_THREADS to pin them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def hf_models(hidden: int, layers: int):
    from transformers import (BloomConfig, BloomForCausalLM, CpmAntConfig, CpmAntForCausalLM, GlmConfig,
                              GlmForCausalLM, SeedOssConfig, SeedOssForCausalLM)

    heads = hidden // 64
    yield "bloom", BloomForCausalLM(BloomConfig(vocab_size=4096, hidden_size=hidden, n_layer=layers, n_head=heads))
    yield "glm", GlmForCausalLM(GlmConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=4 * hidden,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=max(1, heads // 2), head_dim=64, pad_token_id=0))
    yield "seed_oss", SeedOssForCausalLM(SeedOssConfig(vocab_size=4096, hidden_size=hidden,
                                                       intermediate_size=4 * hidden, num_hidden_layers=layers,
                                                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                                                       head_dim=64))
    yield "cpmant", CpmAntForCausalLM(CpmAntConfig(vocab_size=4096, hidden_size=hidden, num_attention_heads=heads,
                                                   dim_head=64, dim_ff=4 * hidden, num_hidden_layers=layers,
                                                   prompt_length=8, prompt_types=4, segment_types=4))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import archcomposer

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hidden {args.hidden}, {args.layers} layers, "
          f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens; median of {args.repeats}")
    header = f"{'family':<10}{'prefill hf':>12}{'ours':>10}{'ratio':>8}{'decode hf':>12}{'ours':>10}{'ratio':>8}" \
             f"{'ours static':>13}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for family, hf in hf_models(args.hidden, args.layers):
        hf.eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = archcomposer.from_pretrained(tmp).eval()
        ids = torch.randint(10, 4000, (args.batch, args.prompt))
        mask = torch.ones_like(ids)
        kwargs = {"attention_mask": mask} if family != "cpmant" else {}
        prefill_hf = median_seconds(lambda: hf(ids, use_cache=False, **kwargs), args.repeats)
        prefill_ours = median_seconds(lambda: ours(ids, attention_mask=mask, use_cache=False), args.repeats)
        gen = {"max_new_tokens": args.new, "do_sample": False}
        decode_hf = median_seconds(lambda: hf.generate(ids, min_new_tokens=args.new, pad_token_id=0, **kwargs, **gen),
                                   args.repeats)
        decode_ours = median_seconds(lambda: ours.generate(ids, attention_mask=mask, eos_token_id=[], **gen),
                                     args.repeats)
        decode_static = median_seconds(
            lambda: ours.generate(ids, attention_mask=mask, eos_token_id=[], cache="static", **gen), args.repeats)
        print(f"{family:<10}{prefill_hf * 1e3:>10.1f}ms{prefill_ours * 1e3:>8.1f}ms{prefill_ours / prefill_hf:>8.2f}"
              f"{decode_hf * 1e3:>10.1f}ms{decode_ours * 1e3:>8.1f}ms{decode_ours / decode_hf:>8.2f}"
              f"{decode_static * 1e3:>11.1f}ms{decode_static / decode_hf:>8.2f}")


if __name__ == "__main__":
    main()
