"""Tests of the API server (server/), against the real stack."""
