"""The ``archcomposer`` command line (also ``python -m archcomposer``)."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing

import torch

from archcomposer.errors import ComposerError, RegistryError


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
    from archcomposer import build_model, get_registry

    dtype = getattr(torch, args.dtype)
    width = torch.finfo(dtype).bits // 8
    names = args.specs or sorted(get_registry().specs)
    rows = [("spec", "family", "blocks (position | attention | norm | mlp | heads)", "parameters",
             f"weights ({args.dtype})", f"KV cache/token ({args.dtype})")]
    for name in names:
        model = build_model(name, device="meta")
        spec = model.spec
        params = model.num_parameters()
        kv = spec.num_layers * spec.attention.kv_bytes_per_token(width)
        rows.append((spec.name, spec.family or "-", _blocks(spec), f"{params:,}", _gib(params * width),
                     f"{kv / 1024:.1f} KiB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


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
            raise InputError("--chat applies the chat template to --prompt text; there is none")
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

    for path in args.files:
        spec = load_spec(path)
        print(f"{path}: ok ({spec.name}: {_blocks(spec)})")
    return 0


def cmd_schema(args) -> int:
    from archcomposer import get_registry

    print(json.dumps(get_registry().spec_class().model_json_schema(), indent=2))
    return 0


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
    if args.section is not None and args.section not in registry.sections:
        raise RegistryError(f"no section {args.section!r}; sections are {sorted(registry.sections)}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archcomposer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="build specs on the meta device and tabulate their size")
    p.add_argument("specs", nargs="*", help="spec names or YAML paths (default: every shipped spec)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("generate", help="generate text from a checkpoint, or tokens from a spec with random weights")
    p.add_argument("spec", help="a checkpoint directory (weights and tokenizer), or a spec name or YAML path "
                                "(random weights) (e.g. ./my-checkpoint, tiny-glm-4)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", action="append", help="text to continue, streamed to stdout; repeat it for "
                                                          "a batch (e.g. --prompt 'Once upon a time')")
    prompt.add_argument("--prompt-ids", type=int, nargs="+", default=[5, 17, 42, 8],
                        help="token ids to continue, no tokenizer needed (e.g. --prompt-ids 5 17 42 8)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the tokenizer's "
                                                       "chat template (e.g. --chat --prompt 'Hi')")
    p.add_argument("--max-new-tokens", type=int, default=20,
                   help="tokens to generate at most (e.g. --max-new-tokens 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of sampling (e.g. --seed 1)")
    p.add_argument("--sample", action="store_true",
                   help="sample instead of greedy decoding (e.g. --sample --top-p 0.9)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (e.g. --temperature 0.7)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (e.g. --top-k 50)")
    p.add_argument("--top-p", type=float, default=None, help="sample from the nucleus of mass p (e.g. --top-p 0.9)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: as stored; random weights float32) (e.g. --dtype bfloat16)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="validate spec files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON schema of specs (registered kinds included)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plugins", help="list plugins: distribution, version and what each registers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("blocks", help="list block kinds per section: parameters (type, default) and source")
    p.add_argument("section", nargs="?", help="only this section (position, norm, attention, mlp, head, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_blocks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ComposerError as exc:
        print(f"archcomposer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
