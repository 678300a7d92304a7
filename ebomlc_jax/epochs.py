"""Epoch runners: one compiled `lax.scan` per epoch on the device, or a step loop.

Inputs: "device" (the whole training set on the device, batches gathered there), "host"
(NumPy gather on the host) and "tf_data" (tf.data gathers in its own threads, for data too large
for device memory). Every path takes the same batch indices from `data.pipeline` and finishes
batches with the same `data.device.finish_batch`, so they train on identical batches.
Several seeds run as one program by vmapping the epoch over (state, per-seed data, keys).
A method's epoch-level hook (`Method.epoch_pass` / `begin_epoch`) runs before the epoch it names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ebomlc_jax import evaluate, parallel
from ebomlc_jax.data import device as dd
from ebomlc_jax.data import pipeline
from ebomlc_jax.data.pipeline import NoisyLabelData
from ebomlc_jax.methods import Method

PyTree = Any
Measurements = dict[str, np.ndarray]  # name -> [steps] (or [seeds, steps])


@dataclasses.dataclass
class Runner:
    """Owns the device-resident data and the compiled epoch of one run (one or several seeds).

    The config-level rules (inputs, modes, seeds and devices) are checked by `validate`.
    """

    method: Method
    spec: dd.BatchSpec
    datas: list[NoisyLabelData]
    seeds: list[int]
    input: str = "device"
    scan: bool = True
    mode: str = "jit"
    num_devices: int = 1
    seeds_mode: str = "vmap"
    pass_batch_size: int = 500  # batches of a method's epoch pass (Method.epoch_pass)
    # Progress inside an epoch: on_report(step, {name: value}) after about every `report_every`
    # steps (0: never), with the 1-based step and the mean over the steps since the last report
    # (and over seeds) of the measurements named in `shown`; never at an epoch's last step.
    report_every: int = 0
    on_report: Callable[[int, dict], None] | None = None
    shown: tuple[str, ...] = ()

    def __post_init__(self):
        self.mesh = parallel.make_mesh(self.num_devices) if self.mode == "jit" else None
        put = (
            (lambda x: jax.device_put(x, parallel.replicated(self.mesh)))
            if self.mesh is not None
            else jax.device_put
        )
        self.data = dd.place_data(self.datas, self.seeds, put, self.seeds_mode)
        self._streams: tuple[Iterator, Iterator] | None = None
        self._next_step: int | None = None
        self._build()

    # ------------------------------------------------------------------ compiled pieces
    def _build(self) -> None:
        method, spec, mesh, over_seeds = self.method, self.spec, self.mesh, self.data.over_seeds

        chunk = self.chunk

        def scan_steps(state, shared, per_seed, keys, epoch, offset):
            """Steps offset, ..., offset + chunk - 1 of training epoch `epoch`."""
            rows = dd.noisy_epoch_rows(keys, epoch, spec)
            rows = jax.lax.dynamic_slice_in_dim(rows, offset, chunk)
            steps = epoch * spec.steps_per_epoch + offset + jnp.arange(chunk)

            def body(state, xs):
                step, noisy_rows = xs
                batches = dd.train_batches(shared, per_seed, keys, step, noisy_rows, spec)
                return method.step(state, *parallel.constrain_batch(batches, mesh))

            return jax.lax.scan(body, state, (steps, rows))

        self._scan_steps = jax.jit(
            over_seeds(scan_steps, (0, None, 0, 0, None, None)), donate_argnums=0
        )
        self._epoch_rows = jax.jit(
            over_seeds(lambda keys, epoch: dd.noisy_epoch_rows(keys, epoch, spec), (0, None))
        )
        self._device_batches = jax.jit(
            over_seeds(
                lambda shared, per_seed, keys, step, rows: dd.train_batches(
                    shared, per_seed, keys, step, rows, spec
                ),
                (None, 0, 0, None, 0),
            )
        )

        def finish(raw_noisy, raw_clean, shared, keys, step):
            noisy_key, clean_key = dd.batch_keys(keys, step)
            return (
                dd.finish_batch(raw_noisy, shared, noisy_key, spec),
                dd.finish_batch(raw_clean, shared, clean_key, spec),
            )

        self._finish = jax.jit(finish)
        if self.mode == "pmap":
            self._step = jax.pmap(method.step, axis_name=parallel.DATA_AXIS, donate_argnums=0)
        else:
            self._step = jax.jit(over_seeds(method.step, (0, 0, 0)), donate_argnums=0)
        self._hooks: dict[str, Callable] = {}
        self._compiled: Callable | None = None

    @property
    def chunk(self) -> int:
        """Steps per compiled call of the scan: the largest divisor of the epoch's steps up to
        report_every (the whole epoch without reports), so one program runs every chunk and
        progress is printed between calls, with no host callback inside the program."""
        spe = self.spec.steps_per_epoch
        if not self.report_every or self.on_report is None or self.report_every >= spe:
            return spe
        return max(d for d in range(1, self.report_every + 1) if spe % d == 0)

    def _report_due(self, start: int, end: int) -> bool:
        """After the steps start..end-1 of an epoch: whether they crossed a multiple of
        report_every (never at the epoch's end, which has its own line)."""
        if not self.report_every or self.on_report is None:
            return False
        every, spe = self.report_every, self.spec.steps_per_epoch
        return end < spe and end // every > start // every

    def _report(self, step: int, meas: list[dict]) -> None:
        """on_report at `step` with the mean of the shown measurements since the last report."""
        shown = {
            k: float(np.mean([np.asarray(m[k]) for m in meas])) for k in self.shown if k in meas[0]
        }
        self.on_report(step, shown)

    def compile(self, state: PyTree, epoch: int) -> None:
        """Compile the scan now (the first run_epoch then only runs); other inputs compile
        their step at its first call."""
        if self.input == "device" and self.scan and self.mode == "jit":
            d = self.data
            self._compiled = self._scan_steps.lower(
                state, d.shared, d.per_seed, d.keys, epoch, 0
            ).compile()

    def _hook(self, which: str) -> Callable:
        """The compiled epoch pass over `which` followed by the method's begin_epoch."""
        if which not in self._hooks:
            per_example = evaluate.per_example_pass(
                self.method, self.data, which, self.pass_batch_size
            )

            def hook(state, shared, per_seed, epoch):
                outputs = per_example(state, shared, per_seed)
                return self.method.begin_epoch(state, epoch, outputs)

            self._hooks[which] = jax.jit(
                self.data.over_seeds(hook, (0, None, 0, None)), donate_argnums=0
            )
        return self._hooks[which]

    # ------------------------------------------------------------------ state
    def init_state(self) -> PyTree:
        """Fresh state (stacked over seeds when vmapped), placed for this parallel mode."""
        shared = self.data.shared
        sample = dd.finish_batch(
            {"image": shared["images"][:1]},
            shared,
            jax.random.key(0),
            dataclasses.replace(self.spec, augment=False),
        )["image"]
        init = self.data.over_seeds(self.method.init, (0, None))
        state = jax.jit(init)(self.data.keys["init"], sample)
        return self.place(state)

    def place(self, state: PyTree) -> PyTree:
        """Put a (restored or fresh) state where the compiled epoch expects it."""
        if self.mesh is not None:
            return jax.device_put(state, parallel.replicated(self.mesh))
        return state

    # ------------------------------------------------------------------ epochs
    def run_epoch(self, state: PyTree, epoch: int) -> tuple[PyTree, Measurements]:
        """Train one epoch (`epoch` counts from 0); returns the state and per-step measurements."""
        which = self.method.epoch_pass(epoch)
        if which is not None:
            state = self._hook(which)(state, self.data.shared, self.data.per_seed, epoch)
        if self.input == "device" and self.scan and self.mode == "jit":
            return self._scan_epoch(state, epoch)
        return self._loop_epoch(state, epoch)

    def _scan_epoch(self, state: PyTree, epoch: int) -> tuple[PyTree, Measurements]:
        d, spe, first = self.data, self.spec.steps_per_epoch, epoch * self.spec.steps_per_epoch
        run = self._compiled or self._scan_steps
        parts = []
        since = 0
        for offset in range(0, spe, self.chunk):
            state, meas = run(state, d.shared, d.per_seed, d.keys, epoch, offset)
            parts.append(meas)
            if self._report_due(offset, offset + self.chunk):
                parts[since:] = jax.device_get(parts[since:])
                self._report(first + offset + self.chunk, parts[since:])
                since = len(parts)
        meas = jax.device_get(parts)
        return state, {k: np.concatenate([m[k] for m in meas], axis=-1) for k in meas[0]}

    def _loop_epoch(self, state: PyTree, epoch: int) -> tuple[PyTree, Measurements]:
        spec, first = self.spec, epoch * self.spec.steps_per_epoch
        next_batches = self._batch_source(epoch, first)
        if self.mode == "pmap":
            state = parallel.replicate_for_pmap(state, self.num_devices)
        measurements, since = [], 0
        for step in range(first, first + spec.steps_per_epoch):
            noisy, clean = self._place_batches(*next_batches(step))
            state, meas = self._step(state, noisy, clean)
            measurements.append(meas)
            if self._report_due(step - first, step + 1 - first):
                self._report(step + 1, jax.device_get(measurements[since:]))
                since = len(measurements)
        if self.mode == "pmap":
            state, measurements = (
                parallel.unreplicate(state),
                [parallel.unreplicate(m) for m in measurements],
            )
        meas = jax.device_get(measurements)
        return state, {k: np.stack([m[k] for m in meas], axis=-1) for k in meas[0]}

    def _batch_source(self, epoch: int, first: int) -> Callable[[int], tuple[PyTree, PyTree]]:
        """step -> (noisy, clean) float batches on the device, for this input kind."""
        d = self.data
        if self.input == "device":
            rows = self._epoch_rows(d.keys, epoch)

            def from_device(step):
                row = rows[..., step - first, :]
                return self._device_batches(d.shared, d.per_seed, d.keys, step, row)

            return from_device
        if self._next_step != first:  # (re)start the host streams at this position
            self._streams = self._open_streams(first)
        noisy_it, clean_it = self._streams

        def from_host(step):
            self._next_step = step + 1
            raw_noisy, raw_clean = next(noisy_it), next(clean_it)
            return self._finish(raw_noisy, raw_clean, d.shared, d.keys, step)

        return from_host

    def _open_streams(self, start: int) -> tuple[Iterator, Iterator]:
        data, keys, spec = self.datas[0], self.data.keys, self.spec
        if self.input == "host":
            return (
                pipeline.noisy_stream(data, keys["noisy"], spec.batch_size, start),
                pipeline.clean_stream(data, keys["clean"], spec.clean_batch_size, start),
            )
        return (
            pipeline.tf_dataset(
                data, keys["noisy"], spec.batch_size, "noisy", start
            ).as_numpy_iterator(),
            pipeline.tf_dataset(
                data, keys["clean"], spec.clean_batch_size, "clean", start
            ).as_numpy_iterator(),
        )

    def _place_batches(self, noisy: PyTree, clean: PyTree) -> tuple[PyTree, PyTree]:
        if self.mode == "pmap":
            return (
                parallel.shard_for_pmap(noisy, self.num_devices),
                parallel.clean_for_pmap(clean, self.num_devices, self.method.clean_batch_parts),
            )
        if self.mesh is not None and self.mesh.size > 1:
            return jax.device_put((noisy, clean), parallel.batch_sharded(self.mesh))
        return noisy, clean
