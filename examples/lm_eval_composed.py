"""Evaluate a composed model with lm-evaluation-harness (its ``HFLM``), offline.

The model is GLM-4's trunk with ALiBi instead of partial RoPE: no transformers family has it, and
``archcomposer.hf`` makes it a transformers model all the same. The script trains a byte-level BPE
tokenizer and (with ``--train-steps``) the model itself on a toy corpus (six words of counting, then
``<eos>``) with transformers' ``Trainer``, writes two tasks as local jsonl files (the fifth word,
multiple choice scored by log-likelihood; the fifth and sixth, ``generate_until`` scored by exact
match) and runs ``lm_eval.simple_evaluate`` on them. Nothing is downloaded.

    pip install -e ".[hf]" lm-eval
    python examples/lm_eval_composed.py --train-steps 100
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()


def counting(start: int, length: int) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(length))


def make_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def composed_model(vocab_size: int, seed: int):
    """GLM-4's trunk (tiny) with ALiBi and no family, as a transformers causal LM."""
    import archcomposer
    from archcomposer.hf import ArchComposerForCausalLM

    spec = archcomposer.load_spec("tiny-glm-4").to_dict()
    spec.update(name="glm-4-alibi", family=None, position={"kind": "alibi"}, vocab_size=vocab_size,
                pad_token_id=0, eos_token_id=1)
    return ArchComposerForCausalLM.from_spec(spec, seed=seed)


def train(model, tokenizer, corpus: list[str], steps: int, output_dir: Path) -> None:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    rows = [tokenizer(text + tokenizer.eos_token) for text in corpus]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=3e-3, warmup_steps=10, logging_steps=max(1, steps // 5), save_strategy="no",
                             use_cpu=True, report_to="none", seed=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    model.eval()


def write_tasks(directory: Path, rng: random.Random) -> list[dict]:
    """Two lm-eval task configs over jsonl files in ``directory``."""
    choice_docs, generation_docs = [], []
    for _ in range(30):
        start = rng.randrange(len(WORDS))
        answer = WORDS[(start + 4) % len(WORDS)]
        wrong = rng.sample([w for w in WORDS if w != answer], 3)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        choice_docs.append({"context": counting(start, 4), "choices": choices, "answer": choices.index(answer)})
        generation_docs.append({"context": counting(start, 4), "continuation": counting(start + 4, 2)})
    for name, docs in (("choice", choice_docs), ("generation", generation_docs)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = {"dataset_path": "json", "test_split": "test", "doc_to_text": "{{context}}"}
    return [
        {**common, "task": "count_next_word_choice", "output_type": "multiple_choice",
         "dataset_kwargs": {"data_files": {"test": str(directory / "choice.jsonl")}},
         "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
         "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
        {**common, "task": "count_next_two_words", "output_type": "generate_until",
         "dataset_kwargs": {"data_files": {"test": str(directory / "generation.jsonl")}},
         "doc_to_target": "{{continuation}}",
         "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},  # and the model's <eos>
         "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                          "regexes_to_ignore": [r"^\s+", r"\s+$"]}]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=100,
                        help="Trainer steps on the counting corpus before evaluating, 0 for the random model "
                             "(e.g. --train-steps 0)")
    parser.add_argument("--seed", type=int, default=0, help="weights' seed (e.g. --seed 1)")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    corpus = [counting(rng.randrange(len(WORDS)), 6) for _ in range(2000)]  # six words, then <eos>
    tokenizer = make_tokenizer(corpus)
    model = composed_model(len(tokenizer), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_steps:
            train(model, tokenizer, corpus, args.train_steps, Path(tmp) / "trainer")
        tasks = write_tasks(Path(tmp), rng)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=8)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, bootstrap_iters=0, log_samples=False)
    print(make_table(results))


if __name__ == "__main__":
    main()
