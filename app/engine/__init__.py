"""The engine: runs models on native threads. No Flask, no HTTP.

The contract, in one place:

- **What a worker accepts.** `ModelWorker.submit(work)` takes a `GenerationJob`
  (decoded with others in one batch, a forward pass per step) or a `ModelTask`
  (any function of the model and tokenizer, run between two steps). It raises
  `QueueFull` when `max_queue` items wait, and `WorkerClosed` once the worker is
  closed (the model was unloaded).
- **What a job emits.** `GenerationJob.events()` yields `TokenEvent*` and then one
  `DoneEvent` or one `ErrorEvent` (app/engine/events.py); `None` marks a silent
  interval, so a stream can send a keep-alive. `cancel()` ends the job before
  its next step.
- **What it needs from the model and tokenizer.** `CausalLM` and `Tokenizer`
  (app/engine/contract.py): a transformers causal LM called with a KV cache,
  and a tokenizer's `decode`.

Modules: `worker` (the thread and its queue), `job` (one request's state),
`running` (a group of running jobs: runs each round's plan), `plan` (what a round
runs, as a value), `pace` (how much prompt a round takes), `backlog` (a full
queue's Retry-After), `isolation` (a failed part ends only its own jobs), `batch`
(the KV-cache batch), `solo` (a prompt prefilled in chunks), `passes` (what the passes
share), `mixed` (mixed passes), `kvcache`, `sampling`, `stopping`,
`decoding` (incremental detokenization), `attention`, `tensors` (the wire encoding
of tensors), `threads` (hand-offs between native threads and gevent), `lean` (plain
decoding steps without transformers' Python) and `kernels` (steps in C).
"""

from app.engine.attention import HeadSelection
from app.engine.contract import CausalLM, Tokenizer, input_device
from app.engine.events import Alternative, DoneEvent, ErrorEvent, Event, TokenEvent
from app.engine.job import GenerationJob
from app.engine.lean import fused_candidate
from app.engine.sampling import SamplingParams
from app.engine.worker import ModelTask, ModelWorker, QueueFull, TaskAbandoned, WorkerClosed

__all__ = [
    "Alternative",
    "CausalLM",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "fused_candidate",
    "GenerationJob",
    "HeadSelection",
    "ModelTask",
    "ModelWorker",
    "QueueFull",
    "SamplingParams",
    "TaskAbandoned",
    "Tokenizer",
    "TokenEvent",
    "input_device",
    "WorkerClosed",
]
