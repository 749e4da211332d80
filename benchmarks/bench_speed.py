"""archcomposer against transformers, side by side in one run on the same weights: prefill, decoding
(eager and compiled), a training step, the meta-device build of bloom-176b and checkpoint loading.

    python benchmarks/bench_speed.py            # the full run (about 10 minutes on 2 CPU cores)
    python benchmarks/bench_speed.py --quick    # every section, shrunk (a couple of minutes)
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --peak-tflops 989

The model is GLM-shaped (transformers' ``GlmForCausalLM``): hidden 512, 8 heads, 4 KV heads,
head_dim 64, intermediate 2048, vocabulary 32000, 4 layers (48.5M parameters, 194 MB in fp32).
transformers builds it with random weights and saves it with ``save_pretrained``;
``archcomposer.from_pretrained`` loads that directory, so both sides run identical weights.
Nothing is downloaded; needs the ``test`` and ``bench`` extras (transformers, matplotlib).

What is measured (medians; ours and theirs timed alternately, after a warm-up; CUDA synchronised):

- prefill: one forward over a batch of 1 x L tokens (attention_mask of ones, use_cache=False).
- decode: greedy ``generate`` of --new tokens after a --prompt token prompt, batch 1 and 8. The
  per-token latency is the median interval between consecutive tokens reaching a streamer (both
  libraries copy each token to the CPU for it), so it is one decode step, prefill excluded.
  eager: ours ``cache="dynamic"`` / ``"static"``, theirs the same cache kind, compilation off.
  compiled: ours ``generate(..., cache="static", compile=True)``; theirs the way transformers
  supports: ``cache_implementation="static"``, which makes ``generate`` compile the decode step
  with ``torch.compile`` (a ``CompileConfig``; off a GPU its ``_compile_all_devices`` flag, the
  one transformers' own tests set). The first call of each (compilation) is timed apart.
- matrix-product floor of a decode step: the time of the bare matrix products of one step, each
  Linear's weight times a [batch, in_features] input plus the LM head, timed in the same run.
  ``of floor`` = floor time / step time (1.0: nothing but the matrix products).
- curves (the PNG): prefill tokens/s at each --lengths, and decode tokens/s at batch 1 (one
  step, dynamic cache, eager) after a prompt of each --lengths tokens.
- training: a forward + backward + AdamW step (benchmarks/training_step.py): tokens/s, both
  libraries timed in turns (``alternate_training_steps``), and memory, each library alone in a
  fresh process (``measure_training_step``, its resident set; on a GPU, the same step here with
  torch's allocator counters): the peak above the step's start ("step memory") and in all ("peak
  memory"); ours with ``gradient_checkpointing_enable()`` and ``chunked_loss_enable()``, theirs as
  transformers builds it. MFU = training FLOPs per token
  (3 x forward, ``archcomposer.summary``) x tokens/s / --peak-tflops (omitted without it).
- meta build: ``archcomposer.build_model("bloom-176b", device="meta")`` against
  transformers' ``BloomForCausalLM`` of the same shape built under ``torch.device("meta")``.
- load: ``from_pretrained`` of the model above, then one read of every weight (a CPU load maps
  the safetensors files and reads a page when it is first used), against reading the same files'
  bytes into a bytearray (``of floor`` = read time / load time); each library loading its own
  format (``save_pretrained`` of each), and both loading transformers'.

Ratio convention: ``ratio`` = archcomposer speed / transformers speed, so above 1 archcomposer is
faster (tokens/s ours / theirs; for times, theirs / ours); for peak memory, ours / theirs bytes
(below 1 archcomposer needs less).

Output: a table on stdout, and in --out (default benchmarks/results/) ``bench_speed.json``,
``bench_speed.md`` (machine, settings and table) and ``bench_speed.png`` (the curves).
JSON schema (version 1)::

    {"schema": 1,
     "machine": {"date", "cpu", "physical_cores", "logical_cpus", "threads", "gpu", "device",
                 "dtype", "python", "torch", "transformers", "archcomposer", "commit"},
     "settings": {every command-line option, "model": {GlmConfig fields}, "parameters"},
     "rows": [{"section": "prefill" | "decode" | "training" | "meta build" | "load",
               "case": str, "unit": str, "transformers": float | null, "archcomposer": float,
               "ratio": float | null, "floor": null | {"name": str, "seconds": float,
               "transformers": float | null, "archcomposer": float}, "details": {...}}],
     "curves": {"context": [int], "prefill_tokens_per_s": {"transformers": [float],
                "archcomposer": [float]}, "decode_tokens_per_s": {same}}}

``transformers`` is null where a row has no transformers counterpart; ``floor.transformers`` /
``floor.archcomposer`` are the fractions of the floor (floor time / time).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SHAPE = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
         "intermediate_size": 2048, "vocab_size": 32000, "num_hidden_layers": 4}
BLOOM_176B = {"vocab_size": 250880, "hidden_size": 14336, "n_layer": 70, "n_head": 112}
FULL = {"lengths": [256, 512, 1024, 2048, 4096], "batches": [1, 8], "prompt": 128, "new": 32, "repeats": 3,
        "train_batch": 4, "train_length": 512, "train_steps": 3}
QUICK = {"lengths": [128, 256], "batches": [1], "prompt": 16, "new": 6, "repeats": 1,
         "train_batch": 1, "train_length": 128, "train_steps": 1, "layers": 2}
SECTIONS = ("prefill", "decode", "compiled", "curve", "training", "meta", "load")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="every section at toy sizes, a smoke run of a couple of minutes (e.g. --quick)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these sections (e.g. --only prefill decode)")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[],
                        help="leave these sections out (e.g. --skip compiled training)")
    parser.add_argument("--lengths", type=int, nargs="+",
                        help=f"prefill lengths and decode contexts of the curves (e.g. --lengths 512 2048 4096; "
                             f"default {FULL['lengths']})")
    parser.add_argument("--batches", type=int, nargs="+", help="decode batch sizes (e.g. --batches 1 8; default 1 8)")
    parser.add_argument("--prompt", type=int, help="decode prompt length in tokens (e.g. --prompt 128; default 128)")
    parser.add_argument("--new", type=int, help="tokens generated per decode run (e.g. --new 32; default 32)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement, after one warm-up "
                                                    "(e.g. --repeats 5; default 3)")
    parser.add_argument("--layers", type=int,
                        help="decoder layers of the GLM-shaped model (e.g. --layers 2; default 4)")
    parser.add_argument("--train-batch", type=int, help="training step batch size (e.g. --train-batch 2; default 4)")
    parser.add_argument("--train-length", type=int,
                        help="training step sequence length (e.g. --train-length 1024; default 512)")
    parser.add_argument("--train-steps", type=int, help="timed training steps (e.g. --train-steps 5; default 3)")
    parser.add_argument("--device", default="cpu", help="where both models run (e.g. --device cuda)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weights and activations of both models (e.g. --dtype bfloat16)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads, torch.set_num_threads (e.g. --threads 8; default 2)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak dense TFLOP/s in --dtype, for the training step's MFU "
                             "(e.g. --peak-tflops 989 for an H100 SXM in bfloat16)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for bench_speed.json/.md/.png (e.g. --out /tmp/bench)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in {**FULL, "layers": SHAPE["num_hidden_layers"], **preset}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batches", "lengths"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive integers, got {getattr(args, name)}")
    for name in ("prompt", "repeats", "layers", "train_batch", "train_length", "train_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.new < 3:
        parser.error(f"--new must be at least 3 (two decode steps to time), got {args.new}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops must be a positive number of TFLOP/s, got {args.peak_tflops}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    args.sections = [s for s in args.only if s not in args.skip]
    return args


# ---------------------------------------------------------------------------------------------- timing


class Clock:
    """Wall-clock seconds of a call, synchronising the device around it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def pair(self, ours, theirs, repeats: int, warmup: bool = True) -> tuple[float, float]:
        """Median seconds of each, timed alternately (a machine that slows down mid-run slows both)."""
        if warmup:
            self(ours), self(theirs)
        pairs = [(self(ours), self(theirs)) for _ in range(repeats)]
        return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


