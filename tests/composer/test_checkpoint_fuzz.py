"""Fuzzing the checkpoint doors and killing saves.

Each door gets a seeded stream of corrupted inputs: safetensors files cut short or with garbled
headers, tensors of the wrong dtype or shape, malformed shard indexes, config.json values of
every family gone missing or wrong (null, lists, huge ints, inf), broken spec.yaml files, and bad
arguments to ``from_pretrained`` / ``save_pretrained``. Each case must end in a ``ComposerError``
or a correct load (the loaded tensors are the file's, the model runs); any other exception fails
naming the case. Checkpoints are ours and transformers' own ``save_pretrained`` output.

Then saves over an existing checkpoint are killed (SIGKILL) in forked children: once before
every filesystem operation a save makes (with and without the atomic exchange), and at random
moments. After each kill the target must load as the old or the new model (the same logits), and
the next save must leave nothing else beside it.

The default profile runs ``CASES`` cases per door (seed 0); ``ARCHCOMPOSER_HYPOTHESIS_PROFILE=
thorough`` runs ten times as many with a fresh seed (printed on failure)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import random
import shutil
import signal
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

import archcomposer.storage as storage
from archcomposer import ComposerError, build_model, from_pretrained
from archcomposer.checkpoint import LOAD_DTYPES as LOAD_DTYPES_BY_NAME
from archcomposer.checkpoint import family_for_model_type, own_tensors
from tests.composer.test_plugins import BUILTIN_FAMILIES

THOROUGH = os.environ.get("ARCHCOMPOSER_HYPOTHESIS_PROFILE") == "thorough"
SEED = random.SystemRandom().randrange(2**32) if THOROUGH else 0
SCALE = 10 if THOROUGH else 1
#: Cases per door in the default profile.
CASES = {"safetensors bytes": 60, "tensors": 40, "index": 40, "config.json": 108, "spec.yaml": 30,
         "from_pretrained arguments": 30, "save_pretrained arguments": 25}
#: How each door's cases ended: {door: Counter(refused=..., loaded=...)}, printed at the end.
OUTCOMES: dict[str, Counter] = {}
IDS = torch.tensor([[5, 17, 42, 8, 99, 3]])

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for door, counts in OUTCOMES.items():
        print(f"\n{door}: {sum(counts.values())} cases ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")


def rng_for(door: str) -> random.Random:
    return random.Random(f"{SEED}-{door}")


def run_cases(door: str, cases) -> None:
    """Each case is (label, attempt, verify): ``attempt()`` must raise a ComposerError or return
    a result that ``verify`` accepts."""
    counts = OUTCOMES.setdefault(door, Counter())
    for label, attempt, verify in cases:
        try:
            result = attempt()
        except ComposerError:
            counts["refused"] += 1
            continue
        except Exception as exc:
            raise AssertionError(f"{door} (seed {SEED}): {label}: {type(exc).__name__}: {exc}") from exc
        verify(result)
        counts["loaded"] += 1
    assert sum(counts.values()) == CASES[door] * SCALE


def runs(model) -> None:
    """A loaded model computes: logits of the expected shape."""
    ids = IDS % model.spec.vocab_size
    with torch.no_grad():
        out = model(ids)
    first = next(v for v in out.values() if isinstance(v, torch.Tensor))
    assert first.shape[:2] == ids.shape


def holds_the_files(directory: Path):
    """For our format: a load is correct if every tensor is the file's (as safetensors reads it)."""
    def verify(model):
        stored = {}
        for file in directory.glob("*.safetensors"):
            stored.update(load_file(file))
        own = own_tensors(model)
        assert set(own) == set(stored)
        assert len({t.dtype for t in own.values()}) == 1  # one dtype: the one most weights are stored in
        for name, tensor in own.items():
            torch.testing.assert_close(tensor, stored[name].to(tensor.dtype), rtol=0, atol=0, equal_nan=True,
                                       msg=name)
        runs(model)
    return verify


def fresh_copy(source: Path, tmp_path: Path, label: str = "case") -> Path:
    target = tmp_path / label
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, symlinks=True)
    return target


