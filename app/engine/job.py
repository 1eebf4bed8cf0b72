"""One generation request as the engine runs it: its events, timing and cancel flag.

The request handler reads events with `events()` and may `cancel()`; the
model's worker thread calls `begin()` once, then `take()` once per step with the
token its batch chose for it (app/engine/sampling's BatchSampler, using this job's
`sampler`), or with the request's row of logits to choose from as a one-row batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from app.engine import tensors
from app.engine.attention import HeadSelection
from app.engine.contract import Tokenizer
from app.engine.decoding import IncrementalDecoder, special_ids
from app.engine.events import Alternative, DoneEvent, ErrorEvent, Event, TokenEvent
from app.engine.interventions import InterventionSet
from app.engine.sampling import Choice, Sampler, SamplingParams, choose_alone
from app.engine.stopping import StopMatcher
from app.engine.threads import Mailbox


class GenerationJob:
    """One request's generation, shared by the request handler and the worker thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stop: tuple[str, ...] = (),
        watch: HeadSelection | None = None,
        interventions: InterventionSet | None = None,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.watch = watch
        self.interventions = interventions  # hooks masked to its rows (see RunningGroup)
        self.cancelled = False  # set by the handler, read by the worker (atomic under the GIL)
        self.cancel_reason = "cancelled"
        self.generated = 0  # live count, read by the worker's stats
        self._mailbox = Mailbox()
        self._stop = StopMatcher(stop)
        self._times = {"submitted": time.perf_counter()}
        self._failed = False
        self.last_token: int | None = None  # the next step's input
        self._sampler: Sampler | None = None
        self._decoder: IncrementalDecoder | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self._special_ids: frozenset[int] = frozenset()
        self._tokenizer: Tokenizer | None = None

    # -- the request handler's side --

    def events(self, ping_seconds: float) -> Iterator[Event | None]:
        """Yield events until the job ends; None marks `ping_seconds` of silence."""
        while True:
            try:
                event = self._mailbox.get(ping_seconds)
            except TimeoutError:
                yield None
                continue
            yield event
            if not isinstance(event, TokenEvent):
                return

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the worker to stop this job before its next step."""
        if not self.cancelled:
            self.cancel_reason = reason
            self.cancelled = True

    # -- the worker thread's side --

    def begin(self, tokenizer: Tokenizer, eos_ids: frozenset[int], device: torch.device) -> None:
        """Prepare to generate: sampler, decoder, stop strings."""
        self._times["admitted"] = time.perf_counter()
        self._sampler = Sampler(self.params, self.prompt_ids, device)
        self._decoder = IncrementalDecoder(tokenizer, self.prompt_ids)
        self._eos_ids = eos_ids
        self._special_ids = special_ids(tokenizer)
        self._tokenizer = tokenizer

    @property
    def sampler(self) -> Sampler:
        """This job's sampling state (its penalties' memory and its random generator);
        RuntimeError before `begin` and after the job has ended."""
        if self._sampler is None:
            raise RuntimeError("the job has no sampler: not begun, or ended")
        return self._sampler

    def take(
        self,
        logits: torch.Tensor,
        attention: torch.Tensor | None = None,
        choice: Choice | None = None,
    ) -> bool:
        """Post this step's token; False once the job has ended.

        The token is `choice` when the batch has chosen it already with this job's
        `sampler`, else it is chosen here from the job's row of `logits` [vocab], as a
        one-row batch (the same algorithm, so the same token); a failed draw raises.
        """
        if choice is None:
            choice = choose_alone(logits, self.sampler)
        decoder = self._begun()[0]
        self._times.setdefault("first_token", time.perf_counter())
        self.generated += 1
        self.last_token = token_id = choice.token_id
        top = self._alternatives(choice)
        if token_id in self._eos_ids and not self.params.ignore_eos:
            self._post_token(choice, "", decoder.peek([token_id])[0], top, attention)
            return self._finish("eos")
        piece = decoder.push(token_id)
        text, stopped = self._stop.feed(piece)
        self._post_token(choice, text, piece, top, attention)
        if stopped:
            return self._finish("stop")
        if self.generated == self.params.max_new_tokens:
            return self._finish("length")
        return True

    def end_cancelled(self) -> None:
        """Close a job whose reader went away (or that was ended at shutdown)."""
        self._finish(self.cancel_reason)

    @property
    def failed(self) -> bool:
        """Whether the job ended with an error."""
        return self._failed

    @property
    def ended(self) -> bool:
        """Whether the job has posted its last event (done, or an error)."""
        return "finished" in self._times

    def fail(self, message: str, status: int = 500, code: str = "generation_failed") -> None:
        """Report a failure to the waiting handler (`status` and `code`: see ErrorEvent)."""
        self._times["finished"] = time.perf_counter()
        self._failed = True
        self._mailbox.put(ErrorEvent(message, status, code))

    def _alternatives(self, choice: Choice) -> tuple[Alternative, ...]:
        if not choice.top:
            return ()
        texts = self._begun()[0].peek([token_id for token_id, _ in choice.top])
        return tuple(
            Alternative(token_id, self._shown(token_id, text), logprob)
            for (token_id, logprob), text in zip(choice.top, texts, strict=True)
        )

    def _shown(self, token_id: int, piece: str) -> str:
        # A special token adds no text; it is shown by its own name, as /tokenize does.
        if token_id in self._special_ids:
            return self._begun()[1].convert_ids_to_tokens([token_id])[0]
        return piece

    def _begun(self) -> tuple[IncrementalDecoder, Tokenizer]:
        """The decoder and tokenizer that `begin` set; RuntimeError before it."""
        if self._decoder is None or self._tokenizer is None:
            raise RuntimeError("the job has not begun")
        return self._decoder, self._tokenizer

    def _post_token(self, choice: Choice, text: str, piece: str, top: tuple, attention) -> None:
        special = choice.token_id in self._special_ids
        piece = self._shown(choice.token_id, piece)
        if attention is not None:
            attention = tensors.encode(attention, "float16")
        event = TokenEvent(choice.token_id, text, piece, special, choice.logprob, top, attention)
        self._mailbox.put(event)

    def _finish(self, reason: str) -> bool:
        tail = ""
        if reason != "stop" and self._decoder is not None:
            tail, stopped = self._stop.feed(self._decoder.flush())
            if stopped:
                reason = "stop"
            else:
                tail += self._stop.flush()
        self._sampler = None
        self._times["finished"] = time.perf_counter()
        done = DoneEvent(reason, len(self.prompt_ids), self.generated, tail, self._timing())
        self._mailbox.put(done)
        return False

    def _timing(self) -> dict[str, float | None]:
        t = self._times
        admitted, first = t.get("admitted"), t.get("first_token")

        def ms(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else round((end - start) * 1000, 3)

        running = t["finished"] - admitted if admitted is not None else 0.0
        return {
            "queue_ms": ms(t["submitted"], admitted),
            "prefill_ms": ms(admitted, first),
            "ttft_ms": ms(t["submitted"], first),
            "total_ms": ms(t["submitted"], t["finished"]),
            "tokens_per_s": round(self.generated / running, 3) if running > 0 else None,
        }