class StepClock:
    """A streamer (transformers' put/end protocol, which archcomposer's generate follows too) that
    stamps each arrival: the prompt, then one [B] token tensor per step."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def step_seconds(self) -> list[float]:
        """Intervals between consecutive generated tokens (the first comes from the prefill)."""
        tokens = self.stamps[1:]
        return [b - a for a, b in zip(tokens, tokens[1:])]


def decode_step_seconds(generate, repeats: int) -> tuple[float, float]:
    """(median seconds of one decode step over ``repeats`` runs, seconds of the first run, which
    includes any compilation). ``generate(streamer)`` runs one generation."""
    first = StepClock()
    start = time.perf_counter()
    generate(first)
    first_run = time.perf_counter() - start
    steps = []
    for _ in range(repeats):
        clock = StepClock()
        generate(clock)
        steps += clock.step_seconds()
    return statistics.median(steps), first_run


def floor_seconds(model: nn.Module, batch: int, clock: Clock, repeats: int) -> float:
    """The bare matrix products of one decode step at ``batch``: every Linear of the layers and
    the causal-LM head (each weight once), on a [batch, in_features] input, no bias."""
    weights = {id(m.weight): m.weight for m in [*model.layers.modules(), *model.heads["causal_lm"].modules()]
               if isinstance(m, nn.Linear)}
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights.values()}

    @torch.inference_mode()
    def products():
        for w in weights.values():
            torch.mm(inputs[w.shape[1]], w.t())  # [batch, out]

    products()
    return statistics.median(clock(products) for _ in range(max(repeats, 10)))


# --------------------------------------------------------------------------------------------- results


def row(section: str, case: str, unit: str, theirs: float | None, ours: float, *, higher_is_better: bool,
        floor: dict | None = None, **details) -> dict:
    if theirs is None:
        ratio = None
    elif unit == "bytes":
        ratio = ours / theirs
    else:
        ratio = ours / theirs if higher_is_better else theirs / ours
    return {"section": section, "case": case, "unit": unit, "transformers": theirs, "archcomposer": ours,
            "ratio": ratio, "floor": floor, "details": details}


def machine(args) -> dict:
    import transformers

    import archcomposer

    cpu, cores = platform.processor() or platform.machine(), None
    try:
        info = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
        pairs = {block for block in (_core_of(b) for b in info.split("\n\n")) if block}
        cores = len(pairs) or None
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    device = torch.device(args.device)
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "physical_cores": cores,
            "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "device": args.device, "dtype": args.dtype, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "archcomposer": getattr(archcomposer, "__version__", None), "commit": commit}


def _core_of(block: str) -> tuple[str, str] | None:
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return (fields["physical id"], fields["core id"]) if "core id" in fields and "physical id" in fields else None


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "s":
        return f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"
    if unit == "ms/step":
        return f"{value:,.2f} ms"
    return f"{value:,.0f} tok/s" if value >= 100 else f"{value:,.1f} tok/s"


def table(rows: list[dict]) -> list[list[str]]:
    """Rows of cells: section, case, transformers, archcomposer, ratio, of floor (theirs / ours)."""
    cells = []
    for r in rows:
        floor = r["floor"]
        at_floor = "-" if floor is None else " / ".join(
            "-" if floor[k] is None else f"{floor[k]:.2f}" for k in ("transformers", "archcomposer"))
        cells.append([r["section"], r["case"], _number(r["transformers"], r["unit"]),
                      _number(r["archcomposer"], r["unit"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                      at_floor])
    return cells


def notes(rows: list[dict]) -> list[str]:
    """What the table leaves out: compile times, training FLOP rates and MFU, the first meta build."""
    lines = []
    for r in rows:
        d = r["details"]
        if "compiled" in r["case"]:
            lines.append(f"{r['case']}: first run, compilation included, {d['first_run_s']['transformers']:.1f} s "
                         f"transformers, {d['first_run_s']['archcomposer']:.1f} s archcomposer (inductor's on-disk "
                         f"caches shorten a compilation seen before)")
        if "tflops" in d:
            mfu = "" if d["mfu"] is None else \
                f"; MFU {d['mfu']['transformers']:.1%} transformers, {d['mfu']['archcomposer']:.1%} archcomposer"
            lines.append(f"training {r['case']}: {d['flops_per_token'] / 1e6:,.0f} MFLOP per token (3 x forward), "
                         f"{d['tflops']['transformers']:.3f} TFLOP/s transformers, "
                         f"{d['tflops']['archcomposer']:.3f} TFLOP/s archcomposer{mfu}")
        if "first_call_s" in d:
            lines.append(f"meta build {r['case']}: the first call in the process (plugins loaded) took "
                         f"{d['first_call_s']['archcomposer'] * 1e3:,.0f} ms")
    return lines


HEADER = ["section", "case", "transformers", "archcomposer", "ratio", "of floor (theirs / ours)"]


def print_table(rows: list[dict]) -> None:
    cells = [HEADER, *table(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    for k, c in enumerate(cells):
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [f"Machine: {m['cpu']} ({m['physical_cores']} cores, {m['logical_cpus']} logical CPUs)"
             + (f", GPU {m['gpu']}" if m["gpu"] else "")
             + f"; {m['threads']} torch threads; {m['dtype']} on {m['device']}; torch {m['torch']}, "
               f"transformers {m['transformers']}; {m['date']}" + (f", commit {m['commit']}" if m["commit"] else ""),
             "",
             f"Model: GLM-shaped, hidden {s['model']['hidden_size']}, {s['model']['num_attention_heads']} heads "
             f"({s['model']['num_key_value_heads']} KV), head_dim {s['model']['head_dim']}, intermediate "
             f"{s['model']['intermediate_size']}, vocabulary {s['model']['vocab_size']}, "
             f"{s['model']['num_hidden_layers']} layers ({s['parameters'] / 1e6:.1f}M parameters). Median of "
             f"{s['repeats']}; decode: prompt {s['prompt']}, {s['new']} new tokens"
             + ("; quick settings" if s["quick"] else "") + ".",
             "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * 2 + "---:|" * (len(HEADER) - 2)]
    lines += ["| " + " | ".join(c) + " |" for c in table(result["rows"])]
    lines += ["", *(f"- {line}" for line in notes(result["rows"]))] if notes(result["rows"]) else []
    return "\n".join(lines) + "\n"


def plot(curves: dict, machine_info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [("prefill_tokens_per_s", "prefill (batch 1, whole prompt)", "prompt length (tokens)"),
              ("decode_tokens_per_s", "decode step (batch 1, dynamic cache)", "context length (tokens)")]
    for ax, (key, title, xlabel) in zip(axes, panels):
        for library, style in (("transformers", "o--"), ("archcomposer", "s-")):
            points = [(c, v) for c, v in zip(curves["context"], curves[key][library]) if v is not None]
            if points:
                ax.plot(*zip(*points), style, label=library)
        ax.set_xscale("log", base=2)
        ax.set_xticks(curves["context"], [str(c) for c in curves["context"]])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"archcomposer vs transformers, GLM-shaped model, {machine_info['dtype']}, "
                 f"{machine_info['gpu'] or machine_info['cpu']} ({machine_info['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- benchmarks


class Bench:
    """Both models on the same weights, and the measurements over them."""

    def __init__(self, args, workdir: Path):
        import transformers
        from transformers import GlmConfig, GlmForCausalLM

        import archcomposer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.args = args
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        self.clock = Clock(self.device)
        self.config = GlmConfig(**{**SHAPE, "num_hidden_layers": args.layers}, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2)
        torch.manual_seed(0)
        self.hf_dir = workdir / "transformers"
        GlmForCausalLM(self.config).save_pretrained(self.hf_dir)
        self.hf = GlmForCausalLM.from_pretrained(self.hf_dir, dtype=self.dtype).to(self.device).eval()
        self.hf.generation_config.eos_token_id = None  # every run generates exactly --new tokens
        self.ours = archcomposer.from_pretrained(self.hf_dir, dtype=self.dtype, device=self.device)
        self.parameters = self.ours.num_parameters()
        self.rows: list[dict] = []
        self.curves = {"context": list(args.lengths),
                       "prefill_tokens_per_s": {"transformers": [None] * len(args.lengths),
                                                "archcomposer": [None] * len(args.lengths)},
                       "decode_tokens_per_s": {"transformers": [None] * len(args.lengths),
                                               "archcomposer": [None] * len(args.lengths)}}

    def ids(self, batch: int, length: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch * 100_003 + length)
        return torch.randint(3, self.config.vocab_size, (batch, length), generator=generator).to(self.device)

    def add(self, r: dict) -> None:
        self.rows.append(r)
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.2f}"
        print(f"  {r['section']:<10} {r['case']:<34} transformers {_number(r['transformers'], r['unit']):>14}  "
              f"archcomposer {_number(r['archcomposer'], r['unit']):>14}{ratio}", flush=True)

    # prefill -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self) -> None:
        for k, length in enumerate(self.args.lengths):
            ids = self.ids(1, length)
            mask = torch.ones_like(ids)
            ours_s, theirs_s = self.clock.pair(lambda: self.ours(ids, attention_mask=mask, use_cache=False),
                                               lambda: self.hf(ids, attention_mask=mask, use_cache=False),
                                               self.args.repeats)
            self.curves["prefill_tokens_per_s"]["archcomposer"][k] = length / ours_s
            self.curves["prefill_tokens_per_s"]["transformers"][k] = length / theirs_s
            self.add(row("prefill", f"{length} tokens", "tokens/s", length / theirs_s, length / ours_s,
                         higher_is_better=True, seconds={"transformers": theirs_s, "archcomposer": ours_s}))

    # decode ------------------------------------------------------------------------------------------

    def generate_ours(self, ids, new: int, **options):
        mask = torch.ones_like(ids)
        return lambda streamer: self.ours.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                                   eos_token_id=[], streamer=streamer, **options)

    def generate_theirs(self, ids, new: int, **options):
        mask = torch.ones_like(ids)
        return lambda streamer: self.hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                                 pad_token_id=0, streamer=streamer, **options)

    @torch.inference_mode()
    def decode(self, compiled: bool) -> None:
        from transformers import CompileConfig

        cases = [("compiled, static cache", {"cache": "static", "compile": True},
                  {"cache_implementation": "static", "compile_config": self.compile_config(CompileConfig)})] \
            if compiled else \
            [("eager, dynamic cache", {"cache": "dynamic"}, {"disable_compile": True}),
             ("eager, static cache", {"cache": "static"}, {"cache_implementation": "static", "disable_compile": True})]
        for batch in self.args.batches:
            ids = self.ids(batch, self.args.prompt)
            floor = floor_seconds(self.ours, batch, self.clock, self.args.repeats)
            for name, ours_options, theirs_options in cases:
                if compiled:
                    torch._dynamo.reset()  # each case compiles from scratch: its first run is the compile time
                ours_s, ours_first = decode_step_seconds(self.generate_ours(ids, self.args.new, **ours_options),
                                                         self.args.repeats)
                if compiled:
                    torch._dynamo.reset()
                theirs_s, theirs_first = decode_step_seconds(
                    self.generate_theirs(ids, self.args.new, **theirs_options), self.args.repeats)
                self.add(row("decode", f"batch {batch}, {name}", "ms/step", theirs_s * 1e3, ours_s * 1e3,
                             higher_is_better=False,
                             floor={"name": "matrix products of one decode step", "seconds": floor,
                                    "transformers": floor / theirs_s, "archcomposer": floor / ours_s},
                             tokens_per_s={"transformers": batch / theirs_s, "archcomposer": batch / ours_s},
                             first_run_s={"transformers": theirs_first, "archcomposer": ours_first}))

    def compile_config(self, CompileConfig):
        """transformers' default compile settings for generate; off a GPU, the flag that lets it compile."""
        config = CompileConfig()
        if self.device.type not in ("cuda", "xpu"):
            config._compile_all_devices = True
        return config

    @torch.inference_mode()
    def curve(self) -> None:
        """Decode tokens/s at batch 1 after a prompt of each length (dynamic cache, eager)."""
        for k, length in enumerate(self.args.lengths):
            ids = self.ids(1, length)
            new = max(4, min(self.args.new, 9))
            ours_s, _ = decode_step_seconds(self.generate_ours(ids, new), 1)
            theirs_s, _ = decode_step_seconds(self.generate_theirs(ids, new, disable_compile=True), 1)
            self.curves["decode_tokens_per_s"]["archcomposer"][k] = 1 / ours_s
            self.curves["decode_tokens_per_s"]["transformers"][k] = 1 / theirs_s
            print(f"  curve      decode step after {length} tokens: transformers {theirs_s * 1e3:.2f} ms, "
                  f"archcomposer {ours_s * 1e3:.2f} ms", flush=True)

    # training ----------------------------------------------------------------------------------------

    def training(self) -> None:
        from archcomposer.summary import summarize
        from training_step import alternate_training_steps, measure_training_step

        args = self.args
        where = {"path": str(self.hf_dir), "dtype": self.dtype, "device": self.device, "threads": args.threads}
        factories = {"transformers": functools.partial(transformers_for_training, **where),
                     "archcomposer": functools.partial(archcomposer_for_training, **where)}
        shape = {"batch": args.train_batch, "seq": args.train_length, "vocab_size": self.config.vocab_size}
        if self.device.type == "cpu":
            # Memory: each library alone in a fresh process, its peak resident set (one timed step
            # shows the steady state); speed: both here, one step of each in turns.
            measured = {library: measure_training_step(factory, steps=1, **shape)
                        for library, factory in factories.items()}
            speeds = alternate_training_steps(factories, rounds=args.train_steps, **shape)
            for library, speed in speeds.items():
                measured[library].update(speed)
        else:  # torch's allocator counters, each library in turn in this process
            measured = {library: measure_training_step_on_gpu(factory, steps=args.train_steps, **shape)
                        for library, factory in factories.items()}
        flops_per_token = summarize(self.ours.spec, batch=args.train_batch, length=args.train_length,
                                    dtype=self.dtype, activations=False).training_flops_per_token
        speed = {k: m["tokens_per_s"] for k, m in measured.items()}
        mfu = None if args.peak_tflops is None else \
            {k: flops_per_token * v / (args.peak_tflops * 1e12) for k, v in speed.items()}
        case = f"batch {args.train_batch} x {args.train_length}"
        self.add(row("training", case, "tokens/s", speed["transformers"], speed["archcomposer"], higher_is_better=True,
                     flops_per_token=flops_per_token, tflops={k: flops_per_token * v / 1e12 for k, v in speed.items()},
                     mfu=mfu, measured=measured))
        if all(m["step_bytes"] is not None for m in measured.values()):
            self.add(row("training", f"{case}, step memory", "bytes", measured["transformers"]["step_bytes"],
                         measured["archcomposer"]["step_bytes"], higher_is_better=False,
                         method=measured["archcomposer"]["method"]))
        self.add(row("training", f"{case}, peak memory", "bytes", measured["transformers"]["peak_bytes"],
                     measured["archcomposer"]["peak_bytes"], higher_is_better=False,
                     method=measured["archcomposer"]["method"]))

    # meta build --------------------------------------------------------------------------------------

    def meta(self) -> None:
        from transformers import AutoModelForCausalLM, BloomConfig

        import archcomposer

        first = self.clock(lambda: archcomposer.build_model("bloom-176b", device="meta"))
        ours_s = statistics.median(self.clock(lambda: archcomposer.build_model("bloom-176b", device="meta"))
                                   for _ in range(self.args.repeats))

        def theirs():
            with torch.device("meta"):
                AutoModelForCausalLM.from_config(BloomConfig(**BLOOM_176B))

        theirs_s = self.clock(theirs)  # once: it takes seconds, and reference only
        self.add(row("meta build", "bloom-176b", "s", theirs_s, ours_s, higher_is_better=False,
                     first_call_s={"archcomposer": first}))

    # load --------------------------------------------------------------------------------------------

    def load(self, workdir: Path) -> None:
        from transformers import GlmForCausalLM

        import archcomposer

        ours_dir = workdir / "archcomposer"
        self.ours.save_pretrained(ours_dir)
        hf_dir = workdir / "transformers-saved"
        self.hf.save_pretrained(hf_dir)  # in --dtype, as ours above
        device = self.device

        def ours(directory, touch=True):
            return lambda: touched(archcomposer.from_pretrained(directory, device=device), touch)

        def theirs(touch=True):
            return lambda: touched(GlmForCausalLM.from_pretrained(
                hf_dir, dtype=self.dtype, device_map=str(device) if device.type != "cpu" else None), touch)

        read_s = {d: statistics.median(self.clock(lambda: read_bytes(d)) for _ in range(self.args.repeats + 1))
                  for d in (ours_dir, hf_dir)}
        for case, directory in (("each its own format", ours_dir), ("transformers format", hf_dir)):
            ours_s, theirs_s = self.clock.pair(ours(directory), theirs(), self.args.repeats)
            lazy_ours_s, lazy_theirs_s = self.clock.pair(ours(directory, False), theirs(False), self.args.repeats)
            size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
            floor = {"transformers": read_s[hf_dir], "archcomposer": read_s[directory]}
            self.add(row("load", f"{case}, {size / 2**20:,.0f} MiB", "s", theirs_s, ours_s, higher_is_better=False,
                         floor={"name": "reading the same safetensors files' bytes into memory",
                                "seconds": floor["archcomposer"], "transformers": floor["transformers"] / theirs_s,
                                "archcomposer": floor["archcomposer"] / ours_s},
                         read_s=floor, load_over_read={"transformers": theirs_s / floor["transformers"],
                                                       "archcomposer": ours_s / floor["archcomposer"]},
                         untouched_load_s={"transformers": lazy_theirs_s, "archcomposer": lazy_ours_s}))


