"""The whole system: processes and servers killed or missing, the docs and packaging."""
