"""Checkpoints: our format round trip, sharding, atomic saves, refusing pickles, the one error
that lists every missing/unexpected/mis-shaped tensor, and export errors. Parity with
transformers per family lives in tests/plugins/."""

import errno
import fcntl
import json
import os
import pickle
import re
import shutil
from itertools import chain

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import archcomposer.storage as storage
from archcomposer import CheckpointError, build_model, from_pretrained

TINY = ["tiny-bloom", "tiny-glm-4", "tiny-seed-oss", "tiny-cpm-ant"]
IDS = torch.tensor([[5, 17, 42, 8, 99, 3]])



def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", TINY)
def test_own_format_round_trip_is_exact(tmp_path, name):
    model = build_model(name, seed=0)
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(out)) == ["model.safetensors", "spec.yaml"]
    loaded = from_pretrained(out)
    assert loaded.spec == model.spec
    assert not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    # built on the meta device, every parameter and buffer is real once loaded
    assert all(t.device.type == "cpu" for t in chain(loaded.parameters(), loaded.buffers()))
    if model.spec.embedding.tied:
        assert loaded.heads.causal_lm.proj.weight is loaded.embedding.tokens.weight
        assert "heads.causal_lm.proj.weight" not in load_file(out / "model.safetensors")


def test_several_heads_and_dtype(tmp_path):
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec["heads"] = [{"kind": "causal_lm"}, {"kind": "token_classification", "num_labels": 5}]
    model = build_model(spec, seed=0)
    loaded = from_pretrained(model.save_pretrained(tmp_path / "ckpt"), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        mine = loaded(IDS, head="token_classification").logits.float()
        theirs = model.to(torch.bfloat16)(IDS, head="token_classification").logits.float()
    assert torch.equal(mine, theirs)


def test_sharding_with_a_small_threshold(tmp_path):
    model = build_model("tiny-seed-oss", seed=0)
    out = model.save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    for shard in shards:  # a tensor larger than the threshold gets a shard of its own
        sizes = [t.numel() * 4 for t in load_file(out / shard).values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1
    assert torch.equal(logits(from_pretrained(out)), logits(model))


def test_sharded_hf_export_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = build_model("tiny-glm-4", seed=0)
    out = model.save_pretrained(tmp_path / "hf", format="hf", max_shard_size=30_000)
    assert (out / "model.safetensors.index.json").exists()
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (reference(IDS).logits - logits(model)).abs().max() <= 1e-5
    assert torch.equal(logits(from_pretrained(out)), logits(model))


# ---------------------------------------------------------------------------------------------
# atomic saves


def failing_save_file(after: int, error=None):
    """``save_file`` that fails as a full disk does from its ``after + 1``-th call on."""
    calls = {"n": 0}

    def save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > after:
            raise error or OSError(errno.ENOSPC, "No space left on device", filename)
        save_file(tensors, filename, metadata=metadata)

    return save


def test_interrupted_save_leaves_no_directory(tmp_path, monkeypatch):
    model = build_model("tiny-glm-4", seed=0)
    monkeypatch.setattr(storage, "save_file", failing_save_file(after=1))
    with pytest.raises(CheckpointError, match=r"saving .*ckpt failed \(\[Errno 28\] No space left on device: "
                                              r"'.*\.ckpt\.saving-[0-9a-f]{8}/model-00002-of-\d+\.safetensors'\); "
                                              r"nothing was written there"):
        model.save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    assert os.listdir(tmp_path) == []


# safetensors reports a failed write as its own error type, not as an OSError
SAFETENSORS_FULL = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("error", [None, SAFETENSORS_FULL], ids=["oserror", "safetensors-error"])
def test_interrupted_save_keeps_the_existing_checkpoint(tmp_path, monkeypatch, error):
    old = build_model("tiny-glm-4", seed=0)
    target = old.save_pretrained(tmp_path / "ckpt")
    (target / "README.md").write_text("a model card")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    new = build_model("tiny-glm-4", seed=1)
    monkeypatch.setattr(storage, "save_file", failing_save_file(after=2, error=error))
    with pytest.raises(CheckpointError, match=r"No space left on device.*; the checkpoint there is unchanged"):
        new.save_pretrained(target, max_shard_size="40KB")
    assert os.listdir(tmp_path) == ["ckpt"]  # no temporary directory left beside it
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert torch.equal(logits(from_pretrained(target)), logits(old))


def test_overwrite_replaces_the_checkpoint_and_keeps_other_files(tmp_path):
    target = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    (target / "README.md").write_text("a model card")
    new = build_model("tiny-glm-4", seed=1)
    new.save_pretrained(target)
    assert sorted(os.listdir(target)) == ["README.md", "model.safetensors", "spec.yaml"]  # old shards gone
    assert os.listdir(tmp_path) == ["ckpt"]
    assert torch.equal(logits(from_pretrained(target)), logits(new))


# ---------------------------------------------------------------------------------------------
# refusing pickles


class Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path):
    Exploit.marker = tmp_path / "executed"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "glm", "architectures": ["GlmForCausalLM"],
                                                "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64,
                                                "num_attention_heads": 4, "vocab_size": 64}))
    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
    for path in (hf, hf / "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match=r"(?s)pytorch_model.bin is a pickle checkpoint.*only safetensors.*"
                                                  r"execute arbitrary code.*save_file"):
            from_pretrained(path)
    assert not Exploit.marker.exists()


