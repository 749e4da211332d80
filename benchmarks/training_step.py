"""Peak memory and tokens/s of a training step (forward, backward, AdamW step): the memory of each
configuration measured alone in a fresh process, the speeds timed in turns in one process.

    python benchmarks/training_step.py [--batch 4] [--seq 512] [--steps 3] [--json out.json]

runs a GLM-shaped model (hidden 512, 4 layers, 8 heads, 4 KV heads, head_dim 64, intermediate
2048, vocabulary 32000, fp32) made with transformers' ``GlmForCausalLM`` and saved with its
``save_pretrained``; ``archcomposer.from_pretrained`` loads the same weights. Compared:
transformers as it comes, transformers with ``gradient_checkpointing_enable()``, ours as it comes,
and ours with ``gradient_checkpointing_enable()`` and ``chunked_loss_enable()``. Needs the test
extra (transformers); nothing is downloaded.

Memory is the process's resident set (CPU torch keeps no allocator counters): Linux's peak RSS
(``VmHWM`` in /proc/self/status), reset before each measured stretch by writing 5 to
/proc/self/clear_refs; where that reset is not allowed, ``getrusage(RUSAGE_SELF).ru_maxrss``, the
peak of the whole process, which is why every configuration runs in a process of its own. That
process sets glibc's ``MALLOC_MMAP_THRESHOLD_`` (128 KiB) so that freed tensors leave the resident
set at once and the peak is the live tensors' (with glibc's adaptive default, freed heap stays
resident and the peaks read 10-50% higher, noisily).
``measure_training_step`` (memory and speed of one model) and ``alternate_training_steps`` (speeds
of several, in turns) are importable: the benchmark script of ``benchmarks/`` uses them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import multiprocessing
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def train_step(model, optimizer, ids: torch.Tensor) -> float:
    """One training step, the one every measurement here takes: the causal-LM loss with the inputs
    as labels, backward, the optimizer's step. Returns the loss (``.item()`` waits for the step)."""
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return loss.item()


def measure_training_step(model_factory: Callable[[], torch.nn.Module], *, batch: int, seq: int, steps: int = 3,
                          vocab_size: int, lr: float = 1e-4, seed: int = 0, fresh_process: bool = True,
                          mmap_threshold: int | None = 128 * 1024) -> dict:
    """Train the model ``model_factory()`` builds for one warm-up step and ``steps`` timed steps on
    random token ids [batch, seq] below ``vocab_size`` (labels = inputs), with AdamW; return:

    - ``model_bytes``: resident set once the model and optimizer are built, before any step;
    - ``first_step_bytes``: the highest resident set during the warm-up step, above ``model_bytes``
      (it allocates AdamW's two moments besides gradients, activations and temporaries);
    - ``step_bytes``: the highest resident set during the timed steps, above the resident set at
      their start (weights and AdamW's moments are there already: this is activations, gradients
      and temporaries, what activation checkpointing and a chunked loss change); None where the
      peak cannot be reset (``method`` says which counter was read);
    - ``peak_bytes``: the highest resident set of the process during the steps (everything);
    - ``tokens_per_s`` and ``step_s``: batch x seq over the median timed step, and that median;
    - ``losses``: the loss of every step, warm-up first (the same weights give the same losses).

    The model's forward takes ``input_ids`` and ``labels`` and returns an output with ``.loss``
    (transformers' and archcomposer's causal LMs). With ``fresh_process`` (the default) it all runs
    in a new process (``multiprocessing``'s spawn: ``model_factory`` must pickle, e.g. a module-level
    function or a ``functools.partial`` of one), so no earlier allocation shows in the peak; there
    ``mmap_threshold`` (bytes, glibc's ``MALLOC_MMAP_THRESHOLD_``; None: glibc's adaptive default)
    gives every larger block its own mapping, returned to the system when freed, so the resident
    set follows the live tensors instead of keeping freed heap (it costs page faults: a few
    percent of a step here)."""
    if fresh_process:
        with _environment(MALLOC_MMAP_THRESHOLD_=None if mmap_threshold is None else str(mmap_threshold)), \
                multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(measure_training_step, (model_factory,),
                              dict(batch=batch, seq=seq, steps=steps, vocab_size=vocab_size, lr=lr, seed=seed,
                                   fresh_process=False))
    torch.manual_seed(seed)
    model = model_factory().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))

    step = functools.partial(train_step, model, optimizer, ids)

    resettable = _reset_peak()
    model_bytes = _rss()
    losses = [step()]
    first_peak = _peak()
    times = []
    start_bytes = step_peak = None
    if resettable:
        gc.collect()
        _reset_peak()
        start_bytes = _rss()
    for _ in range(steps):
        begin = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - begin)
    if resettable:
        step_peak = _peak()
    step_s = statistics.median(times) if times else float("nan")
    return {
        "batch": batch, "seq": seq, "steps": steps, "threads": torch.get_num_threads(),
        "method": "VmHWM (reset via /proc/self/clear_refs)" if resettable else "getrusage ru_maxrss",
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "model_bytes": model_bytes,
        "first_step_bytes": first_peak - model_bytes,
        "step_bytes": None if step_peak is None else step_peak - start_bytes,
        "peak_bytes": max(first_peak, step_peak or 0),
        "tokens_per_s": batch * seq / step_s, "step_s": step_s, "losses": losses,
    }


