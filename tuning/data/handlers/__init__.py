"""Data handlers: the registry and the built-in handlers (fms-hf-tuning's names and arguments).

Importing this package is cheap (no torch, transformers or datasets), so planning can resolve
and validate handler names before anything heavy loads.
"""

from tuning.data.handlers.apply import apply_chain, apply_handler, apply_handler_spec
from tuning.data.handlers.binding import BoundHandler, bind_handler, validate_fn_kwargs
from tuning.data.handlers.registry import (
    STAT_COLUMNS,
    HandlerArgs,
    HandlerContext,
    HandlerInfo,
    available_handlers,
    register_handler,
    resolve_handler,
)

__all__ = [
    "STAT_COLUMNS",
    "BoundHandler",
    "HandlerArgs",
    "HandlerContext",
    "HandlerInfo",
    "apply_chain",
    "apply_handler",
    "apply_handler_spec",
    "available_handlers",
    "bind_handler",
    "register_handler",
    "resolve_handler",
    "validate_fn_kwargs",
]
