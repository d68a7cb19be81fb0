"""Audio core: G.711 codec, streaming resampler, paced playout, voice activity detection."""
