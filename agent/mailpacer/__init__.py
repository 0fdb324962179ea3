"""mailpacer: a Trio agent that sends e-mail campaigns at exactly the pace asked."""

__version__ = "0.1.0"

__all__ = ["__version__"]
