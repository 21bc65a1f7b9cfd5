"""Tests of the push worker (push/) and the push stand-ins (standins/)."""
