"""Registers servicers with grpc.aio by hand, from the generated service descriptors.

Why not the generated add_*_to_server: (1) a request that does not parse must be
INVALID_ARGUMENT with a message, not grpc's INTERNAL "Exception deserializing request";
(2) domain errors map to status codes here, once, for every RPC shape; (3) while draining,
everything but reads answers UNAVAILABLE.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import grpc
from google.protobuf import message_factory

from ..errors import InvalidArgument, Unavailable, VmmdError
from .errors import status_of

log = logging.getLogger("vmmd.api")


class Malformed:
    def __init__(self, what: str, error: str):
        self.what, self.error = what, error


def _deserializer(cls) -> Callable[[bytes], Any]:
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:  # any parse failure is the client's to fix
            return Malformed(cls.DESCRIPTOR.full_name, str(e))
    return parse


def _check(msg):
    if isinstance(msg, Malformed):
        raise InvalidArgument(f"request is not a valid {msg.what} ({msg.error}); send a message "
                              "encoded from protos/vmmd/v1")
    return msg


async def _abort(context, e: VmmdError, method: str):
    code = status_of(e)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed: %s", method, e)
    await context.abort(code, str(e))


def _wrap(method: str, fn, req_stream: bool, resp_stream: bool, read_only: bool,
          is_draining: Callable[[], bool]):
    def gate():
        if not read_only and is_draining():
            raise Unavailable("vmmd is draining for a stop: retry against this host once it is "
                              "back, or use another host")

    async def checked_iter(it):
        async for m in it:
            yield _check(m)

    if not req_stream and not resp_stream:
        async def unary(request, context):
            t0 = time.monotonic()
            try:
                gate()
                return await fn(_check(request), context)
            except VmmdError as e:
                await _abort(context, e, method)
            finally:
                log.debug("rpc", extra={"method": method, "ms": (time.monotonic() - t0) * 1e3})
        return unary
    if not req_stream and resp_stream:
        async def server_stream(request, context):
            try:
                gate()
                async for m in fn(_check(request), context):
                    yield m
            except VmmdError as e:
                await _abort(context, e, method)
        return server_stream
    if req_stream and not resp_stream:
        async def client_stream(request_iter, context):
            try:
                gate()
                return await fn(checked_iter(request_iter), context)
            except VmmdError as e:
                await _abort(context, e, method)
        return client_stream

    async def bidi(request_iter, context):
        try:
            gate()
            async for m in fn(checked_iter(request_iter), context):
                yield m
        except VmmdError as e:
            await _abort(context, e, method)
    return bidi


def handler(service_descriptor, servicer, read_only: set[str],
            is_draining: Callable[[], bool]) -> grpc.GenericRpcHandler:
    handlers = {}
    for m in service_descriptor.methods:
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        fn = getattr(servicer, m.name)
        rs, ss = m.client_streaming, m.server_streaming
        w = _wrap(f"{service_descriptor.name}/{m.name}", fn, rs, ss, m.name in read_only,
                  is_draining)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(rs, ss)]
        handlers[m.name] = make(w, request_deserializer=_deserializer(req_cls),
                                response_serializer=resp_cls.SerializeToString)
    return grpc.method_handlers_generic_handler(service_descriptor.full_name, handlers)
