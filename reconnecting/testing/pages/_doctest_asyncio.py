"""Doctest examples that may ``await``, for Sybil.

:class:`AwaitingDocTestParser` is Sybil's ``DocTestParser`` whose examples
may use ``await``, ``async for`` and ``async with`` at the top level, as in
``python -m asyncio``.  Such an example is compiled with
``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`` and run to completion in the page's event
loop, made on the first one and kept in the page's namespace as
``_event_loop``; from then on every example of the page runs inside that
loop, so that ``asyncio.create_task()`` works in plain examples too, and
tasks started by one example go on running in the next.  Output and
exceptions are checked by doctest, as for any other example.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import inspect
from typing import Any

from sybil import Example
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.parsers.rest import DocTestParser

__all__ = ["AwaitingDocTestParser", "close_event_loop"]

LOOP = "_event_loop"
RUN = "_run_in_event_loop"


class AwaitingDocTestEvaluator(DocTestEvaluator):
    def __call__(self, sybil_example: Example) -> str:
        example = sybil_example.parsed
        namespace = sybil_example.namespace
        code = compile(
            example.source,
            f"<doctest {sybil_example.path} line {example.lineno + 1}>",
            "single",
            ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        awaits = bool(code.co_flags & inspect.CO_COROUTINE)
        if not awaits and LOOP not in namespace:
            return super().__call__(sybil_example)
        loop = namespace.get(LOOP) or namespace.setdefault(
            LOOP, asyncio.new_event_loop()
        )

        async def run() -> Any:
            # 'single' mode: expression values are printed, as doctest expects.
            result = eval(code, namespace)  # noqa: S307 (the page's own example)
            if awaits:
                await result

        # doctest runs the example's source; this one runs the compiled code.
        namespace[RUN] = lambda: loop.run_until_complete(run())
        original = sybil_example.parsed
        sybil_example.parsed = copy.copy(example)
        sybil_example.parsed.source = f"{RUN}()\n"
        try:
            return super().__call__(sybil_example)
        finally:
            sybil_example.parsed = original
            del namespace[RUN]


class AwaitingDocTestParser(DocTestParser):
    """Sybil's ``DocTestParser``, with examples that may ``await``."""

    def __init__(self, optionflags: int = 0) -> None:
        super().__init__(optionflags)
        self.string_parser.evaluator = AwaitingDocTestEvaluator(optionflags)


def close_event_loop(namespace: dict) -> None:
    """Close what a page left open in its event loop, then the loop itself."""
    loop = namespace.pop(LOOP, None)
    if loop is None:
        return
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
