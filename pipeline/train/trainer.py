"""The training loop both training stages run: resume, steps, validation, checkpoints, preemption.

A stage supplies a `Trainer` (its networks and optimisers, one step, its validation); `train`
does the rest the same way for both:

- resume: `work/checkpoint.pt`, when present, restores the trainer, the step, the history and
  every RNG state, and warns when this process computes differently from the one that wrote it;
- steps: `trainer.step(step)` until `max_steps` or until the trainer says it is done (the
  expert's patience); every `eval_every` steps and at the last one, `trainer.validate(...)`;
- records: every step's row joins the history; rows go to MLflow every `log_every` steps and at
  every validation;
- checkpoints: after every validation, every `checkpoint_every` steps when set, and at the end;
- preemption: SIGTERM or SIGUSR1 on any rank checkpoints every rank at the same step boundary and
  raises `Preempted`; a re-run continues from there.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

from . import loop

log = logging.getLogger("pipeline")


class Trainer:
    """What a training stage gives `train`. `done` set by validate() ends training early."""

    name = "training"
    done = False

    def state_dict(self) -> dict:
        """Everything of the trainer a checkpoint keeps (the loop adds step, history, RNG states)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def step(self, step: int) -> dict:
        """One optimisation step from `step` (0-based): the row's training values (floats)."""
        raise NotImplementedError

    def validate(self, step: int, row: dict, rate: float) -> dict:
        """The validation values after `step` steps (the row so far, samples per second since this
        process started training); logging and the stage's own files are the trainer's."""
        raise NotImplementedError

    def done_record(self, step: int, history: list[dict]) -> dict:
        """What done.json keeps besides the step; rank 0 only, after the last checkpoint."""
        return {}


def train(rt: loop.Runtime, trainer: Trainer, work: Path, cfg: dict, tracker=None) -> tuple[int, list[dict]]:
    """Train to the end (or raise loop.Preempted after checkpointing); returns (step, history).
    `cfg`: the stage's params section (max_steps, eval_every, log_every, batch_size and, where
    the stage has it, checkpoint_every)."""
    max_steps, eval_every, log_every = cfg["max_steps"], cfg["eval_every"], cfg["log_every"]
    checkpoint_every = cfg.get("checkpoint_every")
    ckpt_path = Path(work) / "checkpoint.pt"
    step, history = 0, []
    if ckpt_path.is_file():
        state = loop.load_checkpoint(ckpt_path, rt.device)
        trainer.load_state_dict(state)
        step, history = state["step"], state["history"]
        loop.set_rng_state(state["rng"])
        if rt.is_main:
            log.info("resuming %s from %s at step %d", trainer.name, ckpt_path, step)
            loop.check_resume(rt, state.get("numerics"), trainer.name)
    stop = loop.StopRequest()

    def checkpoint():
        if rt.is_main:
            loop.save_checkpoint(
                ckpt_path,
                {
                    **trainer.state_dict(),
                    "step": step,
                    "history": history,
                    "rng": loop.rng_state(),
                    "numerics": loop.numerics(rt),
                },
            )

    started, first_step = time.time(), step
    try:
        while step < max_steps and not trainer.done:
            if loop.any_rank(rt, bool(stop)):  # every rank stops at the same step
                checkpoint()
                raise loop.Preempted(stop.signal or signal.SIGTERM, step)
            row = trainer.step(step)
            step += 1
            row = {"step": step, **row}
            validated = step % eval_every == 0 or step == max_steps
            if validated:
                rate = (step - first_step) * cfg["batch_size"] / max(1e-9, time.time() - started)
                row.update(trainer.validate(step, row, rate))
            history.append(row)
            if rt.is_main and tracker is not None and (step % log_every == 0 or validated):
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            if validated or (checkpoint_every and step % checkpoint_every == 0):
                checkpoint()
        checkpoint()
        if rt.is_main:
            done = {"step": step, **trainer.done_record(step, history)}
            (Path(work) / "done.json").write_text(json.dumps(done))
    finally:
        stop.restore()
        loop.teardown(rt)
    return step, history
