"""The OpenAI-compatible API under /v1: models, completions and chat completions.

`bodies` and `answers` hold OpenAI's request and response shapes; `choices` turns a
request into a run's n choices per prompt (batch rows of the engine); `views` shows a
run as OpenAI's answers and chunks, and `streams` frames those chunks for the shared
loop (`app.web.serving`); `completions` and `catalog` are the blueprints; `errors`
gives every /v1 error OpenAI's shape.
"""
