"""The web client and the ops dashboard in Chromium (web/static/)."""
