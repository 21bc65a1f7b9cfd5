"""Shared by the ranked feed's tests."""

from __future__ import annotations

import dataclasses

import pytest

from core.settings import Settings


@pytest.fixture
def ranked_settings(settings: Settings) -> Settings:
    """A generous ranking budget: these tests are about orders and what ranked pages log,
    not this busy machine's speed (over budget, a page is served chronologically)."""
    return dataclasses.replace(settings, ranking_budget_ms=5000)
