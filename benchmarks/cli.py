"""Command-line pieces shared by the benchmarks; imports no JAX (parsers run before it starts)."""

import argparse


def add_depth_argument(ap: argparse.ArgumentParser) -> None:
    """--depth: the CIFAR ResNet's depth 6n + 2 (n blocks per stage); the paper's is 32."""
    ap.add_argument("--depth", type=int, default=32, help="ResNet depth 6n+2: 8, 14, 20, 32, ...")


def check_depth(ap: argparse.ArgumentParser, depth: int) -> None:
    """An argparse error (exit 2) naming the allowed values unless depth = 6n + 2, n >= 1."""
    if depth < 8 or (depth - 2) % 6:
        ap.error(f"--depth: {depth}; allowed values: 6n+2 for n >= 1 (8, 14, 20, 32, ...)")


def depth_suffix(depth: int) -> str:
    """Results-file suffix: none for the paper's ResNet-32, so other depths never overwrite it."""
    return "" if depth == 32 else f"_d{depth}"