def alternate_training_steps(model_factories: dict[str, Callable[[], torch.nn.Module]], *, batch: int, seq: int,
                             rounds: int = 3, vocab_size: int, lr: float = 1e-4, seed: int = 0) -> dict[str, dict]:
    """Tokens/s of each model's training step, timed in this process in turns (one step of each
    model per round, after a warm-up round), so a machine whose load drifts slows every model
    alike: ``{name: {"tokens_per_s", "step_s" (the median step), "losses"}}``."""
    ids = torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    runs = {}
    for name, factory in model_factories.items():
        torch.manual_seed(seed)
        model = factory().train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=lr), [], [])
    for round in range(rounds + 1):
        for model, optimizer, times, losses in runs.values():
            begin = time.perf_counter()
            losses.append(train_step(model, optimizer, ids))
            if round:  # the first round warms up
                times.append(time.perf_counter() - begin)
    return {name: {"tokens_per_s": batch * seq / statistics.median(times), "step_s": statistics.median(times),
                   "losses": losses} for name, (_, _, times, losses) in runs.items()}


@contextlib.contextmanager
def _environment(**values: str | None):
    """Environment variables set (None: removed) for the processes started meanwhile."""
    saved = dict(os.environ)
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rss() -> int:
    """The resident set now, in bytes."""
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    """The highest resident set since the last reset (or since the process began), in bytes."""
    if _STATUS.exists():
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE).group(1))


def _reset_peak() -> bool:
    """Reset the peak resident set to the current one (Linux); False where that is not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


# -- the GLM-shaped comparison ----------------------------------------------------------------

GLM_SHAPE = dict(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=[1, 2], attention_dropout=0.0)


def save_glm(directory: Path) -> Path:
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    GlmForCausalLM(GlmConfig(**GLM_SHAPE)).save_pretrained(directory)
    return directory


def transformers_model(path: str, *, checkpointing: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if checkpointing:
        model.activation_checkpointing_enable()  # transformers 5's gradient_checkpointing_enable
    return model


def archcomposer_model(path: str, *, checkpointing: bool = False, chunk_size: int | None = None) -> torch.nn.Module:
    import archcomposer

    model = archcomposer.from_pretrained(path, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
    if chunk_size is not None:
        model.chunked_loss_enable(chunk_size=chunk_size)
    return model


def configurations(path: str, chunk_size: int) -> dict[str, Callable[[], torch.nn.Module]]:
    return {
        "transformers": functools.partial(transformers_model, path),
        "transformers, checkpointing": functools.partial(transformers_model, path, checkpointing=True),
        "archcomposer": functools.partial(archcomposer_model, path),
        f"archcomposer, checkpointing + chunked loss ({chunk_size})":
            functools.partial(archcomposer_model, path, checkpointing=True, chunk_size=chunk_size),
    }


def table(results: dict[str, dict]) -> str:
    """Markdown: each configuration's memory and speed, and its ratio to the first row's."""
    base = next(iter(results.values()))
    mib = 2 ** 20

    def cell(r: dict, key: str, unit: str = " MiB", scale: float = mib) -> str:
        if r[key] is None or base[key] is None:
            return "n/a"
        return f"{r[key] / scale:,.0f}{unit} ({r[key] / base[key]:.2f}x)"

    lines = ["| configuration | step peak | first step peak | process peak | tokens/s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {cell(r, 'step_bytes')} | {cell(r, 'first_step_bytes')} | {cell(r, 'peak_bytes')} "
                     f"| {cell(r, 'tokens_per_s', '', 1)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (e.g. --batch 4)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (e.g. --seq 512)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps of each configuration after one warm-up, taken in turns (e.g. --steps 3)")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="positions per chunk of our chunked loss (e.g. --chunk-size 1024)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON (e.g. --json training.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_glm(Path(tmp)))
        factories = configurations(path, args.chunk_size)
        results = {}
        for name, factory in factories.items():
            results[name] = measure_training_step(factory, batch=args.batch, seq=args.seq, steps=1,
                                                  vocab_size=GLM_SHAPE["vocab_size"])
            print(f"memory of {name} measured", file=sys.stderr)
        speeds = alternate_training_steps(factories, batch=args.batch, seq=args.seq, rounds=args.steps,
                                          vocab_size=GLM_SHAPE["vocab_size"])
        for name, speed in speeds.items():
            results[name].update(speed)
    first = next(iter(results.values()))
    print(f"GLM-shaped, fp32, batch {args.batch} x {args.seq} tokens, AdamW, {first['threads']} threads; memory: "
          f"{first['method']}, MALLOC_MMAP_THRESHOLD_={first['malloc_mmap_threshold']}; ratios to the first row; "
          f"step peak: above the step's start, first step: above the weights (AdamW's moments allocated)")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
