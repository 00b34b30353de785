"""Settings: the relationship policy, validation, the environment, and atomic replacement."""

from __future__ import annotations

import pytest

import jobtrace
from jobtrace._internal import config
from jobtrace._internal.config import Settings, get_settings, reset_settings, update_settings
from jobtrace._internal.producer import _choose_relationship


def test_defaults_match_the_documentation() -> None:
    """Defaults: ``child``, link past 1000 children or an hour's delay, args recorded."""
    settings = Settings()
    assert settings.relationship == "child"
    assert settings.link_after_fanout == 1000
    assert settings.link_after_delay == 3600.0
    assert settings.record_args is True
    assert settings.error_on_retry is False
    assert {"password", "token", "secret", "authorization", "api_key"} <= settings.redact_keys


def test_update_settings_swaps_a_new_snapshot() -> None:
    """``update_settings`` returns a new snapshot and leaves the old one unchanged."""
    before = get_settings()
    after = update_settings(relationship="link", max_args_length=10)
    assert get_settings() is after
    assert (after.relationship, after.max_args_length) == ("link", 10)
    assert before.relationship == "child"


def test_configure_changes_only_what_it_is_given(telemetry: object) -> None:
    """``configure`` applies the policy arguments it gets and keeps the rest."""
    update_settings(max_args_length=99)
    jobtrace.configure(relationship="none", link_after_fanout=None, record=False)
    settings = get_settings()
    assert (settings.relationship, settings.link_after_fanout) == ("none", None)
    assert settings.max_args_length == 99


@pytest.mark.parametrize(
    "changes",
    [{"relationship": "sibling"}, {"relationship_by_name": {"Job": "parent"}}],
)
def test_bad_relationships_are_rejected(changes: dict[str, object]) -> None:
    """An unknown relationship, global or per name, raises ``ValueError`` and changes nothing."""
    before = get_settings()
    with pytest.raises(ValueError, match="relationship must be one of"):
        update_settings(**changes)
    assert get_settings() is before


def test_unknown_setting_is_rejected() -> None:
    """A misspelt setting raises ``TypeError`` instead of being ignored."""
    with pytest.raises(TypeError):
        update_settings(relationshp="link")


def test_redact_keys_are_lower_cased() -> None:
    """``redact_keys`` given as a string or in any case is stored lower-cased."""
    assert update_settings(redact_keys="SSN").redact_keys == frozenset({"ssn"})
    assert update_settings(redact_keys=["Card", "PIN"]).redact_keys == frozenset({"card", "pin"})


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """``JOBTRACE_RELATIONSHIP`` and ``JOBTRACE_RECORD_ARGS`` tune a worker without code."""
    monkeypatch.setenv("JOBTRACE_RELATIONSHIP", "link")
    monkeypatch.setenv("JOBTRACE_RECORD_ARGS", "0")
    reset_settings()
    assert (get_settings().relationship, get_settings().record_args) == ("link", False)
    monkeypatch.setenv("JOBTRACE_RELATIONSHIP", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        reset_settings()
    assert config.get_settings().relationship == "link"


def test_relationship_for_a_name_falls_back_to_the_default() -> None:
    """Per-name relationships apply to their names; others get the default."""
    settings = Settings(relationship="link", relationship_by_name={"Audit": "none"})
    assert settings.relationship_for("Audit") == "none"
    assert settings.relationship_for("Other") == "link"


@pytest.mark.parametrize(
    ("requested", "configured", "fanout", "delay", "expected"),
    [
        (None, "child", 0, None, "child"),
        ("none", "child", 5000, None, "none"),
        (None, "child", 1001, None, "link"),
        (None, "child", 1000, None, "child"),
        (None, "child", 0, 3601.0, "link"),
        (None, "child", 0, 3600.0, "child"),
        (None, "none", 5000, 99999.0, "none"),
    ],
)
def test_choose_relationship(
    requested: str | None, configured: str, fanout: int, delay: float | None, expected: str
) -> None:
    """The call's choice wins; only a configured ``child`` turns into ``link`` automatically."""
    settings = Settings(relationship=configured)  # type: ignore[arg-type]
    chosen = _choose_relationship(settings, "Job", requested, fanout, delay)  # type: ignore[arg-type]
    assert chosen == expected
