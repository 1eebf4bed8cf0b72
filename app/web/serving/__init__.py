"""Serving a generation request, whatever its API: one loop, and framers that only encode.

The split follows LitServe's `LitSpec`: the server owns the loop (submit, read events,
cancel, account) and an API spec only turns what the loop hands it into bytes. Here
`run` holds a request's jobs (`Run`: prompts times n choices) and their one event
reader; `loop` serves a run as a stream (`stream`, through a `Framer`) or folds it for
one JSON answer (`fold`), and holds the checks and the error translation both APIs
share. The framers are `app.web.streams.StreamFramer` (native SSE) and
`app.web.v1.streams.ChunkFramer` (OpenAI chunks).
"""