# ---------------------------------------------------------------------------------------------
# one error listing every mismatch


def test_missing_unexpected_and_misshaped_are_listed_together(tmp_path):
    out = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    tensors = load_file(out / "model.safetensors")
    del tensors["layers.1.mlp.down.weight"], tensors["final_norm.weight"]
    tensors["layers.0.attn_norm.weight"] = torch.ones(65)
    tensors["layers.0.attention.qkv.q.bias"] = torch.ones(3, 64)
    tensors["extra.weight"] = torch.ones(2)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        from_pretrained(out)
    message = str(info.value)
    assert "missing (2):" in message and "layers.1.mlp.down.weight" in message and "final_norm.weight" in message
    assert "unexpected (1):\n    extra.weight" in message
    assert "mis-shaped (2):" in message
    assert "layers.0.attn_norm.weight [65]: the model expects [64]" in message
    assert "layers.0.attention.qkv.q.bias [3, 64]: the model expects [64]" in message


def test_hf_mismatch_names_their_tensors_and_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BloomConfig(vocab_size=64, hidden_size=40, n_layer=1, n_head=5)
    transformers.BloomForCausalLM(config).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.h.0.self_attention.query_key_value.weight"] = torch.ones(121, 40)
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    message = str(info.value)
    assert "Hugging Face BloomForCausalLM checkpoint" in message
    assert "transformer.ln_f.bias (for final_norm.bias)" in message
    assert ("transformer.h.0.self_attention.query_key_value.weight [121, 40] -> layers.0.attention.qkv.proj.weight: "
            "the model expects [120, 40]") in message


