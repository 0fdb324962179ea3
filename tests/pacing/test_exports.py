"""The package's public surface: everything in ``__all__`` exists and says where it lives."""

from __future__ import annotations

import mailpacer.pacing as pacing


def test_exported_members() -> None:
    assert sorted(pacing.__all__) == sorted(set(pacing.__all__))
    for name in pacing.__all__:
        member = getattr(pacing, name)
        module = getattr(member, "__module__", "mailpacer.pacing")
        assert module.startswith("mailpacer.pacing"), (name, module)
