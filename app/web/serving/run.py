"""A run: one request's generation jobs (prompts times n), queued together, read as one
stream of events, cancelled together and accounted for once.

Every API builds one: /generate and /generate/stream a run of one choice, /v1 a run
of `n` choices per prompt. The engine batches the jobs of a run as rows of the same
forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app import models
from app.engine import DoneEvent, ErrorEvent, Event, GenerationJob, TokenEvent
from app.engine.threads import Mailbox, spawn
from app.errors import ClientClosedRequest, GenerationFailed, ShuttingDown
from app.models import LoadedModel, Tokens
from app.ops import metrics

# What the reader yields: one choice's event, or None after a ping interval of silence.
Item = tuple["Choice", TokenEvent | DoneEvent] | None


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text (for token ids, their decoded text) and the ids the model reads.

    `tokens` (each token's text and character span) is there for /v1/completions, which
    can echo the prompt with its logprobs; other prompts have none.
    """

    index: int
    text: str
    ids: list[int]
    tokens: Tokens | None = None


@dataclass
class Choice:
    """One generation of a run (OpenAI's "choice"; /generate has exactly one): its prompt,
    its job (None when nothing is to be generated, as with max_tokens 0) and the fold of
    its events so far."""

    index: int
    prompt: Prompt
    job: GenerationJob | None
    pieces: list[str] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)
    done: DoneEvent | None = None
    error: ErrorEvent | None = None

    def add(self, event: Event) -> None:
        """Fold in one event of this choice's job."""
        if isinstance(event, TokenEvent):
            self.tokens.append(event)
        elif isinstance(event, DoneEvent):
            self.done = event
        else:
            self.error = event
            return
        self.pieces.append(event.text)

    @property
    def text(self) -> str:
        """The generated text so far, stop strings cut, as a plain stream sends it."""
        return "".join(self.pieces)


def _failure(event: ErrorEvent) -> GenerationFailed:
    """The error a failed job's client sees, with the status and code the job gave."""
    error = GenerationFailed(event.message)
    error.status, error.code = event.status, event.code
    return error


def prompt_tokens(choices: list[Choice]) -> int:
    """The prompts' tokens, each prompt counted once however many choices it has (as its
    job counted them where the prompt's ids are not known here: a remote model's)."""
    counts: dict[int, int] = {}
    for choice in choices:
        counted = choice.done.prompt_tokens if choice.done is not None else 0
        known = len(choice.prompt.ids) or counted
        counts[choice.prompt.index] = max(counts.get(choice.prompt.index, 0), known)
    return sum(counts.values())


def generated_tokens(choices: list[Choice]) -> int:
    """Every generated token of every choice."""
    return sum(len(choice.tokens) for choice in choices)


