import torch

from mpitrain.train.optim import decays, linear_schedule, make_adamw


def test_decay_groups():
    assert decays("encoder.0.attention.query.weight")
    assert not decays("encoder.0.attention.query.bias")
    assert not decays("embeddings.LayerNorm.weight")
    params = [("a.weight", torch.nn.Parameter(torch.ones(2))), ("a.bias", torch.nn.Parameter(torch.ones(2)))]
    opt = make_adamw(params, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_linear_schedule_matches_warmup_then_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = linear_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
