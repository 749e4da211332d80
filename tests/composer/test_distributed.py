"""archcomposer.distributed under ``torchrun --nproc_per_node 2`` (gloo, CPU): FSDP2 and tensor
parallel training equal one process, and the checkpoints a sharded model writes.

One torchrun launch (tests/composer/distributed_worker.py) runs every case and writes what it
measured; the tests here judge it. Tolerances: the sharded runs add the same fp32 numbers in
another order (an all-reduce of partial matrix products, the mean of two half-batch gradients),
which rounds differently by a few units in the last place (2**-23 ~ 1.2e-7 relative); over three
SGD steps the parameters stay within 2e-7 of one process's. A sharding mistake (a fused weight
split by plain rows, an unsummed gradient) moves them by 5e-3 or more. SGD, not AdamW: Adam
divides by the gradient's own magnitude, so a gradient element that is nearly zero turns a
last-place difference into a full step (measured: 4e-4 after 3 steps at lr 1e-2)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import archcomposer
from tests.composer.distributed_worker import CASES, REFUSED

WORKER = Path(__file__).with_name("distributed_worker.py")
RUNS = [f"{case}/{how}" for case, (*_, shardings) in CASES.items() for how in shardings]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("distributed")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).parents[2])
    if done.returncode:
        pytest.fail(f"torchrun exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return work, json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("run", RUNS)
def test_training_equals_one_process(launched, run):
    result = launched[1][run]
    torch.testing.assert_close(torch.tensor(result["losses_2proc"]), torch.tensor(result["losses_1proc"]),
                               rtol=1e-6, atol=0)
    assert result["max_param_diff"] <= 1e-6
    assert result["decode_diff"] <= 1e-5  # then decoding with either cache, in eval mode


@pytest.mark.parametrize("run", RUNS)
def test_checkpoints_of_a_sharded_model(launched, run):
    """save_pretrained writes the trained model whole (from_pretrained reads it back exactly);
    save_sharded's shards (model and optimizer) load into the same sharding and into the other one."""
    result = launched[1][run]
    assert result["full_save_diff"] == 0.0
    assert result["sharded_load_into_fsdp_diff"] == 0.0
    assert result.get("sharded_load_into_tp_diff", 0.0) == 0.0
    # with the optimizer's state: one more step after loading equals one more step before saving
    assert result[f"resumed_in_{run.split('/')[1]}_diff"] == 0.0
    assert result["resumed_in_fsdp_diff"] <= 1e-6 and result.get("resumed_in_tp_diff", 0.0) <= 1e-6


@pytest.mark.parametrize("how", ["fsdp", "tp"])
def test_hf_export_of_a_sharded_model_loads_in_transformers(launched, how):
    transformers = pytest.importorskip("transformers")
    work = launched[0]
    ours = archcomposer.from_pretrained(work / f"bloom-alibi-{how}-full")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(work / f"bloom-alibi-{how}-hf").eval()
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 11]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", REFUSED)
def test_tensor_parallel_refuses_what_it_cannot_split(launched, case):
    spec, message = REFUSED[case]
    assert re.match(message, launched[1]["refused"][case])


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    from archcomposer import distributed

    with pytest.raises(archcomposer.InputError, match="mesh=None: archcomposer.distributed needs an initialised"):
        distributed.apply_tp(archcomposer.build_model("tiny-glm-4", seed=0))


def test_fsdp_mixed_precision(launched):
    """bfloat16 compute: the loss of one process's model cast to bfloat16; fp32 parameters and gradients."""
    result = launched[1]["mixed_precision"]
    assert result["loss"] == pytest.approx(result["loss_1proc"], rel=1e-6)
    assert result["param_dtypes"] == result["grad_dtypes"] == ["torch.float32"]
