"""Shared foundation of every service: settings, ids, schemas, key and topic names, clients.

core/ never starts anything on import and never holds a connection in a module global;
services build what they need from a Settings value at their entry point.
"""
