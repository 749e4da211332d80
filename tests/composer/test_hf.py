"""archcomposer.hf: a composed model that no transformers family expresses (a GLM-4 trunk with
ALiBi) through the tools researchers use: Trainer (train, evaluate, save, resume, bf16 on CPU),
pipeline("text-generation") with a tokenizer trained here, generate (greedy and beam tokens equal
to ours, on our caches), PEFT LoRA, the other Auto classes, and the trust_remote_code checkpoint
that save_pretrained(format="hf") writes. The core itself never imports transformers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from archcomposer import InputError, build_model, from_pretrained, load_spec

IDS = torch.tensor([[5, 17, 42, 8, 99, 3]])


def novel_spec(**changes) -> dict:
    """GLM-4's trunk with ALiBi instead of partial RoPE and no family: no transformers family has it."""
    spec = load_spec("tiny-glm-4").to_dict()
    spec.update(name="glm-4-alibi", family=None, position={"kind": "alibi"}, **changes)
    return spec


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    import archcomposer.hf

    return archcomposer.hf


def run_python(code: str, tmp_path, **env) -> str:
    """Run ``code`` in a fresh interpreter (nothing of this process imported) and return its stdout."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_core_never_imports_transformers(tmp_path):
    """Building, exporting a spec no family expresses and reading it back stay transformers-free."""
    out = run_python(f"""
        import sys, torch, archcomposer
        spec = archcomposer.load_spec("tiny-glm-4").to_dict()
        spec.update(name="glm-4-alibi", family=None, position={{"kind": "alibi"}})
        model = archcomposer.build_model(spec, seed=0)
        path = model.save_pretrained({str(tmp_path / 'export')!r}, format="hf")
        archcomposer.from_pretrained(path)(torch.tensor([[1, 2, 3]]))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "archcomposer.hf")))
    """, tmp_path)
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# the transformers classes


def test_a_wrapped_model_is_a_pretrained_model_computing_what_ours_does(hf):
    from transformers import GenerationMixin, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    ours = build_model(novel_spec(), seed=0)
    model = hf.to_transformers(ours)
    assert isinstance(model, PreTrainedModel) and isinstance(model, GenerationMixin)
    assert model.model is ours and model.config.model_type == "archcomposer"
    assert load_spec(model.config.spec) == ours.spec
    assert model.config.vocab_size == 256 and model.config.eos_token_id == [1, 2] and model.device.type == "cpu"
    with torch.no_grad():
        out = model(IDS, labels=IDS)
        assert isinstance(out, CausalLMOutputWithPast)
        assert torch.equal(out.logits, ours(IDS).logits) and torch.equal(out.loss, ours(IDS, labels=IDS).loss)
    # transformers leaves out nn.Embedding weights (what Trainer's first step asks for)
    embeddings = ours.embedding.tokens.weight.numel()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - embeddings
    assert model.get_output_embeddings() is ours.heads.causal_lm.proj
    assert model.get_input_embeddings() is ours.embedding.tokens
    built = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)  # build_model's weights
    assert all(torch.equal(a, b) for a, b in zip(built.model.state_dict().values(), ours.state_dict().values()))
    with pytest.raises(InputError, match=r"needs a sequence_classification head; spec 'glm-4-alibi' has "
                                         r"\['causal_lm'\]"):
        hf.to_transformers(ours, head="sequence_classification")


def test_tied_embeddings_stay_tied_through_transformers(hf, tmp_path):
    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(embedding={"kind": "tokens", "tied": True}), seed=0)
    assert model.config.tie_word_embeddings
    model.save_pretrained(tmp_path / "tied")
    loaded = type(model).from_pretrained(tmp_path / "tied")
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_auto_classes_build_the_head_they_name(hf, tmp_path):
    from transformers import (AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutputWithPast

    ours = build_model(novel_spec(), seed=0)
    path = ours.save_pretrained(tmp_path / "lm", format="hf")
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])  # left-padded (pad_token_id 0)
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    assert [h["kind"] for h in classifier.config.spec["heads"]] == ["sequence_classification"]
    assert torch.equal(classifier.model.layers[1].mlp.down.weight, ours.layers[1].mlp.down.weight)  # loaded
    new_head = classifier.model.heads.sequence_classification.proj.weight  # initialised as build_model does
    assert new_head.shape == (3, 64) and 0.01 < new_head.std() < 0.03
    out = classifier(ids, labels=torch.tensor([0, 2]))
    assert isinstance(out, SequenceClassifierOutputWithPast) and out.logits.shape == (2, 3) and out.loss > 0
    classifier.save_pretrained(tmp_path / "cls")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert again.config.num_labels == 3 and torch.equal(again(ids).logits, classifier(ids).logits)
    bare = AutoModel.from_pretrained(path)
    with torch.no_grad():
        out = bare(ids, attention_mask=(ids != 0).long())
        assert isinstance(out, BaseModelOutputWithPast)
        expected = ours(ids, attention_mask=(ids != 0).long(), output_hidden_states=True).hidden_states[-1]
        assert torch.equal(out.last_hidden_state, expected)
    assert AutoModelForTokenClassification.from_pretrained(path, num_labels=5)(ids).logits.shape == (2, 4, 5)
    assert AutoModelForQuestionAnswering.from_pretrained(path)(ids).start_logits.shape == (2, 4)


def test_a_wrapped_model_keeps_every_head_through_its_checkpoint(hf, tmp_path):
    heads = [{"kind": "sequence_classification", "num_labels": 3}, {"kind": "causal_lm"},
             {"kind": "token_classification", "num_labels": 5}]
    ours = build_model(novel_spec(heads=heads), seed=0)
    model = hf.to_transformers(ours, head="token_classification")
    assert type(model).__name__ == "ArchComposerForTokenClassification" and model.config.num_labels == 5
    model.save_pretrained(tmp_path / "three")
    back = from_pretrained(tmp_path / "three")
    assert [h.kind for h in back.spec.heads] == [h["kind"] for h in heads]
    with torch.no_grad():
        for head in ("sequence_classification", "causal_lm", "token_classification"):
            assert torch.equal(back(IDS, head=head).logits, ours(IDS, head=head).logits)


# ---------------------------------------------------------------------------------------------
# generate


def left_padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("spec", [novel_spec(), "tiny-cpm-ant"], ids=["glm-4-alibi", "tiny-cpm-ant"])
def test_generate_gives_our_greedy_tokens_with_either_cache(hf, spec):
    ours = build_model(spec, seed=0)
    model = hf.to_transformers(ours)
    ids, mask = left_padded_batch(ours.spec.vocab_size)
    expected = ours.generate(ids, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False), expected)
    static = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                            cache_implementation="static")
    assert torch.equal(static, expected)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert type(out.past_key_values).__module__ == "archcomposer.cache"


def test_beam_search_reorders_our_cache(hf):
    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)
    ids, mask = left_padded_batch(256)
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False,
                              use_cache=False)
    assert torch.equal(cached, uncached)


def test_generate_refuses_a_transformers_cache(hf):
    from transformers import DynamicCache

    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)
    with pytest.raises(InputError, match=r"past_key_values is a transformers.cache_utils.DynamicCache; .* pass "
                                         r"one of those"):
        model.generate(IDS, max_new_tokens=2, past_key_values=DynamicCache())
    with pytest.raises(InputError, match=r"cache_implementation='offloaded': archcomposer models generate with "
                                         r"'dynamic' \(the default\) or 'static'"):
        model.generate(IDS, max_new_tokens=2, cache_implementation="offloaded")


def tiny_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained here (nothing downloads); ids 0-2 are <pad>, <eos>, <eot>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<eot>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog", "a composed model generates text", "hello world"]
    tokenizer.train_from_iterator(text * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left")


def test_text_generation_pipeline(hf):
    from transformers import pipeline

    tokenizer = tiny_tokenizer(300)
    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(vocab_size=len(tokenizer)), seed=0)
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompts = ["hello world", "the quick brown fox"]
    results = generate(prompts, max_new_tokens=6, do_sample=False, batch_size=2)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    expected = model.model.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=6)
    for result, prompt, row in zip(results, prompts, expected):
        continuation = tokenizer.decode(row[batch.input_ids.shape[1]:], skip_special_tokens=True)
        assert result == [{"generated_text": prompt + continuation}]


# ---------------------------------------------------------------------------------------------
# Trainer


def counting_rows(n: int, seed: int) -> list[dict]:
    """Sequences that count up by one (mod the vocabulary): a pattern a tiny model learns in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for start in torch.randint(0, 253, (n,), generator=generator):
        ids = (start + torch.arange(16)) % 253 + 3
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def test_trainer_trains_evaluates_saves_and_resumes_in_bf16(hf, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    def trainer(model, output_dir):
        args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=8,
                                 learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=1, save_steps=4,
                                 use_cpu=True, bf16=True, report_to="none", seed=0, disable_tqdm=True)
        return Trainer(model=model, args=args, train_dataset=counting_rows(32, 0), eval_dataset=counting_rows(8, 1))

    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)
    run = trainer(model, tmp_path / "run")
    eval_before = run.evaluate()["eval_loss"]
    run.train()
    eval_after = run.evaluate()["eval_loss"]
    losses = [entry["loss"] for entry in run.state.log_history if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3]) and eval_after < eval_before

    resumed_model = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)
    resumed = trainer(resumed_model, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    # the first four entries come from checkpoint-4's trainer state, the last four were recomputed
    assert [entry["loss"] for entry in resumed.state.log_history if "loss" in entry] == losses
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name

    run.save_model(str(tmp_path / "final"))
    composed = model.model.eval()  # (accelerate left bf16 autocast on the wrapper's forward)
    with torch.no_grad():
        expected = composed(IDS).logits
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "final")(IDS).logits, expected)
        assert torch.equal(from_pretrained(tmp_path / "final")(IDS).logits, expected)  # ours reads it too
        assert torch.equal(from_pretrained(tmp_path / "run" / "checkpoint-8")(IDS).logits, expected)


