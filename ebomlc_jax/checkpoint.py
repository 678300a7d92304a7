"""Checkpoints of the whole training state with orbax: async, atomic, last N plus the best.

A checkpoint is saved at the end of an epoch (its number is the count of finished epochs) and
holds the state (parameters, BN statistics, optimiser states, rng, step counter; the step counter
is the data-stream position, since batch order is a function of it) and a JSON record of the
loop's own bookkeeping (best clean accuracy so far, ...). orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint
intact; restoring falls back to an older checkpoint, with a warning, if the newest one is
unreadable (which it renames to `unreadable_<epoch>`), and raises `CheckpointError` if none
can be restored (never a silent restart).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

PyTree = Any
BEST_METRIC = "clean_accuracy"


class CheckpointError(RuntimeError):
    """No checkpoint in the workdir can be restored into this run's state."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(state: PyTree) -> PyTree:
    """Typed PRNG keys -> their raw uint32 data (what orbax stores)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def from_saveable(restored: PyTree, like: PyTree) -> PyTree:
    """Inverse of `to_saveable`, using `like` to know which leaves were keys."""
    return jax.tree.map(
        lambda r, x: jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if _is_key(x) else r,
        restored,
        like,
    )


def _saved_shapes(metadata: PyTree) -> dict[str, tuple[int, ...]]:
    """orbax parameter name -> shape, from a checkpoint's metadata tree."""
    return {m.name: tuple(m.shape) for m in jax.tree.leaves(metadata)}


def _live_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """orbax parameter name -> shape, for the arrays that would be restored into."""
    names = jax.tree.leaves(ocp.tree.get_param_names(tree, include_empty_nodes=False))
    return dict(zip(names, (tuple(jnp.shape(x)) for x in jax.tree.leaves(tree)), strict=True))


def shape_mismatches(saved: dict, wanted: dict, limit: int = 5) -> list[str]:
    """The first `limit` differences between two name -> shape maps, as text."""
    out = []
    for key in sorted(saved.keys() | wanted.keys()):
        if key not in wanted:
            out.append(f"{key}: in the checkpoint only")
        elif key not in saved:
            out.append(f"{key}: not in the checkpoint")
        elif saved[key] != wanted[key]:
            out.append(f"{key}: checkpoint {saved[key]}, this run {wanted[key]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


@contextlib.contextmanager
def _quiet_failed_reads():
    """Drop the "Event loop is closed" reports of a failed orbax restore (only those).

    When a restore fails (a corrupt checkpoint), orbax closes its event loop while tensorstore
    still completes the other reads; each completion's callback then fails to reach the closed
    loop and Python prints its traceback through `sys.unraisablehook`: 158 tracebacks for a
    corrupt checkpoint of the tests' tiny ResNet, after the one-line warning that says it all.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


class Checkpointer:
    """orbax CheckpointManager over `<workdir>/checkpoints`, keeping the last N and the best."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, asynchronous: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        policy = pp.AnyPreservationPolicy(
            [pp.LatestN(n=keep), pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1)]
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            # Named up front so that item_metadata can read a checkpoint before any restore.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "record": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=asynchronous,
            ),
        )

    def steps(self) -> list[int]:
        """Saved checkpoint numbers (finished epochs), oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state: PyTree, record: dict, best_metric: float) -> None:
        """Save after `epoch` finished epochs (asynchronously; `wait` to block)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(to_saveable(state)), record=ocp.args.JsonSave(record)
        )
        if not self._manager.save(epoch, args=args, metrics={BEST_METRIC: float(best_metric)}):
            raise CheckpointError(
                f"orbax skipped saving the checkpoint of epoch {epoch} in {self.directory} "
                f"(checkpoints there: {self.steps()})"
            )

    def restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict] | None:
        """(epoch, state, record) of the newest readable checkpoint; None if there is none.

        `like` is a state of the right structure, shapes and placement (e.g. a fresh init).
        """
        with _quiet_failed_reads():  # across all attempts: late reads of a failed one report
            return self._restore_latest(like)

    def _restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict] | None:
        target = to_saveable(like)  # concrete arrays: restore with their shapes and shardings
        wanted = _live_shapes(target)
        failures, unreadable = [], []
        for epoch in reversed(self.steps()):
            try:
                # Checked from the metadata first: a restore that fails on shapes leaves orbax's
                # other reads pending, and their tracebacks surface later, at garbage collection.
                saved = self._manager.item_metadata(epoch)["state"]
                wrong = saved is not None and shape_mismatches(_saved_shapes(saved), wanted)
                if wrong:
                    raise ValueError("saved by another model or config: " + "; ".join(wrong))
                restored = self._manager.restore(
                    epoch,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # noqa: BLE001 -- any failure: try the previous checkpoint
                failures.append(f"epoch {epoch}: {type(e).__name__}: {e}")
                unreadable.append(epoch)
                logging.warning("checkpoint %d in %s is unreadable (%s)", epoch, self.directory, e)
                continue
            if failures:
                logging.warning(
                    "fell back to the checkpoint of epoch %d; moved the unreadable ones to %s",
                    epoch,
                    ", ".join(self._set_aside(unreadable)),
                )
            return epoch, from_saveable(restored.state, like), dict(restored.record)
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored into this run's state "
                "(corrupt, or saved by an incompatible config/model):\n  "
                + "\n  ".join(failures)
                + "\nMove the directory away to start from scratch, or fix the config."
            )
        return None

    def _set_aside(self, epochs: list[int]) -> list[str]:
        """Rename unreadable checkpoints to `unreadable_<epoch>` (kept for inspection).

        Otherwise the retrained epochs could not be saved: orbax silently skips a save whose
        step is not above the newest one in the directory. On several hosts (one shared
        directory) process 0 renames and the others wait for it at a barrier.
        """
        moved = []
        if jax.process_index() == 0:
            for epoch in epochs:
                aside, n = self.directory / f"unreadable_{epoch}", 1
                while aside.exists():
                    n += 1
                    aside = self.directory / f"unreadable_{epoch}_{n}"
                (self.directory / str(epoch)).rename(aside)
                moved.append(aside.name)
        else:
            moved = [f"unreadable_{epoch} (renamed by process 0)" for epoch in epochs]
        multihost_utils.sync_global_devices("ebomlc_jax: unreadable checkpoints set aside")
        self._manager.reload()
        return moved

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.close()
