"""Tests of the ranked feed (ranking/, server/ranked.py)."""
