"""The Starlette application: auth, pages, JSON API, WebSocket endpoint, hub."""
