"""The learning-rate schedule follows training progress in epochs, so a resume at another world
size (other steps per epoch at the same per-worker batch) continues the same curve."""

from __future__ import annotations

import pytest
import torch

from unet_core.config import TrainConfig
from unet_core.engine import make_scheduler
from unet_core.schedule import FLOOR, lr_factor, steps_per_epoch

PEAK = 1e-2
CFG = TrainConfig(epochs=4, lr=PEAK, warmup_epochs=1.0)
ROWS, BATCH = 48, 4  # 12 steps per epoch on 1 worker, 6 on 2


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=CFG.lr)


def _run(scheduler, steps: int) -> list[float]:
    """The lr of each of the next `steps` steps; at each epoch boundary start_epoch, as the
    worker loop calls it."""
    lrs = []
    per_epoch = scheduler.steps_per_epoch
    first = round(scheduler.progress * per_epoch)
    for index in range(first, first + steps):
        if index % per_epoch == 0:
            scheduler.start_epoch(index // per_epoch)
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _at(progress: float) -> float:
    return PEAK * lr_factor(progress, epochs=CFG.epochs, warmup_epochs=CFG.warmup_epochs)


def test_steps_per_epoch_follow_the_world_size():
    assert steps_per_epoch(ROWS, world_size=1, batch_size=BATCH) == 12
    assert steps_per_epoch(ROWS, world_size=2, batch_size=BATCH) == 6
    assert steps_per_epoch(10, world_size=3, batch_size=4) == 1  # 3 rows each, one partial batch
    assert steps_per_epoch(1, world_size=2, batch_size=4) == 1


def test_curve_warms_up_then_decays_to_the_floor():
    assert _at(0.0) == pytest.approx(PEAK * FLOOR)
    assert _at(0.5) == pytest.approx(PEAK * (FLOOR + (1 - FLOOR) / 2))
    assert _at(1.0) == pytest.approx(PEAK)
    assert _at(2.5) == pytest.approx(PEAK * (FLOOR + (1 - FLOOR) / 2))
    assert _at(4.0) == pytest.approx(PEAK * FLOOR)
    assert _at(9.0) == pytest.approx(PEAK * FLOOR)
    no_warmup = lr_factor(0.0, epochs=2, warmup_epochs=0.0)
    assert no_warmup == pytest.approx(1.0)
    # a warm-up longer than the run is cut to the run
    assert lr_factor(1.0, epochs=2, warmup_epochs=5.0) == pytest.approx(FLOOR + (1 - FLOOR) / 2)


def test_resume_at_another_world_size_continues_the_curve():
    world1 = steps_per_epoch(ROWS, world_size=1, batch_size=BATCH)
    world2 = steps_per_epoch(ROWS, world_size=2, batch_size=BATCH)
    # 1.5 epochs at world size 1, then the state is saved (as train_state.pt holds it) ...
    first = make_scheduler(_optimizer(), CFG, steps_per_epoch=world1)
    _run(first, world1 * 3 // 2)
    assert first.progress == pytest.approx(1.5)
    state = first.state_dict()

    # ... and restored at world size 2, after the optimizer as the worker loop does
    optimizer = _optimizer()
    optimizer.load_state_dict(first.optimizer.state_dict())
    resumed = make_scheduler(optimizer, CFG, steps_per_epoch=world2)
    resumed.load_state_dict(state)
    assert resumed.progress == pytest.approx(1.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_at(1.5))
    rest = _run(resumed, CFG.epochs * world2 - world2 * 3 // 2)

    # the same lrs as a run at world size 2 from the start, over the same steps
    straight = _run(make_scheduler(_optimizer(), CFG, steps_per_epoch=world2), CFG.epochs * world2)
    assert rest == pytest.approx(straight[world2 * 3 // 2 :], rel=1e-9)
    # and on the curve: step k after the resume starts at progress 1.5 + k / world2
    assert rest == pytest.approx([_at(1.5 + k / world2) for k in range(len(rest))], rel=1e-9)
    # the last epoch ends on the final value
    assert resumed.progress == pytest.approx(CFG.epochs)
    assert resumed.get_last_lr()[0] == pytest.approx(PEAK * FLOOR)
    assert rest[-1] < _at(CFG.epochs - 1)


def test_a_step_counter_would_have_misaligned():
    """What the progress state fixes: 18 steps at 12 per epoch are 1.5 epochs, but read at 6 per
    epoch they would be 3 (the lr near the end of the decay instead of its middle)."""
    first = make_scheduler(_optimizer(), CFG, steps_per_epoch=12)
    _run(first, 18)
    resumed = make_scheduler(_optimizer(), CFG, steps_per_epoch=6)
    resumed.load_state_dict(first.state_dict())
    assert resumed.progress == pytest.approx(1.5)
    assert abs(_at(18 / 6) - _at(1.5)) > PEAK / 4


def test_old_step_counting_state_loads_and_aligns_on_the_epoch():
    """Checkpoints written with LambdaLR hold only a step count; they were written at the end of
    an epoch, and the worker loop's start_epoch puts progress back on that boundary."""
    old_optimizer = _optimizer()
    old = torch.optim.lr_scheduler.LambdaLR(old_optimizer, lambda step: 1.0)
    for _ in range(24):  # 2 epochs of 12 steps
        old_optimizer.step()
        old.step()
    scheduler = make_scheduler(_optimizer(), CFG, steps_per_epoch=6)  # now world size 2
    scheduler.load_state_dict(old.state_dict())
    scheduler.start_epoch(2)
    assert scheduler.progress == 2.0
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(_at(2.0))
    assert scheduler.last_epoch == 24


def test_step_takes_no_epoch():
    scheduler = make_scheduler(_optimizer(), CFG, steps_per_epoch=4)
    with pytest.raises(TypeError, match="start_epoch"):
        scheduler.step(3)
