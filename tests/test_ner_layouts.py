"""The NER job trains exactly like one process on every dp x pp layout (dropout off):
every rank's parameters after k optimizer steps equal a plain single-process
loop's to 1e-5. The tiny job uses SGD with a clipping limit that is never reached,
so a wrong gradient scale shows (the negative run proves it does)."""
import pytest

from layouts import TOL, reference_parameters, train_layout, worst_difference

JOB = "jobs/test_tiny_ner.toml"
ADAMW = ['train.optimizer="adamw"', "train.lr=3e-3"]
CLIPPED = ["train.max_grad_norm=0.5", "train.lr=0.2"]  # engaged: the global norm over stages must be right
PROFILE = ['pipeline.partition="profile"']
_cache = {}


def overrides(tmp):
    return [f'job.run_dir="{tmp}/run"', f'data.prepared_dir="{tmp}/prep"']


def reference(tmp_factory, extra):
    key = tuple(extra)
    if key not in _cache:
        final, moved = reference_parameters(JOB, overrides(tmp_factory.mktemp("ref")) + list(extra))
        # every tensor trained (a key bias gets no gradient: softmax ignores a constant shift),
        # most of them by far more than the tolerance
        changes = sorted(v for n, v in moved.items() if "key.bias" not in n)
        assert changes[0] > 1e-7 and changes[len(changes) // 2] > 100 * TOL, moved
        _cache[key] = final
    return _cache[key]


@pytest.mark.parametrize("dp,pp,schedule,extra", [
    (1, 1, "1f1b", []), (2, 1, "1f1b", []), (1, 2, "gpipe", []), (1, 3, "1f1b", []), (2, 2, "1f1b", []),
    (2, 2, "1f1b", PROFILE), (2, 2, "gpipe", ADAMW), (1, 2, "1f1b", CLIPPED)])
def test_layout_matches_single_process(tmp_path_factory, tmp_path, dp, pp, schedule, extra):
    ref = reference(tmp_path_factory, extra)
    sets = [f'pipeline.schedule="{schedule}"', *extra] + overrides(tmp_path)
    worst = worst_difference(train_layout(tmp_path, JOB, sets, dp, pp), ref)
    assert worst < TOL, f"dp={dp} pp={pp} {extra}: max |difference| {worst:.2e}"


@pytest.mark.parametrize("dp,pp", [(2, 1), (1, 2)])
def test_wrong_gradient_scale_is_caught(tmp_path_factory, tmp_path, dp, pp):
    ref = reference(tmp_path_factory, [])
    got = train_layout(tmp_path, JOB, overrides(tmp_path), dp, pp, extra=["--wrong-grad-scale"])
    worst = worst_difference(got, ref)
    assert worst > 100 * TOL, f"a halved gradient went unnoticed: max |difference| {worst:.2e}"
