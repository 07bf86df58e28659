"""The GPT job end to end on 2 ranks: dev perplexity falls, a greedy continuation
is printed, and the Hugging Face export scores the test split like the run."""
import json
import math
import os

import numpy as np
import pytest
import torch
import transformers

from mpirun import run_mpi, run_py

JOB = "jobs/gpt_tiny.toml"


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    result = run_mpi(2, ["-m", "mpitrain", JOB, "--set", "train.epochs=2", "--set", f'job.run_dir="{tmp}/run"',
                         "--set", f'data.prepared_dir="{tmp}/prep"'], timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run", tmp / "prep", result


def test_dev_perplexity_falls(gpt_run):
    run_dir, _, result = gpt_run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x["dev"] for x in lines if x["event"] == "epoch"]
    assert len(epochs) == 2 and epochs[1]["perplexity"] < epochs[0]["perplexity"] < 2048
    assert math.isclose(epochs[1]["perplexity"], math.exp(epochs[1]["loss"]), rel_tol=1e-9)
    assert "dp 2 x pp 1" in result.stdout and "greedy continuation of 'The':" in result.stdout


def test_export_scores_the_test_split_like_the_run(gpt_run):
    from mpitrain.tasks.gpt.data import LMBlocks

    run_dir, prep, _ = gpt_run
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    test = LMBlocks(prep / "test.h5")
    total = count = 0.0
    with torch.no_grad():
        for chunk in np.array_split(np.arange(len(test)), 4):
            (ids,), targets, n = test.batch(chunk)
            logits = model(input_ids=ids).logits
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1), reduction="sum"))
            count += n
    ours = json.loads((run_dir / "eval_test.json").read_text())
    assert abs(total / count - ours["loss"]) < 1e-4, (total / count, ours["loss"])
    tok = transformers.AutoTokenizer.from_pretrained(run_dir / "model")
    assert tok.decode(tok("def f(x): return x")["input_ids"]) == "def f(x): return x"


def test_prepare_and_plan_describe_the_gpt_job(tmp_path):
    prep = run_py(["-m", "mpitrain", "prepare", JOB, "--set", f'data.prepared_dir="{tmp_path}"'], timeout=120)
    assert prep.returncode == 0, prep.stderr
    assert "tokenizer:" in prep.stdout and "(2048 tokens)" in prep.stdout and "train:" in prep.stdout
    plan = run_py(["-m", "mpitrain", "plan", JOB, "--set", "grid.dp=1", "--set", "grid.pp=2"], timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "tied: embed.wte.weight = head.lm_head.weight" in plan.stdout
    assert "4 layers -> 2 stages" in plan.stdout