# ---------------------------------------------------------------------------------------------
# checkpoints to corrupt


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Ours (one file and sharded) and transformers-written ones (one file and sharded)."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = build_model("tiny-glm-4", seed=0)
    made = {"ours": model.save_pretrained(root / "ours"),
            "ours-sharded": model.save_pretrained(root / "ours-sharded", max_shard_size="40KB")}
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llama = transformers.LlamaForCausalLM(config)
    llama.save_pretrained(root / "hf-llama")
    llama.save_pretrained(root / "hf-llama-sharded", max_shard_size="20KB")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4,
                                                                 n_positions=64, bos_token_id=1, eos_token_id=2))
    gpt2.save_pretrained(root / "hf-gpt2")
    made.update({name: root / name for name in ("hf-llama", "hf-llama-sharded", "hf-gpt2")})
    assert (made["hf-llama-sharded"] / storage.INDEX_FILE).exists()
    for kind, directory in made.items():  # each loads before it is corrupted
        verifier(kind, directory)(from_pretrained(directory))
    return made


def verifier(kind: str, directory: Path):
    return holds_the_files(directory) if kind.startswith("ours") else runs


# ---------------------------------------------------------------------------------------------
# safetensors files


def split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


HEADER_VALUES = {
    "dtype": ["F32", "F16", "BF16", "F64", "I32", "I64", "BOOL", "U8", "U16", "F8_E4M3", "C64", "F8_E8M0", "XX",
              "", 5, None, ["F32"]],
    "shape": [[], [0], [1], [-1], [2**40], [2**64], [3, 3], [1, 1, 1, 1], "x", None, [1.5], [None]],
    "data_offsets": [[0, 0], [0, 4], [5, 3], [-1, 4], [0, 2**64], [0, 2**70], None, "x", [0], [0, 1, 2]],
}


def corrupt_file(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    header, data = split(raw)
    names = [n for n in header if n != "__metadata__"]
    kind = rng.choice(["truncate", "flip header byte", "header length", "header field", "drop field",
                       "metadata", "append", "empty", "not json"])
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return f"truncated to {cut} of {len(raw)} bytes", raw[:cut]
    if kind == "flip header byte":
        at = rng.randrange(8 + len(json.dumps(header)))
        return f"byte {at} xor 0x5a", raw[:at] + bytes([raw[at] ^ 0x5A]) + raw[at + 1:]
    if kind == "header length":
        n = rng.choice([0, 1, 7, len(raw), len(raw) - 8, 2**64 - 1, 2**32, struct.unpack("<Q", raw[:8])[0] + 1])
        return f"header length {n}", struct.pack("<Q", n) + raw[8:]
    if kind == "header field":
        name, field = rng.choice(names), rng.choice(list(HEADER_VALUES))
        value = rng.choice(HEADER_VALUES[field])
        header[name][field] = value
        return f"{name}.{field} = {value!r}", join(header, data)
    if kind == "drop field":
        name, field = rng.choice(names), rng.choice(list(HEADER_VALUES))
        del header[name][field]
        return f"{name} without {field}", join(header, data)
    if kind == "metadata":
        value = rng.choice([5, None, ["x"], {"format": 5}, {"format": "np"}, "pt"])
        header["__metadata__"] = value
        return f"__metadata__ = {value!r}", join(header, data)
    if kind == "append":
        return "16 bytes appended", raw + bytes(range(16))
    if kind == "empty":
        return "empty file", b""
    return "header not JSON", struct.pack("<Q", 16) + b"{not json here!}" + data


def test_corrupted_safetensors_files(checkpoints, tmp_path):
    rng = rng_for("safetensors bytes")
    cases = []
    for i in range(CASES["safetensors bytes"] * SCALE):
        kind = rng.choice(list(checkpoints))
        directory = checkpoints[kind]
        file = rng.choice(sorted(directory.glob("*.safetensors")))
        label, raw = corrupt_file(file.read_bytes(), rng)

        def attempt(kind=kind, file=file, raw=raw):
            target = fresh_copy(checkpoints[kind], tmp_path)
            (target / file.name).write_bytes(raw)
            return from_pretrained(target), target

        cases.append((f"{kind} {file.name}: {label}", attempt,
                      lambda result, kind=kind: verifier(kind, result[1])(result[0])))
    run_cases("safetensors bytes", cases)


# ---------------------------------------------------------------------------------------------
# tensors: dtypes, shapes, names


DTYPES = [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float16, torch.bfloat16,
          torch.float64, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.complex64]


def corrupt_tensors(tensors: dict[str, torch.Tensor], rng: random.Random) -> str:
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    kind = rng.choice(["dtype", "dtype", "shape", "drop", "extra", "rename", "non-finite"])
    if kind == "dtype":
        dtype = rng.choice(DTYPES)
        tensors[name] = t.to(dtype) if dtype != torch.complex64 else t.to(torch.complex64)
        return f"{name} as {dtype}"
    if kind == "shape":
        change = rng.choice(["unsqueeze", "flatten", "drop row", "scalar", "empty"])
        tensors[name] = {"unsqueeze": lambda: t[None], "flatten": lambda: t.flatten().clone(),
                         "drop row": lambda: t[:-1].clone(), "scalar": lambda: t.flatten()[0].clone(),
                         "empty": lambda: t[:0].clone()}[change]()
        return f"{name} {change}"
    if kind == "drop":
        del tensors[name]
        return f"without {name}"
    if kind == "extra":
        tensors["extra.weight"] = torch.ones(3)
        return "an extra tensor"
    if kind == "rename":
        tensors[name + "_renamed"] = tensors.pop(name)
        return f"{name} renamed"
    tensors[name] = t.clone().fill_(rng.choice([float("nan"), float("inf"), -float("inf")]))
    return f"{name} non-finite"


def test_wrong_tensors(checkpoints, tmp_path):
    rng = rng_for("tensors")
    cases = []
    for i in range(CASES["tensors"] * SCALE):
        kind = rng.choice(["ours", "hf-llama", "hf-gpt2"])
        tensors = load_file(checkpoints[kind] / "model.safetensors")
        label = corrupt_tensors(tensors, rng)

        def attempt(kind=kind, tensors=tensors):
            target = fresh_copy(checkpoints[kind], tmp_path)
            save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
            return from_pretrained(target), target

        cases.append((f"{kind}: {label}", attempt, lambda result, kind=kind: verifier(kind, result[1])(result[0])))
    run_cases("tensors", cases)


# ---------------------------------------------------------------------------------------------
# shard indexes


JSON_VALUES = [None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}]


