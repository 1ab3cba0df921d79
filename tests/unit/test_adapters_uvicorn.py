"""uvicorn's internals (handserve/adapters/uvicorn.py) are where the header guard expects."""

from __future__ import annotations

import pytest

from handserve.adapters import uvicorn as adapter


def test_the_installed_uvicorn_has_every_internal_the_header_guard_uses() -> None:
    found = adapter.problems()
    assert found == [], "uvicorn moved what service/connections.py relies on:\n" + "\n".join(found)


def test_a_protocol_without_the_attributes_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare:
        def __init__(self) -> None:
            self.state = None  # none of cycle, timeout_keep_alive, loop, client, transport

    monkeypatch.setattr(adapter, "auto_protocol", lambda: Bare)
    monkeypatch.setattr(adapter, "_module_source", lambda protocol: "")  # no request cycle
    found = adapter.problems()
    assert any(
        "no longer sets cycle, timeout_keep_alive, loop, client, transport" in f for f in found
    )
    assert any("response_complete" in f for f in found)
    assert all(f.startswith("uvicorn ") for f in found)
