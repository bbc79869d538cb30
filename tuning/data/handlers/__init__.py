"""Data handlers: the registry and the built-in handlers (fms-hf-tuning's names and arguments).

Importing this package is cheap (no torch, transformers or datasets), so preflight can resolve
and validate handler names before anything heavy loads.
"""

from tuning.data.handlers.registry import (
    STAT_COLUMNS,
    BoundHandler,
    HandlerArgs,
    HandlerContext,
    HandlerInfo,
    apply_chain,
    apply_handler,
    apply_handler_spec,
    available_handlers,
    bind_handler,
    register_handler,
    render_handlers_markdown,
    resolve_handler,
    validate_fn_kwargs,
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
    "render_handlers_markdown",
    "resolve_handler",
    "validate_fn_kwargs",
]
