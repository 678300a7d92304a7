"""Run a family of runs (the paper's tables, its ablations, the digits study) with `run.py`.

    python -m ebomlc_jax.sweep --root=DIR
        --family=table1|table2|k|rho|xi|variants|digits|digits_ablations [--methods=a,b]
        [--seeds=0,1,2] [--settings=a,b|all] [--set key=value ...] [--runs-per-device=N]
        [--print-commands] [--config=FILE]

A family is a grid of settings (a config file plus config overrides); each (setting, method, seed)
is one run, `python run.py --config=<file> --config.method.name=<m> --config.seed=<s>
<setting overrides> <method overrides> <--set overrides> --workdir=<workdir>`. Families:
  table1, table2  the 7 CIFAR-10 / CIFAR-100 configs of Tables I-II; every registered method
  k               EBOMLC, method.ebomlc.k in 1, 2, 5 on CIFAR-10 at 20/40/80% uniform (Fig. 7)
  rho             method.ebomlc.rho in 0.1, 0.2, 0.4, 0.8; CIFAR-10/100, 20/40/80% uniform (Fig. 8)
  xi              method.ebomlc.xi in 0.01, 0.05, 0.5, 1 on CIFAR-10 at 40% uniform (Fig. 9)
  variants        method.ebomlc.variant paper | reference on the table settings; by default the
                  40%/80% uniform and 40% flip cells of both datasets (--settings=all: all 14)
  digits          configs/digits_study.py at 60% uniform and 40% flip noise; every method
  digits_ablations  EBOMLC's k, rho and xi (the values above) on configs/digits_study.py, 60%
                  uniform noise: the ablations a CPU can run
The table and digits families run the CE floors as three methods: `ce`, `ce-noisy`, `ce-clean`
(method ce with method.ce.train_on=both|noisy|clean). --config=FILE replaces the config file of
every setting (the overrides stay).

Layout under --root (stable names of [A-Za-z0-9._-]):
  <root>/<family>/<setting>/<method>/seed<s>/    the run directory of run.py (summary.json,
                                                 metrics.jsonl, config.json, checkpoints/, ...)
      sweep.json   what the sweep ran there: family, setting, method, seed, config file,
                   overrides {field: value} and the command (written before each start)
      sweep.log    run.py's output, appended per start, each start under a "=== sweep" line
Settings are named `<config stem>` (table1/2), `<stem>-k<k>`, `<stem>-rho<rho>`, `<stem>-xi<xi>`,
`<stem>-<variant>`, `digits_uniform60`, `digits_flip40` and `digits_uniform60-k<k>` (etc.); run
directories are grouped for tables by their summary.json and config, so the names are for people
and scripts.

A run is finished when its summary.json exists and its config's num_epochs equals that of the
workdir's config.json (the latest start) and of `--set num_epochs=N` if given; finished runs are
skipped, others are (re)started in their workdir, which resumes them from their last checkpoint.
The sweep itself does not import JAX: the method names come from a subprocess (about 1.4 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import sys
from collections.abc import Sequence

from ebomlc_jax import sweep_runner
from ebomlc_jax.errors import ConfigError, allowed
from ebomlc_jax.sweep_grid import (
    DEFAULT_SETTINGS,
    FAMILIES,
    REPO,
    Setting,
    allowed_methods,
    method_overrides,
    registered_methods,
    registered_name,
)

FIELD = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclasses.dataclass(frozen=True)
class Run:
    """One (setting, method, seed) of a sweep and where it runs."""

    family: str
    setting: Setting
    method: str  # the sweep's name: a registered method or a CE floor (ce-noisy, ce-clean)
    seed: int
    config: pathlib.Path  # absolute config file
    overrides: tuple[tuple[str, str], ...]  # setting, method and --set overrides, in that order
    workdir: pathlib.Path

    @property
    def name(self) -> str:
        """'<family>/<setting>/<method>/seed<s>': the run's path under the root."""
        return f"{self.family}/{self.setting.name}/{self.method}/seed{self.seed}"

    def command(self, python: str = sys.executable) -> list[str]:
        """The run.py command line of this run."""
        registered = registered_name(self.method)
        return [
            python,
            str(REPO / "run.py"),
            f"--config={self.config}",
            f"--config.method.name={registered}",
            f"--config.seed={self.seed}",
            *(f"--config.{k}={v}" for k, v in self.overrides),
            f"--workdir={self.workdir}",
        ]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _pick(arg: str, value: str, choices: Sequence[str], extra: tuple[str, ...] = ()) -> list[str]:
    """The comma-separated names of `value`, each one of `choices` and none twice; ConfigError
    naming `arg` and the choices (and `extra`, the other values it takes) otherwise."""
    given = _csv(value)
    for name in given or [value]:
        if name not in choices or given.count(name) > 1:
            raise allowed(arg, name, (*choices, *extra))
    return given


