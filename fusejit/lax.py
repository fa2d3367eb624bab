"""``fj.lax``: loops and branches that trace into single IR ops, with JAX's signatures.

    carry, ys = fj.lax.scan(step, h0, xs)          # step(carry, x) -> (carry, y)
    val = fj.lax.fori_loop(0, n, body, val)        # body(i, val) -> val
    val = fj.lax.while_loop(cond, body, val)
    out = fj.lax.cond(pred, true_fun, false_fun, *operands)
    out = fj.lax.switch(index, [f0, f1, f2], *operands)

Each traces its functions once (a Python ``for`` loop unrolls instead); they work under
``jit``, ``grad``, ``jvp`` and eagerly. See ``fusejit.tracer.control_flow``.
"""

from fusejit.tracer.control_flow import cond, fori_loop, scan, switch, while_loop

__all__ = ["cond", "fori_loop", "scan", "switch", "while_loop"]