def corrupt_index(index: dict, directory: Path, rng: random.Random) -> tuple[str, bytes | None, str | None]:
    """A label, the index bytes (None: JSON of ``index``) and a file to plant (a symlink, a FIFO)."""
    weight_map = index["weight_map"]
    name = rng.choice(sorted(weight_map))
    shards = sorted(set(weight_map.values()))
    kind = rng.choice(["weight_map", "entry", "entry", "entry", "no weight_map", "top level", "drop entry",
                       "extra entry", "not utf-8", "truncated", "symlink out", "fifo shard", "directory shard"])
    if kind == "weight_map":
        index["weight_map"] = rng.choice(JSON_VALUES + [list(weight_map)])
        return f"weight_map = {index['weight_map']!r:.40}", None, None
    if kind == "entry":
        value = rng.choice(JSON_VALUES + ["../" + shards[0], "/etc/passwd", "/" + shards[0], "sub/" + shards[0],
                                          ".", "..", "model-00099-of-00099.safetensors", shards[-1]])
        weight_map[name] = value
        return f"{name} -> {value!r}", None, None
    if kind == "no weight_map":
        del index["weight_map"]
        return "no weight_map", None, None
    if kind == "top level":
        value = rng.choice(JSON_VALUES[:-2] + [[index]])
        return f"index = {value!r:.40}", json.dumps(value).encode(), None
    if kind == "drop entry":
        del weight_map[name]
        return f"without {name}", None, None
    if kind == "extra entry":
        weight_map["no.such.tensor"] = shards[0]
        return "an entry for a tensor no shard holds", None, None
    if kind == "not utf-8":
        return "not UTF-8", b"\xff\xfe" + json.dumps(index).encode(), None
    if kind == "truncated":
        text = json.dumps(index).encode()
        return "truncated", text[:rng.randrange(len(text))], None
    if kind == "symlink out":  # a shard file named plainly, a symlink to another checkpoint's shard
        weight_map[name] = "linked.safetensors"
        return f"{name} -> a symlink out of the directory", None, "symlink"
    weight_map[name] = "special.safetensors"
    return f"{name} -> a {kind.split()[0]}", None, kind.split()[0]


