"""Tests of core/: what every service shares."""
