"""The ``archcomposer`` command line (also ``python -m archcomposer``)."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import platform
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

import torch

import archcomposer
from archcomposer.errors import CheckpointError, ComposerError, InputError, RegistryError
from archcomposer.specfile import INT64_MAX

EXIT_OK, EXIT_INVALID = 0, 1  # argparse exits 2 for a misused command
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE (`yes | head`)
EXIT_INTERRUPTED = 128 + 2  # SIGINT
DESCRIPTION = """\
Transformer language models composed from YAML specs: validate specs and checkpoints, convert
checkpoints between Hugging Face's format and ours, list the blocks and plugins. Every command
that takes a spec (a shipped name or a YAML file) also takes a checkpoint directory.

Exit codes: 0 success; 1 invalid input (a spec, a checkpoint or a value archcomposer refuses);
2 the command was misused (an unknown option, a missing argument, a value out of range)."""


def _blocks(spec) -> str:
    attn = spec.attention
    heads = f"{attn.num_heads}/{getattr(attn, 'num_kv_heads', attn.num_heads)}h"
    return (f"{spec.position.kind} | {attn.kind} {heads} | {spec.norm.kind} | {spec.mlp.kind} | "
            f"{','.join(h.kind for h in spec.heads) or 'hidden states'}")


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def cmd_summary(args) -> int:
    from archcomposer import get_registry, load_spec
    from archcomposer.summary import format_summary, summarize

    dtype = getattr(torch, args.dtype)
    detailed = bool(args.specs)
    if not detailed and (args.batch is not None or args.length is not None):
        args.parser.error("--batch and --length size the detailed breakdown of the specs you name; name one "
                          "(e.g. archcomposer summary glm-4-9b --batch 1 --length 4096)")
    specs = [load_spec(name) for name in args.specs or sorted(get_registry().specs)]
    summaries = [summarize(spec, batch=1 if args.batch is None else args.batch, length=args.length, dtype=dtype,
                           activations=detailed)
                 for spec in specs]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
    elif detailed:
        print("\n\n".join(format_summary(s, _blocks(spec)) for spec, s in zip(specs, summaries)))
    else:  # one line per shipped spec
        rows = [("spec", "family", "blocks (position | attention | norm | mlp | heads)", "parameters",
                 f"weights ({args.dtype})", f"KV cache/token ({args.dtype})")]
        for spec, s in zip(specs, summaries):
            rows.append((s.name, s.family or "-", _blocks(spec), f"{s.parameters:,}", _gib(s.weight_bytes),
                         f"{s.kv_bytes_per_token / 1024:.1f} KiB"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            print("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
            if i == 0:
                print("  ".join("-" * w for w in widths))
    return EXIT_OK


def cmd_generate(args) -> int:
    from pathlib import Path

    from archcomposer import build_model, from_pretrained
    from archcomposer.errors import InputError
    from archcomposer.tokenizer import TextStreamer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    checkpoint = Path(args.spec).is_dir()
    model = from_pretrained(args.spec, dtype=dtype) if checkpoint \
        else build_model(args.spec, seed=args.seed, dtype=dtype)
    options = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample, "seed": args.seed,
               "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    if args.prompt is None:
        if args.chat:
            args.parser.error("--chat applies the chat template to --prompt text; there is none")
        ids = torch.tensor([args.prompt_ids], dtype=torch.long)
        out = model.generate(ids, **options)
        source = f"checkpoint {args.spec}" if checkpoint else f"random weights, seed {args.seed}"
        print(f"{model.spec.name} ({source}): prompt {args.prompt_ids} -> generated {out[0, ids.shape[1]:].tolist()}")
        return 0
    tokenizer = model.tokenizer
    if tokenizer is None:
        what = f"checkpoint {args.spec} has no tokenizer (tokenizer.json or tokenizer.model)" if checkpoint \
            else f"spec {model.spec.name!r} has no tokenizer (a spec gives random weights and no vocabulary)"
        raise InputError(f"--prompt needs a tokenizer and {what}: give a checkpoint directory with a tokenizer, "
                         f"or token ids with --prompt-ids")
    texts = args.prompt
    if args.chat:
        if tokenizer.chat_template is None:
            raise InputError(f"--chat: the tokenizer of {args.spec} has no chat template")
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=False) for text in texts]
    rows = [tokenizer.encode(text, add_special_tokens=not args.chat) for text in texts]  # a template writes its own
    if not all(rows):
        raise InputError(f"--prompt {args.prompt[[len(r) for r in rows].index(0)]!r} encodes to no tokens")
    if len(rows) == 1:  # one prompt: stream its continuation as it comes
        model.generate(torch.tensor(rows), streamer=TextStreamer(tokenizer, skip_prompt=True), **options)
        return 0
    if tokenizer.pad_token is None:  # pad with EOS, as transformers' generate does without a pad token
        if tokenizer.eos_token is None:
            raise InputError("several --prompt are padded to one length, and the tokenizer has no pad or eos token")
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, add_special_tokens=not args.chat, padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(batch.input_ids, attention_mask=batch.attention_mask, **options)
    stops = set(model.spec.eos_token_ids)
    for i, (prompt, row) in enumerate(zip(args.prompt, out[:, batch.input_ids.shape[1]:].tolist()), start=1):
        end = next((j + 1 for j, token in enumerate(row) if token in stops), len(row))  # through the first EOS
        print(f"--- {i}: {prompt!r}")
        print(tokenizer.decode(row[:end], skip_special_tokens=True))
    return 0


def cmd_validate(args) -> int:
    from archcomposer import load_spec
    from archcomposer.checkpoint import check_checkpoint

    results = []
    for source in args.files:
        try:
            spec = check_checkpoint(source) if Path(source).is_dir() else load_spec(source)
        except (ComposerError, OSError, UnicodeDecodeError) as exc:  # report it, then the next file
            message = str(exc) if isinstance(exc, ComposerError) else f"{source}: cannot be read: {exc}"
            results.append({"file": source, "ok": False, "spec": None, "errors": _error_lines(message)})
            if not args.json:
                print(f"archcomposer: error: {message}", file=sys.stderr)
        else:
            results.append({"file": source, "ok": True, "spec": spec.name, "errors": []})
            if not args.json:
                print(f"{source}: ok ({spec.name}: {_blocks(spec)})")
    invalid = sum(not r["ok"] for r in results)
    if args.json:
        print(json.dumps(results, indent=2))
    elif invalid and len(results) > 1:
        print(f"archcomposer: {invalid} of {len(results)} invalid", file=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_OK


def _error_lines(message: str) -> list[str]:
    """The separate errors in a message: a spec's validation errors, one per line under a
    header ``invalid spec PATH (N error(s)):``, each already names its file, line and field."""
    first, *rest = message.splitlines()
    if rest and re.fullmatch(r"invalid spec.* \(\d+ error\(s\)\):", first):
        return [line.strip() for line in rest]
    return [message]


def cmd_convert(args) -> int:
    from archcomposer import from_pretrained, get_registry
    from archcomposer.checkpoint import checkpoint_spec
    from archcomposer.storage import CHECKPOINT_FILES, SHARD_PATTERN

    source = Path(args.source)
    if args.head is not None and args.to != "hf":
        args.parser.error("--head picks the one head of a --to hf export; --to archcomposer keeps every head")
    if not source.is_dir() and (args.source in get_registry().specs or source.is_file() and
                                source.suffix in (".yaml", ".yml")):
        raise CheckpointError(
            f"{args.source} is a spec, not a checkpoint: convert converts the weights of a checkpoint directory. "
            f"To write a spec's random initialisation, use Python, e.g. "
            f"build_model({args.source!r}, seed=0).save_pretrained({args.dest!r}, format={args.to!r})")
    heads = [h.kind for h in checkpoint_spec(source).heads]  # before reading any weights
    if args.head is not None and args.head not in heads:
        args.parser.error(f"argument --head: {source} has heads {heads or 'none'}, not {args.head!r}")
    if args.to == "hf" and args.head is None and len(heads) > 1:
        args.parser.error(f"{source} has heads {heads} and a Hugging Face model has one: "
                          f"pick one, e.g. --head {heads[0]}")
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    model = from_pretrained(source, dtype=getattr(torch, args.dtype) if args.dtype else None, progress=progress)
    path = model.save_pretrained(args.dest, format=args.to, max_shard_size=args.max_shard_size, head=args.head,
                                 progress=progress)
    files = sorted(f.name for f in path.iterdir() if f.name in CHECKPOINT_FILES or SHARD_PATTERN.fullmatch(f.name))
    if args.json:
        print(json.dumps({"path": str(path), "format": args.to, "files": files}, indent=2))
    else:
        print(f"wrote {path} ({args.to}: {', '.join(files)})")
    return EXIT_OK


def cmd_schema(args) -> int:
    from archcomposer.schema import schema_text

    text = schema_text()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w") as out:
            out.write(text)
    except OSError as exc:
        raise InputError(f"--output {args.output}: cannot write the schema there: {exc.strerror}") from None
    print(f"wrote the JSON schema of spec files to {args.output}")
    return 0


def cmd_diff(args) -> int:
    from archcomposer import load_spec
    from archcomposer.diff import diff_specs

    specs = [load_spec(source) for source in (args.a, args.b)]
    labels = tuple(source if source == spec.name else f"{source} ({spec.name})"
                   for source, spec in zip((args.a, args.b), specs))
    found = diff_specs(*specs, labels=labels)
    print(json.dumps(found.to_json(), indent=2) if args.json else found.format())
    return 0 if found.equal else 1


def cmd_plugins(args) -> int:
    from archcomposer import get_registry

    plugins = get_registry().plugins.values()
    if args.json:
        print(json.dumps([{"name": p.name, "distribution": p.distribution, "version": p.version,
                           "registers": p.registered, "error": p.error} for p in plugins], indent=2))
        return 0
    rows = [("plugin", "distribution", "version", "registers")]
    for p in plugins:
        registers = f"SKIPPED: it {p.error}" if p.error else ", ".join(p.registered) or "nothing"
        rows.append((p.name, p.distribution or "(in-process)", p.version or "-", registers))
    _table(rows)
    return 0


def cmd_blocks(args) -> int:
    from archcomposer import get_registry

    registry = get_registry()
    if args.section is not None and args.section not in registry.sections:  # a closed set, like choices=
        close = difflib.get_close_matches(args.section, registry.sections, n=1)
        args.parser.error(f"argument section: no section {args.section!r}; sections are {sorted(registry.sections)}"
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    listing = []
    for section in registry.sections.values():
        if args.section not in (None, section.name):
            continue
        for kind, (cls, source) in registry.kinds[section.name].items():
            params = [{"name": name, "type": _type_name(f.annotation, f.metadata), "required": f.is_required(),
                       "default": None if f.is_required() else _default(f)}
                      for name, f in cls.model_fields.items() if name != "kind"]
            doc = (cls.__doc__ or "").strip().split("\n\n")[0]
            listing.append({"section": section.name, "field": section.field, "kind": kind, "source": source,
                            "description": " ".join(doc.split()), "parameters": params})
    if args.json:
        print(json.dumps(listing, indent=2, default=repr))
        return 0
    section = None
    for block in listing:
        if block["section"] != section:
            section = block["section"]
            print(f"{'' if block is listing[0] else chr(10)}{section} (spec field `{block['field']}`)")
        print(f"  {block['kind']}  [{block['source']}]")
        if block["description"]:
            print(f"    {block['description']}")
        rows = [(p["name"], p["type"], "required" if p["required"] else f"= {json.dumps(p['default'], default=repr)}")
                for p in block["parameters"]]
        _table(rows, indent=6)
    return 0


def _table(rows, indent: int = 0) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(" " * indent + "  ".join([c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]))


def _type_name(annotation, metadata=()) -> str:
    """``float (> 0)``, ``'causal' | 'prefix_lm'``, ``int (> 0) | None``: a field's type for people."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], args[1:])
    if origin is typing.Literal:
        name = " | ".join(repr(a) for a in args)
    elif origin in (typing.Union, types.UnionType):
        tagged = [a for a in args if _tag(a)]  # spec models told apart by a tag: {type: 'linear' | 'yarn'}
        models = [f"{{{_tag(tagged[0])}: {' | '.join(repr(_tag(a, value=True)) for a in tagged)}}}"] if tagged else []
        name = " | ".join(models + [_type_name(a) for a in args if a not in tagged])
    elif annotation is type(None):
        name = "None"
    elif origin is not None:
        name = f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    else:
        name = getattr(annotation, "__name__", str(annotation))
    bounds = [f"{op} {getattr(m, attr)}" for m in metadata
              for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if hasattr(m, attr)]
    return f"{name} ({', '.join(bounds)})" if bounds else name


