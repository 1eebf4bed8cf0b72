"""The OpenAI-compatible API under /v1: models, completions and chat completions.

`bodies` and `answers` hold OpenAI's request and response shapes; `choices` runs a
request's n choices per prompt as batch rows of the engine; `completions` and
`catalog` are the blueprints; `errors` gives every /v1 error OpenAI's shape.
"""