def touched(model: nn.Module, touch: bool) -> None:
    """Read every byte of every weight once (a sum per tensor): a CPU load maps the files and
    reads a page only when something first uses it, so an untouched load has read nothing yet."""
    if touch:
        for tensor in model.state_dict().values():
            tensor.sum()


def transformers_for_training(path: str, *, dtype: torch.dtype, device: torch.device, threads: int) -> nn.Module:
    """transformers' model as it comes (a factory for ``measure_training_step``, run in its process)."""
    from transformers import GlmForCausalLM

    torch.set_num_threads(threads)
    return GlmForCausalLM.from_pretrained(path, dtype=dtype).to(device)


def archcomposer_for_training(path: str, *, dtype: torch.dtype, device: torch.device, threads: int) -> nn.Module:
    """Ours with activation checkpointing and the chunked causal-LM loss."""
    import archcomposer

    torch.set_num_threads(threads)
    model = archcomposer.from_pretrained(path, dtype=dtype, device=device)
    model.gradient_checkpointing_enable()
    model.chunked_loss_enable()
    return model


def measure_training_step_on_gpu(model_factory, *, batch: int, seq: int, steps: int, vocab_size: int,
                                 seed: int = 0) -> dict:
    """``measure_training_step``'s step (AdamW, labels = inputs, one warm-up then ``steps`` timed) on
    the model's GPU, in this process, its memory from torch's allocator: ``step_bytes`` above the
    timed steps' start, ``peak_bytes`` in all (weights, AdamW's moments, gradients, activations)."""
    from training_step import train_step

    torch.manual_seed(seed)
    model = model_factory().train()
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(device)

    step = functools.partial(train_step, model, optimizer, ids)
    torch.cuda.reset_peak_memory_stats(device)
    losses = [step()]
    first_peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    start_bytes = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        losses.append(step())  # .item() waits for the step
        times.append(time.perf_counter() - begin)
    step_peak = torch.cuda.max_memory_allocated(device)
    step_s = statistics.median(times)
    return {"method": "torch.cuda.max_memory_allocated", "step_bytes": step_peak - start_bytes,
            "peak_bytes": max(first_peak, step_peak), "tokens_per_s": batch * seq / step_s, "step_s": step_s,
            "losses": losses}