def test_bad_shard_indexes(checkpoints, tmp_path):
    rng = rng_for("index")
    cases = []
    for i in range(CASES["index"] * SCALE):
        kind = rng.choice(["ours-sharded", "hf-llama-sharded"])
        index = json.loads((checkpoints[kind] / storage.INDEX_FILE).read_text())
        label, raw, plant = corrupt_index(index, checkpoints[kind], rng)

        def attempt(kind=kind, index=index, raw=raw, plant=plant):
            target = fresh_copy(checkpoints[kind], tmp_path)
            (target / storage.INDEX_FILE).write_bytes(raw if raw is not None else json.dumps(index).encode())
            if plant == "symlink":
                outside = tmp_path / "outside"
                outside.mkdir(exist_ok=True)
                shutil.copy(sorted(target.glob("model-*.safetensors"))[0], outside / "x.safetensors")
                (target / "linked.safetensors").symlink_to(outside / "x.safetensors")
            elif plant == "fifo":
                os.mkfifo(target / "special.safetensors")
            elif plant == "directory":
                (target / "special.safetensors").mkdir()
            return from_pretrained(target)

        cases.append((f"{kind}: {label}", attempt, runs))
    run_cases("index", cases)


# ---------------------------------------------------------------------------------------------
# config.json of every family


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    """Per built-in family: transformers' config (the family test's tiny one) beside the tensors
    of the model it describes (written by our export, which the parity tests check)."""
    root = tmp_path_factory.mktemp("families")
    made = {}
    for plugin in BUILTIN_FAMILIES:
        config = importlib.import_module(f"tests.plugins.test_{plugin}").config().to_dict()
        family = family_for_model_type(config["model_type"])
        architectures = {head: arch for arch, head in family.hf_architectures.items()}
        architecture = architectures.get("causal_lm") or next(iter(family.hf_architectures))
        config["architectures"] = [architecture]
        spec = {**family.spec_from_hf_config(config, architecture), "name": plugin, "family": family.name}
        directory = build_model(spec, seed=0).save_pretrained(root / plugin, format="hf")
        (directory / "config.json").write_text(json.dumps(config))
        made[plugin] = directory
    return made


CONFIG_VALUES = [None, True, False, 0, -1, 1, 3, 10**12, 2**63, 10**30, -(10**30), 0.5, 1.5, float("inf"),
                 float("-inf"), float("nan"), "", "x", "silu", [], [1], [None], {}, {"a": 1}, {"rope_type": "yarn"}]


def corrupt_config(config: dict, read: list[str], rng: random.Random) -> tuple[str, bytes]:
    """``read``: the keys the family reads (most mutations pick from them)."""
    keys = read if read and rng.random() < 0.8 else sorted(config)
    kind = rng.choice(["delete", "delete", "set", "set", "set", "nested", "whole", "bytes"])
    if kind == "delete":
        gone = rng.sample(keys, rng.randint(1, 3))
        for key in gone:
            config.pop(key, None)
        return f"without {gone}", json.dumps(config).encode()
    if kind == "set":
        changes = {key: rng.choice(CONFIG_VALUES) for key in rng.sample(keys, min(len(keys), rng.randint(1, 2)))}
        config.update(changes)
        return f"{changes}", json.dumps(config).encode()
    if kind == "nested":
        nested = [k for k in sorted(config) if isinstance(config[k], dict) and config[k]] or keys
        key = rng.choice(nested)
        if isinstance(config.get(key), dict) and config[key]:
            inner = rng.choice(sorted(config[key]))
            config[key][inner] = rng.choice(CONFIG_VALUES)
            return f"{key}.{inner} = {config[key][inner]!r}", json.dumps(config).encode()
        config[key] = {"nested": rng.choice(CONFIG_VALUES)}
        return f"{key} = {config[key]!r}", json.dumps(config).encode()
    if kind == "whole":
        value = rng.choice([None, [], [config], "config", 5])
        return f"config.json = {value!r:.30}", json.dumps(value).encode()
    text = json.dumps(config).encode()
    cut = rng.randrange(len(text))
    return rng.choice([(f"truncated at {cut}", text[:cut]), ("a byte not UTF-8", text[:cut] + b"\xc3(" + text[cut:]),
                       ("a 5,000-digit number", text[:-1] + b', "big": ' + b"9" * 5000 + b"}"),
                       ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000)])