def _tag(cls, value: bool = False) -> str | None:
    """The name (or, with ``value``, the value) of the Literal tag field of a spec model class
    (``kind``, ``type``); None for anything else."""
    fields = getattr(cls, "model_fields", None) if isinstance(cls, type) else None
    for name in ("kind", "type"):
        if fields and name in fields and typing.get_origin(fields[name].annotation) is typing.Literal:
            return typing.get_args(fields[name].annotation)[0] if value else name
    return None


def _default(field):
    """The default as JSON data (what a YAML spec would write)."""
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


# ---------------------------------------------------------------------------------------------
# argument types: a value out of range is a usage error naming the option, not a traceback later


def non_negative_int(text: str) -> int:
    """An integer in [0, 2**63 - 1]: a count, a token id, a seed (what fits a torch.long)."""
    return _integer(text, low=0)


def positive_int(text: str) -> int:
    """An integer in [1, 2**63 - 1]."""
    return _integer(text, low=1)


def finite_float(text: str) -> float:
    """A finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def byte_size(text: str) -> int:
    """A size in bytes: ``500MB``, ``5GB``, ``2GiB`` or a plain number of bytes."""
    from archcomposer.storage import parse_size

    try:
        return parse_size(text)
    except CheckpointError:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB, 5GB or 2GiB, got {text!r}") from None


def _integer(text: str, *, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not low <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text} is out of range: expected a whole number from {low} to "
                                         f"{INT64_MAX} (2**63 - 1)")
    return value


# ---------------------------------------------------------------------------------------------
# the parser


def version() -> str:
    return f"archcomposer {archcomposer.__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _subcommand(sub, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with example invocations."""
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 100),
                          epilog=f"examples:\n{examples}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archcomposer", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  archcomposer validate specs/my-model.yaml ./checkpoint\n"
               "  archcomposer convert ./hf-checkpoint ./ours --to archcomposer\n"
               "  archcomposer blocks mlp --json")
    parser.add_argument("--version", action="version", version=version(),
                        help="print the versions of archcomposer, torch and Python (e.g. archcomposer --version)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (e.g. archcomposer validate --help)")

    p = sub.add_parser(  # as _subcommand, with the alias
        "summary", aliases=["explain"], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="size specs without allocating: parameters per block, FLOPs per token, memory",
        description=textwrap.fill(
            "Size specs without allocating anything. With no spec, one line per shipped spec: its blocks, "
            "parameters, weight size and KV cache per token. With specs, each broken down: parameters per block "
            "kind and active per token, forward and training FLOPs per token, and the memory of weights, KV cache "
            "and activations at --batch sequences of --length tokens.", 100),
        epilog="examples:\n  archcomposer summary\n  archcomposer summary glm-4-9b --batch 1 --length 4096\n"
               "  archcomposer explain ./my-checkpoint --dtype float32 --json")
    p.add_argument("specs", nargs="*",
                   help="spec names, YAML paths or checkpoint directories, each broken down in detail (default: "
                        "one line per shipped spec; e.g. glm-4-9b specs/my.yaml ./checkpoint)")
    p.add_argument("--batch", type=positive_int,
                   help="sequences per forward for FLOPs and memory (default: 1; e.g. --batch 8)")
    p.add_argument("--length", type=positive_int,
                   help="tokens per sequence for FLOPs and memory (default: the spec's max_positions; "
                        "e.g. --length 4096)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="element type of weights, KV cache and activations (default: bfloat16; e.g. --dtype float32)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list, one object per spec, for scripts (e.g. --json | jq '.[0].parameters')")
    p.set_defaults(func=cmd_summary, parser=p)

    p = _subcommand(sub, "generate", help="generate text from a checkpoint, or tokens from a spec with random weights",
                    description="Generate text from a checkpoint directory with a tokenizer, streamed to stdout as "
                                "it is produced (several --prompt make a left-padded batch), or token ids from a "
                                "spec's model with random weights (a smoke test of decoding with the KV cache).",
                    examples="  archcomposer generate ./my-checkpoint --prompt 'Once upon a time'\n"
                             "  archcomposer generate ./my-checkpoint --chat --prompt 'Hi' --max-new-tokens 64\n"
                             "  archcomposer generate tiny-glm-4 --prompt-ids 5 6 7 --sample --top-p 0.9 --seed 1")
    p.add_argument("spec", help="a checkpoint directory (weights and tokenizer), or a spec name or YAML path "
                                "(random weights) (e.g. ./my-checkpoint, tiny-glm-4)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", action="append", help="text to continue, streamed to stdout; repeat it for "
                                                          "a batch (e.g. --prompt 'Once upon a time')")
    prompt.add_argument("--prompt-ids", type=non_negative_int, nargs="+", default=[5, 17, 42, 8],
                        help="token ids to continue, no tokenizer needed (default: 5 17 42 8; e.g. --prompt-ids 1 2 3)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the tokenizer's "
                                                       "chat template (e.g. --chat --prompt 'Hi')")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=20,
                   help="how many tokens to generate at most (default: 20; e.g. --max-new-tokens 64)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the random weights and of sampling (default: 0; e.g. --seed 1)")
    p.add_argument("--sample", action="store_true",
                   help="sample instead of greedy decoding (e.g. --sample --temperature 0.7)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="divide the logits by this when sampling (default: 1.0; e.g. --temperature 0.7)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample from the k most likely tokens only (e.g. --top-k 50)")
    p.add_argument("--top-p", type=probability, default=None,
                   help="sample from the most likely tokens whose probabilities sum to p (e.g. --top-p 0.9)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: as stored; random weights float32) (e.g. --dtype bfloat16)")
    p.set_defaults(func=cmd_generate, parser=p)

    p = _subcommand(sub, "validate", help="validate specs and checkpoint directories, reporting every error",
                    description="Validate each spec (YAML file or shipped name) or checkpoint directory (its spec, "
                                "and its tensors' names and shapes from the safetensors headers) and report every "
                                "error of every one; exit 1 if any is invalid.",
                    examples="  archcomposer validate specs/*.yaml\n  archcomposer validate ./checkpoint --json")
    p.add_argument("files", nargs="+", metavar="SPEC",
                   help="YAML files, shipped spec names or checkpoint directories (e.g. specs/my.yaml ./checkpoint)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {file, ok, spec, errors} (e.g. --json | jq '.[] | select(.ok | not)')")
    p.set_defaults(func=cmd_validate)

    p = _subcommand(sub, "convert", help="convert a checkpoint between Hugging Face's format and ours",
                    description="Convert a checkpoint directory, Hugging Face's (config.json) or ours (spec.yaml), "
                                "to either format, optionally casting its weights and resharding them.",
                    examples="  archcomposer convert ./Llama-3.2-1B ./llama-ours --to archcomposer --dtype bfloat16\n"
                             "  archcomposer convert ./llama-ours ./llama-hf --to hf --max-shard-size 2GB\n"
                             "  archcomposer convert ./multi-head ./cls-hf --to hf --head sequence_classification")
    p.add_argument("source", metavar="SRC",
                   help="the checkpoint directory to read, Hugging Face's or ours (e.g. ./Llama-3.2-1B)")
    p.add_argument("dest", metavar="DST", help="the directory to write; files other than a checkpoint's "
                                               "(a tokenizer) are kept (e.g. ./llama-ours)")
    p.add_argument("--to", required=True, choices=["hf", "archcomposer"],
                   help="the format to write: hf (config.json, transformers' names) or archcomposer (spec.yaml) "
                        "(e.g. --to hf)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast floating-point weights to this dtype (default: as stored; e.g. --dtype bfloat16)")
    p.add_argument("--max-shard-size", type=byte_size, default="5GB", metavar="SIZE",
                   help="split the weights into shards of at most this size (default: 5GB; e.g. --max-shard-size 2GB)")
    p.add_argument("--head", default=None, metavar="KIND",
                   help="the head a --to hf export keeps, for a model with several "
                        "(e.g. --head sequence_classification)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars on stderr (default: when stderr is a terminal; e.g. --no-progress)")
    p.add_argument("--json", action="store_true",
                   help="print the written directory and files as JSON (e.g. --json | jq -r .path)")
    p.set_defaults(func=cmd_convert, parser=p)

    p = _subcommand(sub, "schema", help="print the JSON schema of spec files (draft 2020-12, every installed "
                                        "plugin's kinds included), for editors",
                    description="Print the JSON Schema of a spec file, with every kind registered by the installed "
                                "plugins, for editors that check YAML against a schema (see the README's Editors).",
                    examples="  archcomposer schema > archcomposer.schema.json\n"
                             "  archcomposer schema --output specs/spec.schema.json")
    p.add_argument("--output", metavar="FILE", help="write the schema to FILE instead of printing it "
                                                    "(e.g. --output spec.schema.json)")
    p.set_defaults(func=cmd_schema)

    p = _subcommand(sub, "diff", help="what differs between two specs or checkpoints, block by block and layer "
                                      "by layer",
                    description="Show what differs between two specs (names, YAML files or checkpoint directories), "
                                "block by block and, where layers differ, layer by layer. Exit status as diff(1): "
                                "0 when they are the same, 1 when they differ, 2 on an error.",
                    examples="  archcomposer diff glm-4-9b seed-oss-36b\n"
                             "  archcomposer diff my-ablation.yaml ./checkpoint --json")
    p.add_argument("a", help="a spec name, YAML file or checkpoint directory (e.g. glm-4-9b)")
    p.add_argument("b", help="the spec to compare it with (e.g. seed-oss-36b)")
    p.add_argument("--json", action="store_true", help="print the differences as JSON (e.g. diff a.yaml b.yaml --json)")
    p.set_defaults(func=cmd_diff, error_code=2)  # 1 means the specs differ

    p = _subcommand(sub, "plugins", help="list plugins: distribution, version and what each registers",
                    description="List the plugins archcomposer loaded (built-in families included): their "
                                "distribution, version and what each registers, or why one was skipped.",
                    examples="  archcomposer plugins\n  archcomposer plugins --json")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (e.g. --json | jq '.[].name')")
    p.set_defaults(func=cmd_plugins)

    p = _subcommand(sub, "blocks", help="list block kinds per section: parameters (type, default) and source",
                    description="List every block kind of every section (or one section) with its parameters "
                                "(name, type, default) and where it comes from (the core or a plugin).",
                    examples="  archcomposer blocks\n  archcomposer blocks mlp --json")
    p.add_argument("section", nargs="?",
                   help="only this section (position, norm, attention, mlp, head, ...; e.g. mlp)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (e.g. --json | jq '.[].kind')")
    p.set_defaults(func=cmd_blocks, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 here
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away (``| head``) shows here for output still buffered
        return code
    except BrokenPipeError:
        # Stop quietly, as Unix tools do; point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ComposerError, OSError) as exc:  # OSError: the file system refused (permissions, a full disk)
        print(f"archcomposer: error: {exc}", file=sys.stderr)
        return getattr(args, "error_code", EXIT_INVALID)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
