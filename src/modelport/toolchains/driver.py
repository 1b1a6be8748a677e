"""The driver a toolchain's Python runs: ``python -I driver.py OPS_FILE``. Standalone: stdlib only.

It loads OPS_FILE (a module of functions, e.g. ``paddle_ops.py``) by path and answers requests,
one JSON object per line on stdin: ``{"op": NAME, "args": {...}}`` -> one JSON line on the
original stdout: ``{"ok": true, "result": ...}`` or ``{"ok": false, "exit_code": 2|3, "error": "..."}``.
Tensors never cross the pipe: the requests name files (ONNX, npz) both sides read and write.
Everything the framework prints goes to stderr (descriptor 1 is pointed at 2), so the protocol
stream stays clean. An exception with an ``exit_code`` attribute is the user's error (bad input,
unsupported); any other is reported with its type and message, exit code 2.
"""

import importlib.util
import json
import os
import sys
import traceback


def _load(path):
    spec = importlib.util.spec_from_file_location("modelport_toolchain_ops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    ops = _load(argv[1])
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            fn = getattr(ops, "op_" + request["op"])
            reply = {"ok": True, "result": fn(**request.get("args", {}))}
        except Exception as exc:  # the reply says what went wrong; the driver keeps serving
            code = getattr(exc, "exit_code", None)
            message = str(exc).strip() or type(exc).__name__
            if code is None:
                message = f"{type(exc).__name__}: {message}"
                if os.environ.get("MODELPORT_DEBUG", "") not in ("", "0"):
                    traceback.print_exc()
            reply = {"ok": False, "exit_code": int(code or 2), "internal": code is None, "error": message}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
