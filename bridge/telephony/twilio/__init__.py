"""The Twilio leg: Media Streams over a websocket, the voice and status webhooks, TwiML, REST.

- `messages` (typed Media Streams messages, parser, builders) and `stream` (the per-socket rules):
  protocol cores, no I/O.
- `leg`: `TwilioLeg`, one media-stream websocket as a `bridge.telephony.leg.Leg`.
- `routes`: `TwilioRoutes`, the HTTP and websocket routes (`/twilio/*`) and stream admission.
- `auth` (webhook signatures, stream tokens, public URLs), `twiml` (what the webhooks answer),
  `rest` (the REST API: call updates, `ivr-bridge twilio configure`), `call_registry` (what the
  bridge knows of each Twilio call), `continuation` (transfer or hang up once the stream ends).
"""
