"""Tests of the ranked feed (ranking/, server/feed/ranked.py)."""
