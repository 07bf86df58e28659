"""dp x pp x tp layouts train exactly like one process: every rank's parameters
after k steps (tensor shards joined into their logical tensors) equal a plain
single-process loop's to 1e-5 in fp32, with the layout-invariant dropout on
(every layout) and off (1x1x2, 2x1x2). The GPT vocabulary (299) divides by neither 2 nor 4,
so the padded vocabulary rows and logits are exercised; 4 heads allow tp = 4."""
import pytest

from layouts import TOL, reference_parameters, train_layout, worst_difference

LAYOUTS = [(1, 1, 2), (2, 1, 2), (1, 2, 2), (2, 2, 2), (1, 1, 4)]
JOBS = {
    "gpt": ("jobs/test_tiny_gpt.toml", ["model.n_head=4", "model.vocab_size=299"]),
    "ner": ("jobs/test_tiny_ner.toml", ["model.heads=4"]),
}
DROPOUT = {
    "gpt": ["model.dropout=0.1"],
    "ner": ["model.dropout=0.1", "model.attention_dropout=0.1"],
}
_cache = {}


# clipping engaged on every step: the global norm must sum split parameters over the
# tensor group and count replicated ones once
CLIPPED = ["train.max_grad_norm=0.02", "train.lr=2.0"]


def sets(tmp, task, dropout, extra=()):
    job, model = JOBS[task]
    return [f'job.run_dir="{tmp}/run"', f'data.prepared_dir="{tmp}/prep"', *model,
            *(DROPOUT[task] if dropout else []), *extra]


def reference(factory, task, dropout, extra=()):
    key = (task, dropout, tuple(extra))
    if key not in _cache:
        final, moved = reference_parameters(JOBS[task][0], sets(factory.mktemp("ref"), task, dropout, extra))
        changes = sorted(v for n, v in moved.items() if "key.bias" not in n)
        assert changes[len(changes) // 2] > 100 * TOL, moved
        _cache[key] = final
    return _cache[key]


# every layout with the layout-invariant dropout on; with it off (the SDPA attention path)
# two of them (a tensor group alone, and with data parallelism)
CASES = [(layout, True) for layout in LAYOUTS] + [((1, 1, 2), False), ((2, 1, 2), False)]


@pytest.mark.parametrize("task", ["gpt", "ner"])
@pytest.mark.parametrize("layout,dropout", CASES,
                         ids=[f"{'x'.join(map(str, l))}-dropout-{'on' if d else 'off'}" for l, d in CASES])
def test_layout_matches_single_process(tmp_path_factory, tmp_path, task, layout, dropout):
    dp, pp, tp = layout
    ref = reference(tmp_path_factory, task, dropout)
    ranks = train_layout(tmp_path, JOBS[task][0], sets(tmp_path, task, dropout), dp, pp, tp=tp)
    worst = worst_difference(ranks, ref)
    assert worst < TOL, f"{task} dp={dp} pp={pp} tp={tp} dropout={dropout}: max |difference| {worst:.2e}"
    if task == "gpt" and pp == 2:
        check_parameter_info(tmp_path, dp * pp * tp, tp)


def check_parameter_info(tmp, n, tp):
    """Every rank knows each of its parameters' logical shape, split and tied group."""
    import json

    info = {}
    for r in range(n):
        for item in json.loads((tmp / f"info-{r}.json").read_text()):
            info.setdefault(item["name"], []).append(item)
    head = info["head.lm_head.weight"][0]
    assert head["logical_shape"] == [299, 32] and head["shape"] == [150, 32]
    assert head["split"]["dim"] == 0 and head["split"]["padded"] and not head["replicated"]
    assert head["tied"] == ["embed.wte.weight", "head.lm_head.weight"]
    ln = info["block.0.ln_1.weight"][0]
    assert ln["split"] is None and ln["replicated"] and ln["tied"] is None
    assert info["block.0.attn.c_attn.weight"][0]["split"]["chunks"] == 3
    assert all(len(v) == 2 * tp or len(v) == tp for v in info.values())  # every shard of every holder


def test_dropout_changes_training(tmp_path_factory):
    """The dropout-on comparisons are not the dropout-off ones in disguise."""
    for task in JOBS:
        on, off = reference(tmp_path_factory, task, True), reference(tmp_path_factory, task, False)
        assert max(abs(on[n] - off[n]).max() for n in on) > 100 * TOL, task


def test_torch_dropout_differs_by_layout(tmp_path_factory, tmp_path):
    """With torch's RNG the masks depend on the ranks: the same job on 2x1x2 does not
    match one process. This is what the invariant masks fix."""
    ref = reference(tmp_path_factory, "gpt", True)
    got = train_layout(tmp_path, JOBS["gpt"][0], sets(tmp_path, "gpt", True) + ['train.dropout="torch"'], 2, 1, tp=2)
    assert worst_difference(got, ref) > 100 * TOL


@pytest.mark.parametrize("task", ["gpt", "ner"])
def test_clipping_with_split_parameters(tmp_path_factory, tmp_path, task):
    ref = reference(tmp_path_factory, task, False, CLIPPED)
    unclipped = reference(tmp_path_factory, task, False, CLIPPED[1:])
    assert max(abs(ref[n] - unclipped[n]).max() for n in ref) > 100 * TOL  # the limit is reached
    ranks = train_layout(tmp_path, JOBS[task][0], sets(tmp_path, task, False, CLIPPED), 2, 1, tp=2)
    worst = worst_difference(ranks, ref)
    assert worst < TOL, f"{task} 2x1x2 clipped: max |difference| {worst:.2e}"
