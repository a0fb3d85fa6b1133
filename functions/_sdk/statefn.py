"""The statefn worker protocol for Python functions (DESIGN.md section 3), in one small file.

A function registers a handler per command and calls run(). Each handler gets (state, payload, request) and
returns answer(...); raising BusinessError, or calling fail(...), answers with a 4xx business error instead.
"""
import json
import sys

_handlers = {}
_UNCHANGED = object()


class BusinessError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def fail(status, code, message):
    raise BusinessError(status, code, message)


def command(name):
    """Decorator: @command("add") registers the function as the handler of "add"."""
    def register(handler):
        _handlers[name] = handler
        return handler
    return register


def answer(reply=None, state=_UNCHANGED, events=None, effects=None, delete=False):
    result = {"reply": reply}
    if state is not _UNCHANGED:
        result["state"] = state
    if events:
        result["events"] = events
    if effects:
        result["effects"] = effects
    if delete:
        result["delete"] = True
    return result


def _handle(request):
    name = request.get("command")
    handler = _handlers.get(name)
    try:
        if handler is None:
            fail(400, "unknown_command", "unknown command %r" % (name,))
        return handler(request.get("state"), request.get("payload"), request)
    except BusinessError as error:
        return {"error": {"status": error.status, "code": error.code, "message": error.message}}


def run():
    """Reads one request per line and writes one answer per line, flushed, until stdin closes."""
    out = sys.stdout
    out.write('{"ready":true}\n')
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        result = {"id": request["id"]}
        result.update(_handle(request))
        out.write(json.dumps(result, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()
