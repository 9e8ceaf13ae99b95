"""Data-parallel training: two gloo processes end with identical weights, equal to one process on the same
global batch (up to float summation order)."""

import os
import socket
from pathlib import Path

import msgspec
import safetensors.torch
import torch
import torch.multiprocessing as mp

from dualhrq.config import Config, load_config
from dualhrq.model import ModelInputs
from dualhrq.train.batches import TrainingSet
from dualhrq.train.distributed import DistContext, init_distributed, shutdown
from dualhrq.train.loop import new_trainer, run
from dualhrq.train.losses import Targets

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _config() -> Config:
    cfg = load_config(ROOT / "config" / "hrm_tiny.yaml")
    # Exploration and dropout on, so the test covers the random draws being sliced consistently per rank.
    train = msgspec.structs.replace(cfg.train, batch_size=8, warmup_steps=1, lr=1e-3, device="cpu",
                                    pattern_dropout=0.5)
    return msgspec.structs.replace(cfg, train=train, act=msgspec.structs.replace(cfg.act, exploration_prob=0.5))


def _data(cfg: Config, n: int = 64) -> TrainingSet:
    g = torch.Generator().manual_seed(7)
    targets = Targets(action=torch.randint(0, 5, (n,), generator=g), quantity=torch.rand(n, generator=g),
                      out_a=torch.randn(n, generator=g), out_b=torch.randn(n, generator=g),
                      action_return=torch.randn(n, generator=g), cost=torch.full((n,), 0.05),
                      regime=torch.randint(0, cfg.model.num_regimes, (n,), generator=g),
                      state=torch.randint(0, 3, (n,), generator=g))
    return TrainingSet(ModelInputs.random(cfg.model, n, seed=3), targets)


def _train(ctx: DistContext) -> dict[str, torch.Tensor]:
    cfg = _config()
    trainer = new_trainer(cfg, _data(cfg), ctx, STEPS)
    run(trainer, STEPS, None, progress=False)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    ctx = init_distributed("cpu")
    try:
        safetensors.torch.save_file(_train(ctx), os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_each_other_and_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [safetensors.torch.load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    single = _train(DistContext(0, 1, torch.device("cpu")))
    initial = new_trainer(_config(), _data(_config()), DistContext(0, 1, torch.device("cpu")), STEPS).model

    for name, w in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], w, rtol=1e-4, atol=1e-5, msg=f"{name}: DDP != single process")
    moved = sum(not torch.equal(w, initial.state_dict()[k]) for k, w in single.items())
    assert moved == len(single), "every parameter should have been updated (the comparison must be able to fail)"


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    import pytest

    from dualhrq.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="train.batch_size"):
        DistContext(0, 3, torch.device("cpu")).shard(8)
