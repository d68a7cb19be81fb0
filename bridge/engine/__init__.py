"""The embedded `local` realtime provider: session cores, server, responder (speech services: bridge.speech).

Only bridge.app (and bridge.web) import this package; calls reach it through the realtime protocol.
"""
