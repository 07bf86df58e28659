"""The GPT task trains exactly like one process on every dp x pp layout (dropout
off): every rank's parameters after k steps equal a plain loop's to 1e-5. With
pp >= 2 the tied input/output embedding lives on the first and the last stage."""
import pytest

from layouts import TOL, reference_parameters, train_layout, worst_difference

JOB = "jobs/test_tiny_gpt.toml"


def overrides(tmp):
    return [f'job.run_dir="{tmp}/run"', f'data.prepared_dir="{tmp}/prep"']


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    final, moved = reference_parameters(JOB, overrides(tmp_path_factory.mktemp("ref")))
    changes = sorted(moved.values())
    assert changes[0] > 1e-7 and changes[len(changes) // 2] > 100 * TOL, moved
    # the tied pair is one weight in the reference
    assert (final["embed.wte.weight"] == final["head.lm_head.weight"]).all()
    return final


@pytest.mark.parametrize("dp,pp", [(2, 1), (1, 2), (1, 3), (2, 2)])
def test_layout_matches_single_process(reference, tmp_path, dp, pp):
    ranks = train_layout(tmp_path, JOB, overrides(tmp_path), dp, pp)
    worst = worst_difference(ranks, reference)
    assert worst < TOL, f"dp={dp} pp={pp}: max |difference| {worst:.2e}"
    if pp > 1:  # the embedding and the output projection sit on different stages
        holders = {name: [r for r, s in ranks.items() if name in s] for name in ("embed.wte.weight",
                                                                                  "head.lm_head.weight")}
        assert not set(holders["embed.wte.weight"]) & set(holders["head.lm_head.weight"]), holders


def test_hierarchical_all_reduce_on_two_simulated_nodes_matches_single_process(reference, tmp_path):
    """dp 4 as 2 nodes x 2 ranks (MPICH's MPIR_CVAR_NUM_CLIQUES): gradients go through
    shared memory inside each node and the ring between nodes."""
    ranks = train_layout(tmp_path, JOB, overrides(tmp_path) + ['comm.algorithm="shm"'], 4, 1,
                         env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    worst = worst_difference(ranks, reference)
    assert worst < TOL, f"hierarchical dp=4: max |difference| {worst:.2e}"


def test_wrong_gradient_scale_is_caught(reference, tmp_path):
    got = train_layout(tmp_path, JOB, overrides(tmp_path), 2, 1, extra=["--wrong-grad-scale"])
    assert worst_difference(got, reference) > 100 * TOL
