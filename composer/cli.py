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
    from archcomposer import get_registry, load_spec
    from archcomposer.errors import InputError
    from archcomposer.summary import format_summary, summarize

    dtype = getattr(torch, args.dtype)
    detailed = bool(args.specs)
    if not detailed and (args.batch is not None or args.length is not None):
        raise InputError("--batch and --length size the detailed breakdown of the specs you name; name one "
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
    return 0


def cmd_generate(args) -> int:
    from archcomposer import build_model

    model = build_model(args.spec, seed=args.seed)
    ids = torch.tensor([args.prompt_ids], dtype=torch.long)
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    print(f"{model.spec.name} (random weights, seed {args.seed}): prompt {args.prompt_ids} -> "
          f"generated {out[0, ids.shape[1]:].tolist()}")
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

    p = sub.add_parser("summary", aliases=["explain"],
                       help="size specs without allocating: parameters per block, FLOPs per token, memory")
    p.add_argument("specs", nargs="*",
                   help="spec names, YAML paths or checkpoint directories, each broken down in detail "
                        "(e.g. glm-4-9b); none: one line per shipped spec")
    p.add_argument("--batch", type=int, help="sequences per forward for FLOPs and memory (default 1; e.g. --batch 8)")
    p.add_argument("--length", type=int,
                   help="tokens per sequence for FLOPs and memory (default: the spec's max_positions; "
                        "e.g. --length 4096)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="element type of weights, KV cache and activations (default bfloat16; e.g. --dtype float32)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of text (e.g. --json)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("generate", help="generate tokens from a spec with random weights")
    p.add_argument("spec", help="spec name or YAML path")
    p.add_argument("--prompt-ids", type=int, nargs="+", default=[5, 17, 42, 8])
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
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