class Run:
    """The choices of one request, and what is done to all of them at once.

    `record` is the request's log record (see `requestlog.record`); it is filled in
    by `close`, once, however the run ended.
    """

    def __init__(self, model: str, choices: list[Choice], record: dict[str, Any]) -> None:
        self.model = model
        self.choices = choices
        self.record = record
        self.client_left = False  # the reader saw the client-gone probe fire
        self.failed = False  # the run ended early on an error
        self._closed = False

    @property
    def jobs(self) -> list[GenerationJob]:
        """The jobs to run (choices with nothing to generate have none)."""
        return [choice.job for choice in self.choices if choice.job is not None]

    def submit(self, lm: LoadedModel) -> None:
        """Queue every job, or none: if one cannot be queued (a full queue), the ones
        already queued are cancelled and the error is raised."""
        queued = []
        try:
            for job in self.jobs:
                models.submit(lm, job)
                queued.append(job)
        except BaseException:
            for job in queued:
                job.cancel()
            raise

    def events(
        self, ping_seconds: float, client_gone: Callable[[], bool] = lambda: False
    ) -> Iterator[Item]:
        """Every job's events as they come, each folded into its choice before it is
        yielded; None after `ping_seconds` of silence. The one reader of job events.

        Ends when every job has ended, or (setting `client_left`) as soon as
        `client_gone()` turns true: it is asked at every event and every ping, so a
        client that leaves a silent generation is noticed within `ping_seconds`.
        Raises GenerationFailed at a job's error. Cancels every job on the way out.
        """
        try:
            for arrival in self._arrivals(ping_seconds):
                if client_gone():
                    self.client_left = True
                    return
                if arrival is None:
                    yield None
                    continue
                choice, event = arrival
                choice.add(event)
                if isinstance(event, ErrorEvent):
                    raise _failure(event)
                yield choice, event
        finally:
            self.cancel()

    def _arrivals(self, ping_seconds: float) -> Iterator[tuple[Choice, Event] | None]:
        running = [choice for choice in self.choices if choice.job is not None]
        if len(running) == 1:  # one job: its own mailbox is the merge
            only = running[0]
            assert only.job is not None
            for event in only.job.events(ping_seconds):
                yield None if event is None else (only, event)
            return
        # Several: each job is read by its own greenlet (a thread under `flask run`) into
        # one mailbox. A job's reader ends with its job, so cancelling the jobs ends them.
        inbox = Mailbox()

        def pump(choice: Choice, job: GenerationJob) -> None:
            for event in job.events(ping_seconds):
                if event is not None:
                    inbox.put((choice, event))

        for choice in running:
            assert choice.job is not None
            spawn(pump, choice, choice.job)
        left = len(running)
        while left:
            try:
                choice, event = inbox.get(ping_seconds)
            except TimeoutError:
                yield None
                continue
            if isinstance(event, DoneEvent | ErrorEvent):
                left -= 1
            yield choice, event

    def raise_for_failure(self) -> None:
        """Raise what ended the run early (after `events`): a job's failure, the client's
        leaving, or the server's shutdown."""
        for choice in self.choices:
            if choice.job is None:
                continue
            if choice.error is not None:
                raise _failure(choice.error)
            if choice.done is None:  # the reader stopped early: the client went away
                raise ClientClosedRequest
            if choice.done.finish_reason == "shutdown":
                raise ShuttingDown

    def cancel(self) -> None:
        """Stop every job (a no-op for those that have ended)."""
        for job in self.jobs:
            job.cancel()

    def close(self) -> None:
        """Cancel every job and account for the run: its log record and, for each
        generation that finished, the metrics. Only the first call does anything."""
        self.cancel()
        if self._closed:
            return
        self._closed = True
        record = self.record
        record.update(
            model=self.model,
            prompt_tokens=prompt_tokens(self.choices),
            generated_tokens=generated_tokens(self.choices),
            choices=len(self.choices),
            finish_reason=",".join(sorted({self._logged_reason(c) for c in self.choices})),
        )
        # The text fields (logged only with LLMVIZ_LOG_TEXT=1): one text per field for a
        # run of one choice, as /generate has; a list for several.
        texts = [choice.text for choice in self.choices]
        shown = list({c.prompt.index: c.prompt.text for c in self.choices}.values())
        one = len(self.choices) == 1
        record.update(prompt=shown[0] if one else shown, output=texts[0] if one else texts)
        first = next((choice.done for choice in self.choices if choice.done), None)
        if first is not None:
            record.update(
                ttft_ms=first.timing.get("ttft_ms"), queue_ms=first.timing.get("queue_ms")
            )
        for choice in self.choices:
            done = choice.done
            if done is not None and choice.job is not None:
                metrics.observe_generation(
                    self.model, done.timing, done.prompt_tokens, done.generated_tokens
                )

    def _logged_reason(self, choice: Choice) -> str:
        if choice.error is not None:
            return "error"
        if choice.job is None:
            return "length"
        if choice.done is not None:
            return choice.done.finish_reason
        return "error" if self.failed else "disconnected"
