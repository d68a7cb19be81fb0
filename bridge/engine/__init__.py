"""The embedded `local` realtime provider: VAD, speech recognition, responder, speech synthesis."""
