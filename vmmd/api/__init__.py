"""gRPC servicers: translate proto <-> domain calls, map errors to status codes."""
