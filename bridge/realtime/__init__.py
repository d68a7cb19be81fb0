"""OpenAI Realtime GA protocol: typed events, session state, websocket client."""