def _seeds(value: str) -> list[int]:
    items = _csv(value)
    if not items or any(not s.isdigit() for s in items) or len(set(items)) < len(items):
        raise allowed("--seeds", value, "distinct integers >= 0, comma-separated, e.g. 0,1,2")
    return [int(s) for s in items]


def _sets(values: Sequence[str], reserved: set[str]) -> tuple[tuple[str, str], ...]:
    """--set key=value pairs; a malformed one, or one of a field the sweep sets, is refused."""
    out = []
    for item in values:
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("config.")
        if not eq or not FIELD.fullmatch(key):
            raise allowed("--set", item, "key=value with a dotted config field, e.g. num_epochs=1")
        if key in reserved:
            raise allowed(
                "--set", item, f"a field the sweep does not set (it sets {sorted(reserved)})"
            )
        out.append((key, value))
    return tuple(out)


def plan(args: argparse.Namespace) -> tuple[list[Run], int | None]:
    """The sweep's runs, in order (seed, setting, method), and the --set num_epochs if given;
    ConfigError on bad arguments, before anything runs."""
    family = args.family
    if family not in FAMILIES:
        raise allowed("--family", family, tuple(FAMILIES))
    grid = {s.name: s for s in FAMILIES[family]}
    if args.settings is None:
        names = list(DEFAULT_SETTINGS.get(family, grid))
    elif args.settings == "all":
        names = list(grid)
    else:
        names = _pick("--settings", args.settings, tuple(grid), ("all",))
    settings = [grid[n] for n in names]
    choices = allowed_methods(family, registered_methods())
    methods = list(choices) if args.methods is None else _pick("--methods", args.methods, choices)
    by_method = method_overrides(registered_methods())
    seeds = _seeds(args.seeds)
    reserved = {"method.name", "seed", "num_parallel_seeds"}
    reserved |= {k for s in settings for k, _ in s.overrides}
    reserved |= {k for m in methods for k, _ in by_method.get(m, ())}
    sets = _sets(args.set or [], reserved)
    epochs = dict(sets).get("num_epochs")
    if epochs is not None and (not epochs.strip().isdigit() or int(epochs) < 1):
        raise allowed("--set", f"num_epochs={epochs}", "num_epochs=<an integer >= 1>")
    configs = {}
    for s in settings:
        path = pathlib.Path(args.config).absolute() if args.config else REPO / s.config
        if path.suffix != ".py" or not path.is_file():
            if args.config:
                raise allowed("--config", args.config, "an existing .py file with get_config()")
            raise ConfigError(
                f"--family={family} needs {s.config}, which is missing; pass --config"
            )
        configs[s.name] = path
    root = pathlib.Path(args.root).absolute()
    runs = [
        Run(
            family,
            s,
            m,
            seed,
            configs[s.name],
            s.overrides + by_method.get(m, ()) + sets,
            root / family / s.name / m / f"seed{seed}",
        )
        for seed in seeds
        for s in settings
        for m in methods
    ]
    return runs, int(epochs) if epochs is not None else None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        options = ", ".join(a.option_strings[0] for a in self._actions if a.option_strings)
        raise ConfigError(f"{message}; allowed arguments: {options}")


def parser() -> argparse.ArgumentParser:
    """The sweep's arguments; a bad one raises a one-line ConfigError (not argparse's exit)."""
    p = _Parser(prog="python -m ebomlc_jax.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="directory of the sweep's run directories")
    p.add_argument("--family", required=True, help=", ".join(FAMILIES))
    p.add_argument("--methods", help="comma-separated; default: the family's methods")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument(
        "--settings", help="comma-separated setting names, or all (default: the family's)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override, repeatable"
    )
    p.add_argument("--runs-per-device", type=str, default="1", help="concurrent runs per device")
    p.add_argument("--print-commands", action="store_true", help="print the pending runs' commands")
    p.add_argument("--config", help="config file replacing the family's")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2: bad arguments, 1: a run failed)."""
    try:
        args = parser().parse_args(argv)
        runs, epochs = plan(args)
        per_device = args.runs_per_device
        if not per_device.isdigit() or int(per_device) < 1:
            raise allowed("--runs-per-device", per_device, "an integer >= 1")
        slots = None if args.print_commands else sweep_runner.slots(int(per_device))
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    pending = [r for r in runs if not sweep_runner.finished(r.workdir, epochs)]
    if args.print_commands:
        for r in pending:
            print(shlex.join(r.command()))
        print(f"{len(pending)} pending of {len(runs)} runs", file=sys.stderr)
        return 0
    return sweep_runner.run_all(runs, pending, slots)


if __name__ == "__main__":
    sys.exit(main())