def test_bad_config_values_of_every_family(family_checkpoints, tmp_path):
    rng = rng_for("config.json")
    cases = []
    plugins = sorted(family_checkpoints)
    for i in range(CASES["config.json"] * SCALE):
        plugin = plugins[i % len(plugins)]
        config = json.loads((family_checkpoints[plugin] / "config.json").read_text())
        family = family_for_model_type(config["model_type"])
        read = sorted({key for keys in family.hf_config_keys.values() for key in keys})
        label, raw = corrupt_config(config, read, rng)

        def attempt(plugin=plugin, raw=raw):
            target = fresh_copy(family_checkpoints[plugin], tmp_path)
            (target / "config.json").write_bytes(raw)
            return from_pretrained(target)

        cases.append((f"{plugin}: {label}", attempt, runs))
    run_cases("config.json", cases)


def test_every_family_loads_its_uncorrupted_checkpoint(family_checkpoints):
    for plugin, directory in family_checkpoints.items():
        runs(from_pretrained(directory))


# ---------------------------------------------------------------------------------------------
# spec.yaml of our format


def corrupt_spec(spec: dict, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["set", "set", "delete", "section", "bytes"])
    if kind == "set":
        key = rng.choice(sorted(spec))
        spec[key] = rng.choice(CONFIG_VALUES)
        return f"{key} = {spec[key]!r}", yaml.safe_dump(spec).encode()
    if kind == "delete":
        key = rng.choice(sorted(spec))
        del spec[key]
        return f"without {key}", yaml.safe_dump(spec).encode()
    if kind == "section":
        section = rng.choice([k for k in sorted(spec) if isinstance(spec[k], dict)])
        field = rng.choice(sorted(spec[section]))
        spec[section][field] = rng.choice(CONFIG_VALUES)
        return f"{section}.{field} = {spec[section][field]!r}", yaml.safe_dump(spec).encode()
    return rng.choice([("not UTF-8", b"name: \xff\n"), ("not YAML", b"name: [unclosed\n"), ("a list", b"- 1\n"),
                       ("empty", b""), ("num_layers: 10**12", yaml.safe_dump({**spec, "num_layers": 10**12}).encode())])


def test_broken_spec_files(checkpoints, tmp_path):
    rng = rng_for("spec.yaml")
    cases = []
    for i in range(CASES["spec.yaml"] * SCALE):
        spec = yaml.safe_load((checkpoints["ours"] / "spec.yaml").read_text())
        label, raw = corrupt_spec(spec, rng)

        def attempt(raw=raw):
            target = fresh_copy(checkpoints["ours"], tmp_path)
            (target / "spec.yaml").write_bytes(raw)
            return from_pretrained(target), target

        cases.append((label, attempt, lambda result: holds_the_files(result[1])(result[0])))
    run_cases("spec.yaml", cases)


# ---------------------------------------------------------------------------------------------
# arguments


PATHS = [None, 5, b"bytes", [], "", "/no/such/dir"]
#: Good values first: each case draws one argument from the whole list, the others from the good ones.
LOAD_ARGUMENTS = {
    "dtype": ([None, torch.float16, "float16", "torch.bfloat16", "float64"],
              [torch.int8, torch.bool, torch.float8_e4m3fn, "int8", "fp16", "auto", 16, float]),
    "device": ([None, "cpu", torch.device("cpu"), "cpu:0"], ["bogus", "cuda:99", "meta", -1, 0.5, True, "mps"]),
    "progress": ([None, True, False], ["yes", 1]),
}


def cast_to(dtype) -> torch.dtype:
    return LOAD_DTYPES_BY_NAME[dtype.removeprefix("torch.")] if isinstance(dtype, str) else dtype or torch.float32


