"""A compile worker (``python -m fusejit.runtime.compile_worker``; see ``compile_pool``).

Reads one JSON request per line on stdin (a kernel module's source, the kernel's name,
its argument types and the cache directory), compiles the kernel into the disk cache, and
answers one JSON line on stdout: ``{"ok": true, "compiled": <bool>}`` or ``{"ok": false,
"error": "..."}``. Exits at the end of its input. With ``--ready`` it first starts Numba
(imports and registries, ~1 s) and says ``{"ready": true}``, so that the caller hands it
no kernel before it can start compiling one.
"""

from __future__ import annotations

import json
import sys


def compile_request(request: dict) -> dict:

    from fusejit import config
    from fusejit.runtime import native_calls
    from fusejit.runtime.cache import COUNTERS, compile_dispatchers, load_module

    with config.override(cache=True, cache_dir=request["cache_dir"]):
        chunked = bool(request["chunked"])
        sig = native_calls.kernel_signature(request["arrays"], chunked)
        if request.get("llvm"):
            from fusejit.runtime import llvm_kernels

            address, library, origin = llvm_kernels.load(request["llvm"], lambda: request["llvm_text"])
            native_calls.bind_address(address, library, sig, chunked)
            return {"ok": True, "compiled": origin is llvm_kernels.KernelOrigin.COMPILED}
        dispatcher = getattr(load_module(request["source"]), request["kernel"])
        before = COUNTERS.numba_compiles
        compile_dispatchers(dispatcher, sig)
        compiled = COUNTERS.numba_compiles > before
        # Its trampoline too (Numba's cache beside fusejit's sources), should it be new.
        native_calls.bind(dispatcher, sig, chunked)
    return {"ok": True, "compiled": compiled}


def start() -> None:
    """What every request needs, done once: the code generator's imports (the math
    library and GEMM modules generated kernels import) and Numba's registries."""
    import fusejit.codegen.cpu.gemm
    import fusejit.codegen.cpu.mathlib  # noqa: F401
    from fusejit.runtime.cache import start_numba

    start_numba(compiling=True)


def main(announce: bool = False) -> None:
    if announce:
        start()
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
    for line in sys.stdin:
        try:
            reply = compile_request(json.loads(line))
        except Exception as e:  # reported to the caller, which then compiles the kernel itself
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(announce="--ready" in sys.argv[1:])
