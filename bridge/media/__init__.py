"""Audio with no knowledge of calls: G.711 and the one home of rates and formats (g711.py), streaming
resampler, paced playout, voice activity detection, echo canceller. Imports only bridge.errors."""