def test_bad_from_pretrained_arguments(checkpoints, tmp_path, capsys):
    rng = rng_for("from_pretrained arguments")
    reference = from_pretrained(checkpoints["ours"])
    cases = []
    for i in range(CASES["from_pretrained arguments"] * SCALE):
        bad = rng.choice([*LOAD_ARGUMENTS, "path"])
        kwargs = {name: rng.choice(good + wrong if name == bad else good)
                  for name, (good, wrong) in LOAD_ARGUMENTS.items()}
        path = rng.choice(PATHS) if bad == "path" else checkpoints["ours"]

        def verify(model, kwargs=kwargs):
            dtype = cast_to(kwargs["dtype"])
            assert {p.dtype for p in model.parameters()} == {dtype}
            with torch.no_grad():
                assert torch.equal(model(IDS).logits, copy.deepcopy(reference).to(dtype)(IDS).logits)

        cases.append((f"path={path!r}, {kwargs}", lambda path=path, kwargs=kwargs: from_pretrained(path, **kwargs),
                      verify))
    run_cases("from_pretrained arguments", cases)
    capsys.readouterr()  # progress lines


SAVE_PATHS = ["ok", "ok", "ok", None, 5, b"bytes", "file/below", "file", "/"]
FORMATS = ["archcomposer", "hf", "gguf", None, 5]
SHARD_SIZES = ["5GB", "40KB", 30_000, None, 1e6, float("inf"), -1, 0, True, "lots", "1.5MB", "9" * 400 + "GB", [1]]
HEADS = [None, None, "causal_lm", "question_answering", 5]


def test_bad_save_pretrained_arguments(tmp_path):
    rng = rng_for("save_pretrained arguments")
    model = build_model("tiny-glm-4", seed=0)
    (tmp_path / "file").write_text("")
    cases = []
    for i in range(CASES["save_pretrained arguments"] * SCALE):
        path = rng.choice(SAVE_PATHS)
        path = tmp_path / f"out{i}" if path == "ok" else tmp_path / path if path in ("file", "file/below") else path
        kwargs = {"format": rng.choice(FORMATS), "max_shard_size": rng.choice(SHARD_SIZES), "head": rng.choice(HEADS)}

        def verify(out):
            with torch.no_grad():
                assert torch.equal(from_pretrained(out)(IDS).logits, model(IDS).logits)

        cases.append((f"path={path!r}, {kwargs}",
                      lambda path=path, kwargs=kwargs: model.save_pretrained(path, **kwargs), verify))
    run_cases("save_pretrained arguments", cases)
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------------------------------------
# killed saves


#: The filesystem operations a save makes (``os`` functions, safetensors' writer, the exchange).
OPERATIONS = [(os, name) for name in ("mkdir", "chmod", "link", "fsync", "rename", "unlink", "rmdir")] + \
             [(storage, "save_file"), (storage, "_renameat2")]