def test_unknown_model_type_and_architecture(tmp_path):
    save_file({"x": torch.ones(1)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model", "architectures": ["NoSuch"]}))
    with pytest.raises(CheckpointError, match=r"no registered family reads Hugging Face model_type 'no_such_model'; "
                                              r"known model types: bloom, cohere, cpmant, .*falcon, .*gpt2, .*gpt_neox, .*mpt, "
                                              r"olmo, olmo2, .*seed_oss"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm", "architectures": ["GlmForMagic"]}))
    with pytest.raises(CheckpointError, match=r"architectures \['GlmForMagic'\] names none that family 'glm-4'"):
        from_pretrained(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        from_pretrained(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither spec.yaml"):
        from_pretrained(tmp_path)


def test_progress_line(tmp_path, capsys, monkeypatch):
    original_advance = storage.Progress.advance
    model = build_model("tiny-glm-4", seed=0)
    out = model.save_pretrained(tmp_path / "ckpt")
    assert capsys.readouterr().err == ""  # small saves are quiet
    from_pretrained(out, progress=True)
    assert "loading ckpt: 100%" in capsys.readouterr().err
    from_pretrained(out)  # small loads are quiet
    assert capsys.readouterr().err == ""
    advances = []
    monkeypatch.setattr(storage.Progress, "advance", lambda self, nbytes: advances.append(nbytes) or
                        original_advance(self, nbytes))
    out = model.save_pretrained(tmp_path / "hf", format="hf", max_shard_size="40KB", progress=True)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and len(advances) == len(shards)  # one step per file safetensors writes
    assert advances == [sum(t.numel() * t.element_size() for t in load_file(f).values()) for f in shards]
    assert capsys.readouterr().err.endswith("saving hf: 100% (0.00/0.00 GiB)\n")


# ---------------------------------------------------------------------------------------------
# export choices and errors


def test_export_of_several_heads_needs_a_choice(tmp_path):
    spec = build_model("tiny-seed-oss", device="meta").spec.to_dict()
    spec["heads"] = [{"kind": "causal_lm"}, {"kind": "question_answering"}]
    model = build_model(spec, seed=0)
    with pytest.raises(CheckpointError, match=r"one head; spec 'tiny-seed-oss' has \['causal_lm', "
                                              r"'question_answering'\]: pass head="):
        model.save_pretrained(tmp_path / "hf", format="hf")
    out = model.save_pretrained(tmp_path / "hf", format="hf", head="question_answering")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SeedOssForQuestionAnswering"]
    loaded = from_pretrained(out)
    assert [h.kind for h in loaded.spec.heads] == ["question_answering"]
    with torch.no_grad():
        assert torch.equal(loaded(IDS).start_logits, model(IDS, head="question_answering").start_logits)


def test_spec_without_family_exports_through_a_family_that_expresses_it(tmp_path):
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec["family"] = None
    out = build_model(spec, seed=0).save_pretrained(tmp_path / "hf", format="hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"


def test_spec_no_family_expresses_exports_for_trust_remote_code(tmp_path):
    """Written without transformers; tests/composer/test_hf.py loads it with transformers."""
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec.update(family=None, position={"kind": "none"},
                heads=[{"kind": "causal_lm"}, {"kind": "token_classification", "num_labels": 3}])
    model = build_model(spec, seed=0)
    with pytest.raises(CheckpointError, match="pass head="):
        model.save_pretrained(tmp_path / "hf", format="hf")
    out = model.save_pretrained(tmp_path / "hf", format="hf", head="token_classification")
    assert sorted(os.listdir(out)) == ["config.json", "configuration_archcomposer.py", "model.safetensors",
                                       "modeling_archcomposer.py"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "archcomposer"
    assert config["architectures"] == ["ArchComposerForTokenClassification"] and len(config["id2label"]) == 3
    assert config["auto_map"]["AutoConfig"] == "configuration_archcomposer.ArchComposerConfig"
    assert "from archcomposer.hf import" in (out / "modeling_archcomposer.py").read_text()
    assert config["spec"]["position"] == {"kind": "none"} and config["vocab_size"] == 256
    assert all(name.startswith("model.") and ".causal_lm." not in name for name in load_file(out / "model.safetensors"))
    loaded = from_pretrained(out)
    assert [h.kind for h in loaded.spec.heads] == ["token_classification"]
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS, head="token_classification").logits)


def test_spec_of_a_family_that_cannot_express_it_is_refused(tmp_path):
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec["position"] = {"kind": "none"}
    with pytest.raises(CheckpointError, match=r"spec 'tiny-glm-4' \(family glm-4\) cannot be exported to Hugging Face: "
                                              r"position.kind = 'none' .*\(left without a family, a spec that no "
                                              r"family expresses exports for transformers' trust_remote_code"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


TABLE_MESSAGE = r"norm.eps \(layers 1\) = 0.001 has no equivalent in Hugging Face {}\b"


@pytest.mark.parametrize(("name", "message"), [
    ("tiny-bloom", TABLE_MESSAGE.format("BLOOM")), ("tiny-glm-4", TABLE_MESSAGE.format("GLM")),
    ("tiny-seed-oss", TABLE_MESSAGE.format("Seed-OSS")),
    ("tiny-cpm-ant", r"layers: per-layer differences have no equivalent in Hugging Face CPM-Ant\b")])
def test_export_of_per_layer_differences_is_refused_naming_the_field(tmp_path, name, message):
    """No Hugging Face family here has per-layer differences: even one that changes no tensor
    shape (a norm eps) is refused, rather than exported as if every layer were the first."""
    spec = build_model(name, device="meta").spec.to_dict()
    spec["layers"] = [{"indices": [1], "norm": {"eps": 1e-3}}]
    model = build_model(spec, seed=0)
    assert model.spec.layer_specs[1].norm.eps == 1e-3
    with pytest.raises(CheckpointError, match=message):
        model.save_pretrained(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()
    loaded = from_pretrained(model.save_pretrained(tmp_path / "ours"))  # our format keeps them
    assert loaded.spec.layer_specs[1].norm.eps == 1e-3


@pytest.mark.parametrize(("name", "family"), [("tiny-bloom", "BLOOM"), ("tiny-glm-4", "GLM"),
                                              ("tiny-seed-oss", "Seed-OSS"), ("tiny-cpm-ant", "CPM-Ant")])
def test_export_of_a_sliding_window_is_refused_naming_the_field(tmp_path, name, family):
    """These families attend to every earlier token: a window would be silently dropped."""
    spec = build_model(name, device="meta").spec.to_dict()
    spec["attention"]["sliding_window"] = 4
    with pytest.raises(CheckpointError, match=rf"attention.sliding_window = 4 has no equivalent in Hugging Face "
                                              rf"{family}(, which needs|: its config.json reads back as) None"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


def test_bad_arguments(tmp_path):
    model = build_model("tiny-glm-4", seed=0)
    with pytest.raises(CheckpointError, match=r"format='gguf': expected one of \('archcomposer', 'hf'\)"):
        model.save_pretrained(tmp_path / "x", format="gguf")
    with pytest.raises(CheckpointError, match="max_shard_size='lots'"):
        model.save_pretrained(tmp_path / "x", max_shard_size="lots")
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        model.save_pretrained(tmp_path / "file")


def test_a_checkpoint_directory_stands_for_its_spec(tmp_path):
    from archcomposer import load_spec

    model = build_model("tiny-glm-4", seed=0)
    ours = model.save_pretrained(tmp_path / "ours")
    hf = model.save_pretrained(tmp_path / "hf", format="hf")
    assert load_spec(ours) == model.spec
    assert load_spec(hf).to_dict() | {"name": "tiny-glm-4"} == model.spec.to_dict()
    assert build_model(str(ours), device="meta").num_parameters() == model.num_parameters()
    with pytest.raises(CheckpointError, match="no such checkpoint directory|not a checkpoint directory"):
        load_spec(tmp_path)


# ---------------------------------------------------------------------------------------------
# malformed checkpoints: one clear error per kind of input (tests/composer/test_checkpoint_fuzz.py
# throws thousands of corruptions at the same doors)


def test_tensors_of_a_wrong_dtype_are_listed_with_the_rest(tmp_path):
    out = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    tensors = load_file(out / "model.safetensors")
    tensors["final_norm.weight"] = tensors["final_norm.weight"].to(torch.int32)
    tensors["layers.0.attn_norm.weight"] = tensors["layers.0.attn_norm.weight"].bool()
    tensors["layers.1.attn_norm.weight"] = tensors["layers.1.attn_norm.weight"].to(torch.float8_e4m3fn)
    del tensors["layers.1.mlp_norm.weight"]
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        from_pretrained(out)
    assert str(info.value).endswith(
        "  missing (1):\n    layers.1.mlp_norm.weight\n"
        "  wrong dtype (3):\n"
        "    layers.0.attn_norm.weight BOOL: the model expects a floating-point tensor (F16, BF16, F32 or F64)\n"
        "    layers.1.attn_norm.weight F8_E4M3: the model expects a floating-point tensor (F16, BF16, F32 or F64)\n"
        "    final_norm.weight I32: the model expects a floating-point tensor (F16, BF16, F32 or F64)")


def test_weights_stored_in_several_float_dtypes_load_in_the_one_most_use(tmp_path):
    """A model computes in one dtype: as transformers casts to one, so does a load without dtype=."""
    model = build_model("tiny-glm-4", seed=0)
    out = model.save_pretrained(tmp_path / "ckpt")
    tensors = load_file(out / "model.safetensors")
    tensors["final_norm.weight"] = tensors["final_norm.weight"].double()
    save_file(tensors, out / "model.safetensors")
    loaded = from_pretrained(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize(("index", "message"), [
    ({"weight_map": ["a", "b"]}, r"weight_map is a JSON array; expected an object mapping tensor names to shard file "
                                 r"names"),
    ({"weight_map": {"final_norm.weight": 3}}, r"weight_map maps 1 tensor\(s\) to something other than a shard file "
                                               r"name \(a string\): 'final_norm.weight': 3"),
    ({"metadata": {}}, r"no weight_map; expected a safetensors index: a JSON object whose weight_map maps tensor "
                       r"names to shard file names"),
    (None, r"a JSON null; expected a safetensors index"),
    ({"weight_map": {"final_norm.weight": "../other/model-00001-of-00002.safetensors"}},
     r"weight_map names shard\(s\) '../other/model-00001-of-00002.safetensors', which are not files of the "
     r"checkpoint directory; a shard is named by its file name alone"),
    ({"weight_map": {"final_norm.weight": "/etc/passwd"}}, r"weight_map names shard\(s\) '/etc/passwd', which are "
                                                            r"not files of the checkpoint directory"),
    ({"weight_map": {"final_norm.weight": "sub/x.safetensors"}}, r"weight_map names shard\(s\) 'sub/x.safetensors', "
                                                                  r"which are not files"),
], ids=["list", "not-a-string", "no-weight-map", "null", "parent", "absolute", "subdirectory"])
def test_malformed_shard_index(tmp_path, index, message):
    out = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt", max_shard_size="200KB")
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json: {message}"):
        from_pretrained(out)


def test_a_shard_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path):
    out = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt", max_shard_size="200KB")
    shard = out / "model-00001-of-00003.safetensors"
    shard.unlink()
    os.mkfifo(shard)  # reading it would block forever
    with pytest.raises(CheckpointError, match="names shard 'model-00001-of-00003.safetensors', which is not a regular "
                                              "file"):
        from_pretrained(out)


def llama_checkpoint(directory, **overrides):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    data = json.loads((directory / "config.json").read_text())
    for key, value in overrides.items():
        if value is DELETE:
            del data[key]
        else:
            data[key] = value
    (directory / "config.json").write_text(json.dumps(data))
    return directory


DELETE = object()


@pytest.mark.parametrize(("content", "message"), [
    (b"null", r"config.json: a JSON null; expected a JSON object of Hugging Face model settings"),
    (b"[1, 2]", r"config.json: a JSON array; expected a JSON object"),
    (b'{"model_type": "llama\xff"}', r"config.json: not UTF-8 text \(byte 21 is b'\\xff'\); expected a JSON object"),
    (b'{"model_type": "llama",', r"config.json: not valid JSON \(Expecting property name enclosed in double quotes: "
                                 r"line 1 column 24 \(char 23\)\)"),
], ids=["null", "list", "not-utf-8", "truncated"])
def test_config_json_that_is_not_a_json_object(tmp_path, content, message):
    directory = llama_checkpoint(tmp_path)
    (directory / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(directory)


def test_size_keys_a_config_lacks_are_named_together(tmp_path):
    """transformers fills a missing key with its default, so does the family; when the tensors then
    do not match, the error says which keys were missing and the values used."""
    directory = llama_checkpoint(tmp_path, hidden_size=DELETE, intermediate_size=DELETE)
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped \(21\):.*\n  .*config.json has no hidden_size, "
                                              r"intermediate_size: the family used transformers' defaults "
                                              r"\(hidden_size = 4096, intermediate_size = 11008\)$"):
        from_pretrained(directory)


def test_a_layer_count_the_checkpoint_cannot_hold_is_refused_before_anything_is_built(tmp_path):
    """A family's code makes lists per layer before the spec is validated (10**12 layers hung), and
    building 4,000 layers on the meta device takes minutes: both are refused first."""
    directory = llama_checkpoint(tmp_path / "huge", num_hidden_layers=10**12)
    with pytest.raises(CheckpointError, match=r"config.json: num_hidden_layers = 1000000000000: more layers than a "
                                              r"spec accepts \(4096\)"):
        from_pretrained(directory)
    directory = llama_checkpoint(tmp_path / "deep", num_hidden_layers=4000)
    with pytest.raises(CheckpointError, match=r"config.json: as family 'llama' reads it: the checkpoint cannot hold "
                                              r"4000 layers \(it has 21 tensors, and each layer has several of its "
                                              r"own\)"):
        from_pretrained(directory)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_attention_heads": "four"}, r"invalid spec: invalid spec \(1 error\(s\)\):\n  attention.num_heads "
                                      r"\(config.json num_attention_heads\): Input should be a valid integer"),
    ({"rope_parameters": [1]}, r"config.json: family 'llama' cannot read it \(TypeError: .*\) \(reading "
                               r"rope_parameters = \[1\]\)"),
    ({"hidden_size": 10**30}, r"invalid spec: hidden_size \(config.json hidden_size\): 1,000,000,000,000,000,000,000,"
                              r"000,000,000 does not fit in 64 bits"),
    ({"model_type": ["llama"]}, r"config.json: model_type = \['llama'\]; expected a model type name such as 'llama'"),
    ({"architectures": "LlamaForCausalLM"}, r"architectures = 'LlamaForCausalLM'; expected a list of architecture "
                                            r"names such as \['LlamaForCausalLM'\]"),
], ids=["string-heads", "rope-list", "huge-width", "model-type-list", "architectures-string"])
def test_config_values_of_a_wrong_type_name_their_key(tmp_path, overrides, message):
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(llama_checkpoint(tmp_path, **overrides))


def test_dtype_and_device_arguments(tmp_path):
    model = build_model("tiny-glm-4", seed=0)
    out = model.save_pretrained(tmp_path / "ckpt")
    for name in ("float16", "torch.float16"):  # as transformers takes them
        assert {p.dtype for p in from_pretrained(out, dtype=name).parameters()} == {torch.float16}
    with pytest.raises(CheckpointError, match=r"dtype=torch.int8: expected the floating-point dtype to cast weights "
                                              r"to, torch.float16, torch.bfloat16, torch.float32 or torch.float64 "
                                              r"\(or its name, e.g. 'bfloat16'\), or None to keep the stored dtypes"):
        from_pretrained(out, dtype=torch.int8)
    with pytest.raises(CheckpointError, match=r"dtype='fp16': expected the floating-point dtype"):
        from_pretrained(out, dtype="fp16")
    with pytest.raises(CheckpointError, match=r"device='bogus': not a torch device \(.*\); expected a torch device "
                                              r"such as 'cpu', 'cuda' or 'cuda:1'"):
        from_pretrained(out, device="bogus")
    unavailable = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(CheckpointError, match=rf"device='{unavailable}': this process cannot put tensors there "
                                              rf"\(.+\); device='cpu' always can"):
        from_pretrained(out, device=unavailable)
    with pytest.raises(CheckpointError, match=r"device='meta' holds no data, so nothing would be loaded"):
        from_pretrained(out, device="meta")
    with pytest.raises(CheckpointError, match=r"path=None: expected a checkpoint directory \(a str or os.PathLike\)"):
        from_pretrained(None)


# ---------------------------------------------------------------------------------------------
# safe saves (tests/composer/test_checkpoint_fuzz.py kills saves at every step)


def test_saving_through_a_symlink_replaces_its_target(tmp_path):
    real = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "real")
    (real / "README.md").write_text("a model card")
    (tmp_path / "link").symlink_to("real")
    new = build_model("tiny-glm-4", seed=1)
    assert new.save_pretrained(tmp_path / "link") == tmp_path / "link"
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == "real"
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    assert (real / "README.md").read_text() == "a model card"
    assert torch.equal(logits(from_pretrained(real)), logits(new))


def test_saving_to_the_working_directory(tmp_path, monkeypatch):
    target = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    monkeypatch.chdir(target)
    new = build_model("tiny-glm-4", seed=1)
    new.save_pretrained(".")
    assert os.getcwd() == str(target)  # the process is in the new directory, not the deleted old one
    assert sorted(os.listdir(".")) == ["model.safetensors", "spec.yaml"]
    assert os.listdir(tmp_path) == ["ckpt"]
    assert torch.equal(logits(from_pretrained(".")), logits(new))


def test_saving_keeps_the_directory_permissions(tmp_path):
    target = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    target.chmod(0o750)
    build_model("tiny-glm-4", seed=1).save_pretrained(target)
    assert target.stat().st_mode & 0o777 == 0o750


def test_bad_save_targets_and_sizes(tmp_path):
    model = build_model("tiny-glm-4", seed=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match=rf"cannot save to {tmp_path}/file/sub/ckpt: {tmp_path}/file is a file, "
                                              rf"not a directory"):
        model.save_pretrained(tmp_path / "file" / "sub" / "ckpt")
    (tmp_path / "link").symlink_to("file")
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/file exists and is not a directory \(the symlink "
                                              rf"{tmp_path}/link points to it\)"):
        model.save_pretrained(tmp_path / "link")
    with pytest.raises(CheckpointError, match="cannot save to /: a checkpoint is a directory that can be replaced, "
                                              "not the filesystem root"):
        model.save_pretrained("/")
    for size in (None, 1e9, True, [5]):
        with pytest.raises(CheckpointError, match=rf"max_shard_size={re.escape(repr(size))} \(a \w+\): expected a "
                                                  rf"number of bytes \(an int\) or a size such as '500MB' or '5GB'"):
            model.save_pretrained(tmp_path / "x", max_shard_size=size)
    with pytest.raises(CheckpointError, match=r"path=5: expected the checkpoint directory to write"):
        model.save_pretrained(5)
    assert sorted(os.listdir(tmp_path)) == ["file", "link"]


def test_a_save_cleans_what_killed_saves_left_but_not_a_running_save(tmp_path):
    target = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    killed = [tmp_path / ".ckpt.saving-0123abcd", tmp_path / ".ckpt.old-0123abcd", tmp_path / ".ckpt.saving-99999999"]
    for directory in killed:
        shutil.copytree(target, directory)
    running = tmp_path / ".ckpt.saving-feedf00d"
    running.mkdir()
    others = [tmp_path / ".other.saving-0123abcd", tmp_path / ".ckpt.saving-notours"]
    for directory in others:
        directory.mkdir()
    held = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running save holds its directory
        build_model("tiny-glm-4", seed=1).save_pretrained(target)
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", running.name, *(p.name for p in others)])


def test_a_load_after_a_kill_between_the_two_renames_puts_the_new_checkpoint_back(tmp_path):
    """Where the filesystem cannot exchange two directories, a save renames the old checkpoint
    aside, then the new one into place; killed in between, the next load finishes the swap."""
    old, new = build_model("tiny-glm-4", seed=0), build_model("tiny-glm-4", seed=1)
    target = old.save_pretrained(tmp_path / "ckpt")
    new.save_pretrained(tmp_path / "staging")
    os.rename(target, tmp_path / ".ckpt.old-0123abcd")  # the state the kill leaves
    os.rename(tmp_path / "staging", tmp_path / ".ckpt.saving-0123abcd")
    assert torch.equal(logits(from_pretrained(target)), logits(new))
    assert sorted(os.listdir(tmp_path)) == [".ckpt.old-0123abcd", "ckpt"]  # a load deletes nothing
    new.save_pretrained(target)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_saves_without_the_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_renameat2", None)  # a filesystem or C library without renameat2
    target = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    new = build_model("tiny-glm-4", seed=1)
    new.save_pretrained(target)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert torch.equal(logits(from_pretrained(target)), logits(new))
