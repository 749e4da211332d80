"""Checkpoints: our format round trip, sharding, atomic saves, refusing pickles, the one error
that lists every missing/unexpected/mis-shaped tensor, and export errors. Parity with
transformers per family lives in tests/plugins/."""

import json
import re
import os
import pickle
from itertools import chain

import pytest
import torch
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


def failing_save_file(after: int):
    calls = {"n": 0}

    def save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("disk full (simulated)")
        save_file(tensors, filename, metadata=metadata)

    return save


def test_interrupted_save_leaves_no_directory(tmp_path, monkeypatch):
    model = build_model("tiny-glm-4", seed=0)
    monkeypatch.setattr(storage, "save_file", failing_save_file(after=1))
    with pytest.raises(OSError, match="simulated"):
        model.save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    assert os.listdir(tmp_path) == []


def test_interrupted_save_keeps_the_existing_checkpoint(tmp_path, monkeypatch):
    old = build_model("tiny-glm-4", seed=0)
    target = old.save_pretrained(tmp_path / "ckpt")
    (target / "README.md").write_text("a model card")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    new = build_model("tiny-glm-4", seed=1)
    monkeypatch.setattr(storage, "save_file", failing_save_file(after=2))
    with pytest.raises(OSError, match="simulated"):
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
