"""OpenAI Realtime GA protocol: typed events, dialects, websocket client, providers, and the contract
shared with the embedded engine (local_engine.py)."""
