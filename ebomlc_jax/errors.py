"""Errors raised for bad input, before any compute starts."""


class ConfigError(ValueError):
    """A config field or input has a value outside what is allowed; the message names both."""


def allowed(field: str, value, allowed_values) -> ConfigError:
    """A ConfigError saying `field` got `value` and listing the allowed values."""
    return ConfigError(f"{field}={value!r} is not allowed; allowed values: {allowed_values}")
