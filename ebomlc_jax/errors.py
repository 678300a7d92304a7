"""Errors raised for bad input, before any compute starts, and the checks that raise them."""

import numbers
from collections.abc import Collection


class ConfigError(ValueError):
    """A config field or input has a value outside what is allowed; the message names both."""


def allowed(field: str, value, allowed_values) -> ConfigError:
    """A ConfigError saying `field` got `value` and listing the allowed values."""
    return ConfigError(f"{field}={value!r} is not allowed; allowed values: {allowed_values}")


def check_number(
    field: str,
    value,
    low: float,
    high: float | None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """`value` must be a number (an integer if `integer`) in the interval; the message writes it."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool
    )
    if not ok_type:
        raise allowed(field, value, f"{kind} in {interval}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # NaN compares false with everything
        raise allowed(field, value, f"{kind} in {interval}")


def check_choice(field: str, value, choices: Collection) -> None:
    """`value` must be one of `choices`."""
    if value not in choices:
        raise allowed(field, value, tuple(choices))


def check_bool(field: str, value) -> None:
    """`value` must be True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise allowed(field, value, (True, False))
