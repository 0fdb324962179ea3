"""Pacing: how fast messages may go."""

from mailpacer.pacing.limits import RateLimiter

__all__ = ["RateLimiter"]
