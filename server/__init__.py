"""The HTTP API server: accounts, posts, follows, likes, feeds (DESIGN.md "HTTP API")."""