def read_bytes(directory: Path) -> int:
    """Read every safetensors file of ``directory`` into a fresh bytearray; the bytes read."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        buffer = bytearray(path.stat().st_size)
        with open(path, "rb", buffering=0) as f:
            total += f.readinto(buffer)
    return total


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))  # training_step.py, beside this file
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench = Bench(args, workdir)
        info = machine(args)
        print(f"{info['cpu']}, {info['threads']} threads, {args.dtype} on {args.device}; torch {info['torch']}, "
              f"transformers {info['transformers']}; GLM-shaped, {bench.parameters / 1e6:.1f}M parameters, "
              f"{args.layers} layers; sections: {' '.join(args.sections)}", flush=True)
        steps = {"prefill": bench.prefill, "decode": lambda: bench.decode(compiled=False),
                 "compiled": lambda: bench.decode(compiled=True), "curve": bench.curve, "training": bench.training,
                 "meta": bench.meta, "load": lambda: bench.load(workdir)}
        for section in args.sections:
            start = time.perf_counter()
            steps[section]()
            print(f"  ({section}: {time.perf_counter() - start:.0f} s)", flush=True)
        result = {"schema": 1, "machine": info,
                  "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "model": {**SHAPE, "num_hidden_layers": args.layers}, "parameters": bench.parameters},
                  "rows": bench.rows, "curves": bench.curves}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "bench_speed.md").write_text(markdown(result))
    if any(v is not None for key in ("prefill_tokens_per_s", "decode_tokens_per_s")
           for v in result["curves"][key]["archcomposer"]):
        plot(result["curves"], info, args.out / "bench_speed.png")
    print()
    print_table(bench.rows)
    for line in notes(bench.rows):
        print(f"  {line}")
    print(f"\nratio: archcomposer speed / transformers speed (>1: archcomposer faster); peak memory: ours / theirs. "
          f"of floor: floor time / time. Written to {args.out}/bench_speed.json, .md, .png")
    return result


if __name__ == "__main__":
    main()