KILL_SHARD_SIZE = "200KB"  # tiny-glm-4 in 3 shards and an index


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def save_in_child(model, target: Path, *, kill_before: int | None = None, exchange: bool = True,
                  times: int | None = 1) -> tuple[int, int]:
    """Fork a child that saves ``model`` to ``target`` ``times`` times (None: until killed) and,
    with ``kill_before=k``, SIGKILLs itself just before its k-th filesystem operation, after
    writing that operation's name to the returned pipe. Returns (pid, pipe)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            if not exchange:
                storage._renameat2 = None
            calls = [0]
            for module, name in OPERATIONS:
                original = getattr(module, name)
                if original is None:
                    continue

                def counted(*args, _original=original, _name=name, **kwargs):
                    calls[0] += 1
                    if calls[0] == kill_before:
                        os.write(write, f"{_name} {' '.join(os.path.basename(str(a)) for a in args[:2])}".encode())
                        os.kill(os.getpid(), signal.SIGKILL)
                    return _original(*args, **kwargs)

                setattr(module, name, counted)
            done = 0
            while times is None or done < times:
                model.save_pretrained(target, max_shard_size=KILL_SHARD_SIZE)
                done += 1
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def wait_for(pid: int, read: int, timeout: float = 120.0) -> tuple[bool, str]:
    """(killed, the operation it was killed before)."""
    deadline = time.monotonic() + timeout
    while not (ended := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:  # a save that hangs fails the test rather than hanging the suite
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the save in child {pid} did not end within {timeout} s")
        time.sleep(0.005)
    status = ended[1]
    with os.fdopen(read, "rb") as pipe:
        operation = pipe.read().decode()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, f"the save failed (exit status {status})"
    return killed, operation


def loads_as_one_of(target: Path, models: dict[str, torch.Tensor]) -> str:
    found = logits_of(from_pretrained(target))
    matches = [name for name, expected in models.items() if torch.equal(found, expected)]
    assert matches, f"{target} loads as neither {list(models)}"
    return matches[0]


def only_the_checkpoint_is_left(target: Path) -> None:
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.fixture
def no_fsync(monkeypatch):
    """fsync makes a save survive a power cut; a killed process's writes are already the kernel's,
    so these tests skip its cost (the children still count each call as a moment to die at)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_save_killed_before_any_operation_leaves_a_complete_checkpoint(tmp_path, exchange, no_fsync):
    """Kill the save before its 1st, 2nd, ... filesystem operation until one completes: each time
    the target loads as the old or the new model, and the next save cleans up what was left."""
    if exchange and storage._renameat2 is None:
        pytest.skip("no renameat2 in this C library")
    old, new = build_model("tiny-glm-4", seed=0), build_model("tiny-glm-4", seed=1)
    expected = {"old": logits_of(old), "new": logits_of(new)}
    template = old.save_pretrained(tmp_path / "template" / "ckpt", max_shard_size=KILL_SHARD_SIZE)
    (template / "README.md").write_text("a model card")  # kept by every save
    target = tmp_path / "parent" / "ckpt"
    seen: dict[str, list[str]] = {"old": [], "new": []}
    between_renames = 0
    for step in range(1, 200):
        shutil.rmtree(target.parent, ignore_errors=True)
        shutil.copytree(template.parent, target.parent)
        killed, operation = wait_for(*save_in_child(new, target, kill_before=step, exchange=exchange))
        if not killed:
            break
        if not target.exists():  # only between the two renames, only without the exchange
            assert not exchange and operation.startswith("rename .ckpt.saving-"), operation
            between_renames += 1
        which = loads_as_one_of(target, expected)
        seen[which].append(operation)
        assert (target / "README.md").read_text() == "a model card"
        new.save_pretrained(target, max_shard_size=KILL_SHARD_SIZE)  # cleans every leftover
        only_the_checkpoint_is_left(target)
    else:
        raise AssertionError("the save never completed")
    OUTCOMES.setdefault("kill points", Counter())[f"{'exchange' if exchange else 'two renames'}"] += step - 1
    assert seen["old"] and seen["new"], seen  # killed both before and after the swap
    assert between_renames == (0 if exchange else 1)
    assert seen["old"][-1].startswith("_renameat2" if exchange else "rename ckpt")  # the last kill before the swap


def test_saves_killed_at_random_moments(tmp_path, no_fsync):
    """A child saves two models in turn, over and over, and is killed after a random delay; the
    next child starts from whatever that left. The target always loads as one of the two."""
    rng = rng_for("random kills")
    a, b = build_model("tiny-glm-4", seed=0), build_model("tiny-glm-4", seed=1)
    expected = {"a": logits_of(a), "b": logits_of(b)}
    target = a.save_pretrained(tmp_path / "ckpt", max_shard_size=KILL_SHARD_SIZE)
    kills = 12 * SCALE
    for i in range(kills):
        pid, read = save_in_child(a if i % 2 else b, target, times=None, exchange=i % 4 < 2)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        wait_for(pid, read)
        loads_as_one_of(target, expected)
    OUTCOMES.setdefault("kill points", Counter())["random moments"] += kills
    b.save_pretrained(target)
    only_the_checkpoint_is_left(target)
    assert loads_as_one_of(target, expected) == "b"


def test_two_saves_at_once_never_touch_each_others_temporary_directory(tmp_path, no_fsync):
    """Each cleans leftovers at its start; the other's directory, held with flock, is not one."""
    a, b = build_model("tiny-glm-4", seed=0), build_model("tiny-glm-4", seed=1)
    expected = {"a": logits_of(a), "b": logits_of(b)}
    target = a.save_pretrained(tmp_path / "ckpt", max_shard_size=KILL_SHARD_SIZE)
    children = [save_in_child(model, target, exchange=exchange, times=4) for model, exchange in ((a, True), (b, False))]
    for pid, read in children:
        killed, _ = wait_for(pid, read)
        assert not killed  # each save completed
    loads_as_one_of(target, expected)
    only_the_checkpoint_is_left(target)
