"""The gateway's own protocols on the listening socket: the first request of every
connection (front), WebSocket upgrades and framing without aiohttp (handshake, frames,
websocket), their keepalive and tasks (connections), and the site serving them (site)."""
