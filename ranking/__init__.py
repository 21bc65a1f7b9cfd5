"""The ranked home feed ("For you"): features, the learned model, the scorer and the
training command. It never answers a request itself: server/ asks it to re-rank a page's
candidates and serves the chronological page whenever it cannot (ranking/service.py)."""
