"""Schedules as plain data, checked without MPI by the replay simulator."""
import pytest

from mpitrain.errors import UsageError
from mpitrain.pipeline.schedule import (BACKWARD, FORWARD, RECV_ACT, RECV_GRAD, SEND_ACT, SEND_GRAD,
                                        Action, exchanges, format_schedule, get_schedule, gpipe,
                                        one_f_one_b)
from mpitrain.pipeline.simulate import DeadlockError, ScheduleError, ideal_bubble, replay

SIZES = [(1, 1), (1, 3), (2, 2), (2, 3), (2, 8), (3, 3), (3, 7), (4, 4), (4, 9), (8, 8), (8, 19)]
SCHEDULES = [gpipe, one_f_one_b]


def ops(acts, op):
    return [a.mb for a in acts if a.op == op]


@pytest.mark.parametrize("fn", SCHEDULES)
@pytest.mark.parametrize("p,m", SIZES)
def test_every_stage_runs_every_microbatch_once(fn, p, m):
    plan = fn(p, m)
    assert len(plan) == p
    for s, acts in enumerate(plan):
        assert sorted(ops(acts, FORWARD)) == list(range(m))
        assert sorted(ops(acts, BACKWARD)) == list(range(m))
        assert ops(acts, RECV_ACT) == (ops(acts, FORWARD) if s > 0 else [])
        assert ops(acts, SEND_ACT) == (ops(acts, FORWARD) if s < p - 1 else [])
        assert ops(acts, RECV_GRAD) == (ops(acts, BACKWARD) if s < p - 1 else [])
        assert ops(acts, SEND_GRAD) == (ops(acts, BACKWARD) if s > 0 else [])
        for i in range(m):
            assert acts.index(Action(FORWARD, i)) < acts.index(Action(BACKWARD, i))


@pytest.mark.parametrize("fn", SCHEDULES)
@pytest.mark.parametrize("p,m", SIZES)
def test_no_deadlock_and_ideal_bubble_with_equal_stages(fn, p, m):
    result = replay(fn(p, m), cost={FORWARD: 1.0, BACKWARD: 2.0})
    assert result.makespan == pytest.approx(3.0 * (m + p - 1))
    assert result.bubble == pytest.approx(ideal_bubble(p, m))
    assert result.busy == [3.0 * m] * p


@pytest.mark.parametrize("p,m", SIZES)
def test_in_flight_activations(p, m):
    assert replay(gpipe(p, m)).peak_in_flight == [m] * p
    assert replay(one_f_one_b(p, m)).peak_in_flight == [min(p - s, m) for s in range(p)]


def test_1f1b_order_and_pairing():
    plan = one_f_one_b(3, 4)
    assert format_schedule(plan).splitlines() == [
        "stage 0: F0 [S0] F1 [S1] F2 [S2 r0] B0 F3 [S3 r1] B1 [r2] B2 [r3] B3",
        "stage 1: [R0] F0 [S0 R1] F1 [S1 r0] B0 [s0 R2] F2 [S2 r1] B1 [s1 R3] F3 [S3 r2] B2 [s2 r3] B3 [s3]",
        "stage 2: [R0] F0 B0 [s0 R1] F1 B1 [s1 R2] F2 B2 [s2 R3] F3 B3 [s3]",
    ]
    # steady state: "send activation forward" and "receive gradient backward" are one exchange
    groups = [g for g in exchanges(plan[1]) if isinstance(g, tuple)]
    assert (Action(SEND_ACT, 2), Action(RECV_GRAD, 1)) in groups


def test_gpipe_order():
    assert format_schedule(gpipe(2, 2)).splitlines() == [
        "stage 0: F0 [S0] F1 [S1 r0] B0 [r1] B1",
        "stage 1: [R0] F0 [R1] F1 B0 [s0] B1 [s1]",
    ]


def test_unequal_stages_are_paced_by_the_slowest():
    # forward + backward per stage: 3, 3, 6, 3; the slow stage works all the time it
    # can: after the two forwards before it, until the two backwards after it
    scale = [1, 1, 2, 1]
    cost = lambda s, a: {FORWARD: 1.0, BACKWARD: 2.0}.get(a.op, 0.0) * scale[s]  # noqa: E731
    for m in (4, 8):
        for fn in SCHEDULES:
            r = replay(fn(4, m), cost)
            assert 6 * m + (1 + 1) + (2 + 2) <= r.makespan <= 6 * (m + 4 - 1)
            assert r.busy == [3 * m * k for k in scale]
            assert r.bubble > ideal_bubble(4, m)
        assert replay(one_f_one_b(4, m), cost).makespan == pytest.approx(6 * m + 7)


def test_message_latency_adds_to_makespan():
    cost = {FORWARD: 1.0, BACKWARD: 2.0, SEND_ACT: 0.5, RECV_ACT: 0.5, SEND_GRAD: 0.5, RECV_GRAD: 0.5}
    assert replay(one_f_one_b(2, 4), cost).makespan > replay(one_f_one_b(2, 4)).makespan


def test_more_stages_than_microbatches_is_refused():
    for fn in SCHEDULES:
        with pytest.raises(UsageError, match="at least as many micro-batches as stages"):
            fn(4, 3)
        with pytest.raises(UsageError):
            fn(0, 3)


def test_schedule_names():
    assert get_schedule("GPipe") is gpipe
    assert get_schedule("1f1b") is one_f_one_b
    assert get_schedule("one_f_one_b") is one_f_one_b
    with pytest.raises(UsageError, match="unknown"):
        get_schedule("zero-bubble")


def A(op, mb):
    return Action(op, mb)


def test_simulator_detects_deadlock():
    # stage 0 waits for a gradient before sending the activation that produces it
    plan = [
        [A(FORWARD, 0), A(RECV_GRAD, 0), A(BACKWARD, 0), A(FORWARD, 1), A(SEND_ACT, 0)],
        [A(RECV_ACT, 0), A(FORWARD, 0), A(BACKWARD, 0), A(SEND_GRAD, 0)],
    ]
    with pytest.raises(DeadlockError, match="stage 0 waits in \\[recv_grad\\(0\\)\\]"):
        replay(plan)


def test_simulator_detects_malformed_schedules():
    swapped = gpipe(2, 2)
    i, j = swapped[1].index(A(RECV_ACT, 0)), swapped[1].index(A(RECV_ACT, 1))
    swapped[1][i], swapped[1][j] = swapped[1][j], swapped[1][i]
    with pytest.raises(ScheduleError):
        replay(swapped)
    early = [[A(BACKWARD, 0), A(FORWARD, 0)]]
    with pytest.raises(ScheduleError, match="before forward"):
        replay(early)
    missing = gpipe(2, 2)
    missing[1].remove(A(BACKWARD, 1))
    with pytest.raises(ScheduleError):
        replay(missing)
    send_first = [[A(SEND_ACT, 0), A(FORWARD, 0), A(RECV_GRAD, 0), A(BACKWARD, 0)],
                  [A(RECV_ACT, 0), A(FORWARD, 0), A(BACKWARD, 0), A(SEND_GRAD, 0)]]
    with pytest.raises(ScheduleError, match="before forward"):
        replay(send_first)
