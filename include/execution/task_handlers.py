"""Handlers per task type, registered in one place (`HANDLERS`), and their payload validation.

The contract of a handler: ``handler(task, services) -> result``

- input: the claimed row (:class:`include.execution.task_queue.ClaimedTask`: id, task_type, payload,
  ai_model, attempts...) and the batch's shared :class:`Services` (executor client, cache);
- output: a JSON-serialisable result, stored in ``execution_tasks.result``;
- errors: raise :class:`RetryableError` for what may pass (timeouts, HTTP 5xx, 429) and
  :class:`PermanentError` for what will not (a malformed payload, HTTP 4xx). Any other
  exception counts as retryable: after ``max_attempts`` the task goes ``dead`` with it.

Every platform task type runs on the external AI executor named by the task's ``ai_model``;
the payload is validated before any call, and a malformed one fails permanently with a
message naming the field.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.execution.task_queue import ClaimedTask

if TYPE_CHECKING:
    from include.execution.executor_client import ExecutorClient

DEFAULT_AI_MODEL = "default"  # rows enqueued before ai_model existed run on the executor's default
# what the CHECK enforces (0002; 0008 rewrote it; 0009 took "/" out). The executor client puts
# the model in a URL path: no "/", and a first character that is not "." (so no "." or "..").
AI_MODEL_FORMAT = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$")
MAX_PROMPT_CHARS = 20_000


class RetryableError(Exception):
    """The attempt failed for a reason that may pass: try again later."""


class PermanentError(Exception):
    """The task can never succeed as it is: do not retry."""


# -- payload validation -------------------------------------------------------------------

_STR, _INT, _NUM, _LIST_OF_STR = "a string", "an integer", "a number", "a list of strings"


def _is(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str) and value.strip() != ""
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


# the `inputs` each task type needs (as the platform writes them: see devstack/demo_data.py)
REQUIRED_INPUTS: dict[str, dict[str, str]] = {
    "implementation": {"branch": _STR, "files": _LIST_OF_STR},
    "self_improvement": {"branch": _STR, "baseline_run": _STR},
    "idea": {"count": _INT},
    "idea_implementation": {"idea_id": _INT, "branch": _STR},
}
OPTIONAL_INPUTS: dict[str, str] = {
    "max_tokens": _INT,
    "temperature": _NUM,
    "budget_minutes": _INT,
    "timebox_hours": _INT,
    "audience": _STR,
}


def validate_payload(task_type: str, payload: Any) -> dict:
    """The normalised executor input, or PermanentError naming the first field that is wrong."""
    if task_type not in REQUIRED_INPUTS:
        raise PermanentError(f"task_type {task_type!r} has no handler; known: {sorted(REQUIRED_INPUTS)}")
    if not isinstance(payload, dict):
        raise PermanentError(f"payload must be a JSON object, got {type(payload).__name__}")
    for name in ("prompt", "repo"):
        if not _is(_STR, payload.get(name)):
            raise PermanentError(f"payload.{name} must be a non-empty string, got {payload.get(name)!r:.80}")
    if len(payload["prompt"]) > MAX_PROMPT_CHARS:
        raise PermanentError(
            f"payload.prompt has {len(payload['prompt'])} characters, over {MAX_PROMPT_CHARS}"
        )
    inputs = payload.get("inputs")
    if not isinstance(inputs, dict):
        raise PermanentError(f"payload.inputs must be an object, got {type(inputs).__name__}")
    for name, kind in REQUIRED_INPUTS[task_type].items():
        if not _is(kind, inputs.get(name)):
            raise PermanentError(f"payload.inputs.{name} must be {kind}, got {inputs.get(name)!r:.80}")
    for name, kind in OPTIONAL_INPUTS.items():
        if name in inputs and not _is(kind, inputs[name]):
            raise PermanentError(f"payload.inputs.{name} must be {kind}, got {inputs[name]!r:.80}")
    # what determines the answer, in a canonical order (the cache key hashes it); the prompt as
    # written: its whitespace is meaning (code's indentation), not noise
    return {
        "prompt": payload["prompt"],
        "repo": payload["repo"].strip(),
        "inputs": {k: inputs[k] for k in sorted(inputs)},
    }


def resolve_ai_model(task: ClaimedTask) -> str:
    model = task.ai_model or DEFAULT_AI_MODEL
    if not AI_MODEL_FORMAT.fullmatch(model):  # match() let a trailing newline through ($ matches before it)
        raise PermanentError(f"ai_model {model!r:.80} does not match {AI_MODEL_FORMAT.pattern}")
    return model


# -- handlers ---------------------------------------------------------------------------------


@dataclass
class Services:
    """What handlers of one batch share: the executor client and the cache (None: uncached)."""

    executor: ExecutorClient | None = None
    cache: Any = None  # include.execution.task_cache.TaskCache
    cache_hits: set[int] = field(default_factory=set)  # ids of tasks answered from the cache
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note_cache_hit(self, task_id: int) -> None:
        with self._lock:
            self.cache_hits.add(task_id)


def _executor_call(task: ClaimedTask, services: Services) -> tuple[str, dict, str, dict[str, str]]:
    """(ai_model, normalised input, cache namespace, cache key parts) of an executor task, after
    validating it (PermanentError naming what is wrong)."""
    task_input = validate_payload(task.task_type, task.payload)
    ai_model = resolve_ai_model(task)
    if services.executor is None:
        raise PermanentError("no task executor is configured (connection task_executor)")
    version = services.executor.model_version(ai_model)
    # the cache hashes them
    parts = {
        "task_type": task.task_type,
        "model_version": version,
        "input": task_input,
    }
    return ai_model, task_input, f"executor:{ai_model}", parts


def executor_cache_key(task: ClaimedTask, services: Services) -> tuple[str, dict[str, str]]:
    """(namespace, key parts) under which execute_on_executor caches this task's answer."""
    return _executor_call(task, services)[2:]


def execute_on_executor(task: ClaimedTask, services: Services) -> dict:
    """Validate, then ask the executor named by ai_model, through the cache when there is one."""
    ai_model, task_input, namespace, parts = _executor_call(task, services)
    executor = services.executor

    def compute() -> dict:
        return executor.execute(task.task_type, ai_model, task_input)

    if services.cache is None:
        return compute()
    result, hit = services.cache.get_or_compute(namespace, parts, compute)
    if hit:
        services.note_cache_hit(task.id)
    return result


Handler = Callable[[ClaimedTask, Services], Any]

HANDLERS: dict[str, Handler] = {
    "implementation": execute_on_executor,
    "self_improvement": execute_on_executor,
    "idea": execute_on_executor,
    "idea_implementation": execute_on_executor,
}

# Per task type whose handler caches its answer: the (namespace, key parts) it caches under.
# A batch reads these for all its tasks in one round trip before running any handler
# (include.execution.drain.HandlerRunner.add); a key function that raises leaves the task to its handler.
CacheKey = Callable[[ClaimedTask, Services], tuple[str, Mapping[str, Any]]]
CACHE_KEYS: dict[str, CacheKey] = {
    task_type: executor_cache_key for task_type, handler in HANDLERS.items() if handler is execute_on_executor
}