# ---------------------------------------------------------------------------------------------
# PEFT


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT asks
def test_lora_on_all_linear_layers_leaves_the_lm_head_alone(hf):
    peft = pytest.importorskip("peft")

    model = hf.ArchComposerForCausalLM.from_spec(novel_spec(), seed=0)
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    config = peft.LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=4, lora_alpha=8,
                             init_lora_weights=False)  # B != 0, so the adapters change the logits
    lora = peft.get_peft_model(model, config)
    wrapped = {name.removeprefix("base_model.model.") for name, module in lora.named_modules()
               if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)}
    assert wrapped == linear - {"model.heads.causal_lm.proj"}
    assert "model.layers.1.mlp.gate_up.proj" in wrapped

    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    lora.train()
    lora(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {name for name, p in lora.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".lora_A." in name or ".lora_B." in name for name in changed)
    assert len(changed) == 2 * len(wrapped)

    lora.eval()
    with torch.no_grad():
        logits = lora(input_ids=ids).logits
        tokens = lora.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    merged = lora.merge_and_unload()
    assert isinstance(merged, hf.ArchComposerForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(merged.generate(ids, max_new_tokens=5, do_sample=False), tokens)


# ---------------------------------------------------------------------------------------------
# the trust_remote_code checkpoint


def test_export_of_a_spec_no_family_expresses_loads_with_trust_remote_code(hf, tmp_path):
    ours = build_model(novel_spec(), seed=0)
    path = ours.save_pretrained(tmp_path / "export", format="hf")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "archcomposer" and config["architectures"] == ["ArchComposerForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_archcomposer.ArchComposerForCausalLM"
    with torch.no_grad():
        torch.save(ours(IDS).logits, tmp_path / "expected.pt")
    # A fresh process that imports nothing of ours: transformers finds the classes through auto_map.
    out = run_python(f"""
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(1)  # as this process (tests/conftest.py): the same sums in the same order
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            same = torch.equal(model(torch.tensor({IDS.tolist()})).logits, expected)
        print(type(model).__module__, type(model).__name__, same)
    """, tmp_path)
    assert out.split() == ["archcomposer.hf", "ArchComposerForCausalLM", "True"]
