"""Command-line pieces shared by the benchmarks; imports no JAX (parsers run before it starts)."""

import argparse

ALLOWED_DEPTHS = "6n+2 for n >= 1 (8, 14, 20, 32, ...)"


def depth(text: str) -> int:
    """argparse type of --depth: the CIFAR ResNet's depth 6n + 2 (n blocks per stage)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 8 or (value - 2) % 6:
        raise argparse.ArgumentTypeError(f"{text}; allowed values: {ALLOWED_DEPTHS}")
    return value


def add_depth_argument(ap: argparse.ArgumentParser) -> None:
    """--depth, checked as it is parsed (an argparse error naming the allowed values); paper: 32."""
    ap.add_argument("--depth", type=depth, default=32, help="ResNet depth 6n+2: 8, 14, 20, 32, ...")


def depth_suffix(depth: int) -> str:
    """Results-file suffix: none for the paper's ResNet-32, so other depths never overwrite it."""
    return "" if depth == 32 else f"_d{depth}"
