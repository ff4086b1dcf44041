"""The framework internals serving/framework.py patches still have the shape its patches rely on, and the check
notices when one does not (an upgrade of BentoML or uvicorn then fails here, not quietly in production)."""

from __future__ import annotations

from uvicorn import config as uvicorn_config

from serving import framework


def test_every_patched_internal_has_the_shape_its_patch_relies_on():
    assert framework.problems() == []


def test_a_changed_internal_is_named(monkeypatch):
    monkeypatch.delitem(uvicorn_config.HTTP_PROTOCOLS, "auto")
    monkeypatch.setattr(framework.AutoHTTPProtocol, "on_response_complete", None)
    assert framework.problems() == [
        "uvicorn.config.HTTP_PROTOCOLS has no 'auto' entry to point at GuardedHTTPProtocol",
        "uvicorn's HTTP protocol has no method on_response_complete",
    ]


def test_the_guard_is_uvicorns_default_protocol_once_installed(monkeypatch):
    monkeypatch.setitem(uvicorn_config.HTTP_PROTOCOLS, "auto", uvicorn_config.HTTP_PROTOCOLS["auto"])
    for name in ("read_timeout", "max_connections"):  # restored afterwards
        monkeypatch.setattr(framework.GuardedHTTPProtocol, name, getattr(framework.GuardedHTTPProtocol, name))
    framework.guard_connections(7.0, 9)
    assert uvicorn_config.HTTP_PROTOCOLS["auto"] == "serving.framework:GuardedHTTPProtocol"
    assert (framework.GuardedHTTPProtocol.read_timeout, framework.GuardedHTTPProtocol.max_connections) == (7.0, 9)


def test_bentomls_process_manager_checks_its_workers_twice_a_second(monkeypatch):
    from bentoml._internal.utils import circus

    monkeypatch.setattr(circus, "Arbiter", circus.Arbiter)  # restored afterwards
    assert framework.quick_respawn()
    arbiter = circus.create_standalone_arbiter([])  # what `bentoml serve` builds
    assert type(arbiter).__name__ == "QuickRespawnArbiter" and arbiter.check_delay == framework.RESPAWN_CHECK_S
