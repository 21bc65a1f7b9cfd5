"""Tests of the live gateway (gateway/)."""
