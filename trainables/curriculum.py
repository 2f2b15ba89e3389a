"""The curriculum as a Ray trainable: one loop, two executors.

    run_trial(config, report, state)     the loop: Curriculum.step() once per epoch, then report
    function_trainable(config)           executor "function": the loop inside the Tune trial itself
    train_driver(config)                 executor "train": the Tune trial builds a Train V2
      -> train_loop_per_worker(config)   TorchTrainer whose workers run the same loop (DDP, GPUs)

Both report the same metrics and checkpoints (a directory holding ``state.pt``: the trainable
state only). ``context`` (raytower._trial.TrialContext as a dict, bound with ``tune.with_parameters``
so it stays out of the trial's config) names what every trial shares: the bundle and the pretraining
artifacts, by path, and the resources.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from raytower._trial import TrialContext, local_copy
from raytower.data import Bundle
from raytower.names import TRIAL_STATE, train_run_name, val_key
from raytower.train.config import TrainConfig
from raytower.train.epochs import SCALARS, best_epoch, run_epochs
from raytower.train.loop import Curriculum
from raytower.train.run import read_checkpoint

STATE_FILE = TRIAL_STATE  # (the name the benchmarks and tests know it by)
# A Train worker that dies (a lost node) is restarted this often before its trial fails; Tune's own
# FailureConfig then restarts the trial itself.
WORKER_MAX_FAILURES = 2


def load_state(checkpoint) -> dict | None:
    """A checkpoint's state, loaded without unpickling code (weights_only)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_checkpoint(Path(d) / STATE_FILE)  # the checks --resume and export apply


def run_trial(config: dict, context: dict, report: Callable[[dict, dict], None], state: dict | None,
              rank: int = 0, world_size: int = 1, device: str = "cpu", tb_dir: str | None = None,
              report_again_when_done: bool = True) -> None:
    """Run the curriculum from ``state`` (or the start) to the last epoch, reporting every epoch."""
    shared = TrialContext.from_dict(context)
    torch.set_num_threads(shared.threads)
    cfg = TrainConfig.from_dict(config)
    # By path on the driver's node; elsewhere, this node's copy, fetched once from the storage path.
    bundle = Bundle(str(local_copy(shared.bundle, shared.artifact_store, "bundles", shared.bundle_key)))
    artifacts = shared.load_artifacts(cfg)
    run = Curriculum.create(cfg, bundle, artifacts, device=device, rank=rank, world_size=world_size)
    metric = val_key(shared.metric)
    if state is not None:
        run.load_state_dict(state)
    if run.done and run.history:
        # Restored after its last epoch. A Tune trial (the driver died between the report and the
        # end of the trial) must report its last row again, or Tune sees a trial that ends without
        # its metric. A restarted Train worker must not: its run already forwarded that row.
        if report_again_when_done:
            report(_tune_row(run.history[-1], best_epoch(run.history, metric), metric), run.state_dict())
        return
    # Nothing past a diverged epoch: run_epochs stops there, and the stopper records the reason.
    run_epochs(run, lambda row, best: report(_tune_row(row, best, metric), run.state_dict()),
               tb_dir=tb_dir if rank == 0 else None, metric=metric, hparams=config)


def _tune_row(step: dict, best: dict | None, metric: str = val_key()) -> dict:
    # The first keys are the columns of Ray's progress table.
    return {"epoch": step["epoch"], "stage": step["stage"], metric: step[metric],
            "best/" + metric: best[metric] if best else float("-inf"), **step}


def _reporter(report_fn, checkpoint_cls, rank: int = 0):
    import ray

    # Which Ray node ran each epoch: on a cluster, where a trial went after losing its node.
    node_id = ray.get_runtime_context().get_node_id()

    def report(row: dict, state: dict) -> None:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))} | {"node_id": node_id}
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:  # one copy of the state per epoch, from the first worker
                torch.save(state, os.path.join(d, STATE_FILE))
                report_fn(metrics, checkpoint=checkpoint_cls.from_directory(d))
            else:
                report_fn(metrics)

    return report


# --- executor "function": the loop runs in the Tune trial --------------------------------------


def function_trainable(config: dict, context: dict) -> None:
    from ray import tune

    state = load_state(tune.get_checkpoint())
    run_trial(config, context, _reporter(tune.report, tune.Checkpoint), state,
              tb_dir=tune.get_context().get_trial_dir())


# --- executor "train": a Train V2 TorchTrainer per trial ----------------------------------------


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    config, context = loop_config["config"], loop_config["context"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = str(ray.train.torch.get_device()) if context["use_gpu"] else "cpu"
    state = load_state(ray.train.get_checkpoint())
    run_trial(config, context, _reporter(ray.train.report, ray.train.Checkpoint, rank), state,
              rank=rank, world_size=world, device=device, tb_dir=loop_config["trial_dir"],
              report_again_when_done=False)


def train_driver(config: dict, context: dict) -> None:
    """A Tune trial that drives a TorchTrainer and forwards its reports to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = tune.get_context()
    shared = TrialContext.from_dict(context)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "context": context, "trial_dir": ctx.get_trial_dir()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=shared.workers, use_gpu=shared.use_gpu, resources_per_worker=shared.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            # A stable name per trial: a restarted trial finds its own Train run and resumes it.
            name=train_run_name(ctx.get_trial_id()),
            storage_path=shared.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=WORKER_MAX_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=val_key(shared.metric), checkpoint_score_order="max"),
        ),
    )
    trainer.fit()


__all__ = ["SCALARS", "function_trainable", "run_trial", "train_driver", "train_loop_per_worker"]
