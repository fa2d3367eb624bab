"""The derivative rules of the linear-algebra primitives (``fusejit.ir.linalg``), entered
into ``autodiff``'s tables (imported by it last).

Every rule is written with primitives, the decompositions' own included, so derivatives
differentiate again. Matrices are the last two axes; ``Ā`` is a cotangent, ``dA`` a
tangent, ``sym(X) = (X + Xᵀ)/2``.

* ``solve``: ``x = A⁻¹b``; ``b̄ = A⁻ᵀx̄``, ``Ā = -b̄xᵀ``; ``dx = A⁻¹(db - dA x)``
  (Giles 2008, "An extended collection of matrix derivative results for forward and
  reverse mode AD", section 2.3.1).
* ``triangular_solve``: the same with ``op(A)`` and ``Ā`` kept to the triangle read.
* ``slogdet``: ``d log|det A| = tr(A⁻¹dA)``, so ``Ā = l̄ A⁻ᵀ`` (Giles 2008, 2.2.2);
  the sign is piecewise constant.
* ``cholesky`` of ``sym(A)``: ``dL = L Φ(L⁻¹ sym(dA) L⁻ᵀ)`` and
  ``Ā = sym(L⁻ᵀ Φ(LᵀL̄) L⁻¹)``, ``Φ`` the lower triangle with the diagonal halved
  (Murray 2016, "Differentiation of the Cholesky decomposition", eqs. 8-10).
* ``eigh`` of ``sym(A)``: with ``M = Vᵀ sym(dA) V`` and ``F_ij = 1/(w_j - w_i)`` (0 on the
  diagonal), ``dw = diag(M)``, ``dV = V(F∘M)``; ``Ā = sym(V(diag(w̄) + F∘(VᵀV̄))Vᵀ)``
  (Giles 2008, 3.1; Seeger et al. 2017, "Auto-differentiating linear algebra").
  Infinite where eigenvalues repeat, as in JAX.
* ``svd`` (thin, ``k = min(m, n)``): with ``dP = Uᵀ dA V``, ``S = diag(s)``,
  ``F_ij = 1/(s_j² - s_i²)``: ``ds = diag(dP)``, ``dU = U(F∘(dP S + S dPᵀ)) +
  (I - UUᵀ)dA V S⁻¹``, ``dV = V(F∘(S dP + dPᵀS)) + (I - VVᵀ)dAᵀU S⁻¹`` (the projections
  only where ``m > n``, resp. ``n > m``), and the transpose of that map for ``Ā``
  (Townsend 2016, "Differentiating the singular value decomposition"). Infinite where
  singular values repeat, as in JAX.
* ``qr`` (reduced, ``m >= n``): with ``C = dA R⁻¹``, ``M = QᵀC`` and ``Ω = tril(M, -1) -
  tril(M, -1)ᵀ``: ``dQ = Q(Ω - M) + C``, ``dR = (M - Ω)R`` (Townsend 2018, "Differentiating
  the QR decomposition"; JAX's ``qr_jvp_rule``); reverse mode is its transpose: with
  ``X = QᵀQ̄ - R̄Rᵀ``, ``Ā = (Q̄ + Q(tril(X - Xᵀ, -1) - X))R⁻ᵀ``. Wide matrices (``m < n``)
  have no rule here, as in JAX (``NotImplementedError``).
"""

from __future__ import annotations

from collections.abc import Sequence

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.autodiff import Ct, _add, _add_any, _c, _define, _div, _mul, _neg, _sub

# ---------------------------------------------------------------------------------------
# Matrix helpers: batched over leading axes, matrices in the last two


def mT(b: Builder, x: Value) -> Value:  # noqa: N802 - the matrix transpose, as NumPy's .mT
    n = x.type.ndim
    return b.op(P.transpose, x, perm=tuple(range(n - 2)) + (n - 1, n - 2))


def mm(b: Builder, x: Value, y: Value) -> Value:
    """``x @ y`` for ``[..., m, k] @ [..., k, n]`` with equal leading axes."""
    nb = x.type.ndim - 2
    batch = tuple(range(nb))
    return b.op(P.dot_general, x, y, contract=((nb + 1,), (nb,)), batch=(batch, batch))


def _pattern(b: Builder, like: Value, cmp: P.Primitive) -> Value:
    """1 where ``cmp(row, column)`` holds and 0 elsewhere, as ``like``'s matrices
    (broadcast along its leading axes)."""
    shape = like.shape[-2:]
    rows = b.op(P.iota, shape=shape, dimension=0, dtype=DType.i32)
    cols = b.op(P.iota, shape=shape, dimension=1, dtype=DType.i32)
    return b.broadcast(b.op(P.convert, b.op(cmp, rows, cols), dtype=like.dtype), like.shape)


def eye_like(b: Builder, like: Value) -> Value:
    return _pattern(b, like, P.eq)


def triangle(b: Builder, x: Value, lower: bool) -> Value:
    """The lower (or upper) triangle of ``x``, zeros elsewhere."""
    return _mul(b, x, _pattern(b, x, P.ge if lower else P.le))


def sym(b: Builder, x: Value) -> Value:
    return _mul(b, _add(b, x, mT(b, x)), _c(b, 0.5, x))


def diag_part(b: Builder, x: Value) -> Value:
    """The diagonal of ``x``'s (square) matrices, ``[..., n]``."""
    return b.op(P.reduce_sum, _mul(b, x, eye_like(b, x)), axes=(x.type.ndim - 1,))


def diag_matrix(b: Builder, v: Value, like: Value) -> Value:
    """The matrices ``diag(v)`` of ``like``'s shape."""
    return _mul(b, b.broadcast(v, like.shape, tuple(range(v.type.ndim))), eye_like(b, like))


def _scale_columns(b: Builder, x: Value, v: Value) -> Value:
    """``x @ diag(v)``: column ``j`` times ``v[..., j]``."""
    return _mul(b, x, b.broadcast(v, x.shape, tuple(range(v.type.ndim - 1)) + (x.type.ndim - 1,)))


def _scale_rows(b: Builder, x: Value, v: Value) -> Value:
    """``diag(v) @ x``: row ``i`` times ``v[..., i]``."""
    return _mul(b, x, b.broadcast(v, x.shape, tuple(range(v.type.ndim))))


def _gaps(b: Builder, w: Value) -> Value:
    """``F_ij = 1/(w_j - w_i)`` off the diagonal and 0 on it, ``[..., n, n]``."""
    n = w.type.ndim
    shape = w.shape + w.shape[-1:]
    wj = b.broadcast(w, shape, tuple(range(n - 1)) + (n,))
    wi = b.broadcast(w, shape, tuple(range(n)))
    eye = eye_like(b, wj)
    return _sub(b, _div(b, _c(b, 1.0, eye), _add(b, _sub(b, wj, wi), eye)), eye)


def _solve(b: Builder, a: Value, rhs: Value) -> Value:
    return b.op(P.solve, a, rhs)


def _tri(b: Builder, a: Value, rhs: Value, lower: bool, transpose_a: bool) -> Value:
    return b.op(P.triangular_solve, a, rhs, lower=lower, transpose_a=transpose_a)


# ---------------------------------------------------------------------------------------
# solve, triangular_solve, slogdet


def _solve_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    a, x = op.inputs[0], op.output
    gb = _solve(b, mT(b, a), g)
    return (_neg(b, mm(b, gb, mT(b, x))) if needs[0] else None, gb)


def _solve_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    da, db = tangents
    a, x = op.inputs[0], op.output
    rhs = db
    if da is not None:
        dax = mm(b, da, x)
        rhs = _neg(b, dax) if db is None else _sub(b, db, dax)
    return (_solve(b, a, rhs),)


def _triangular_solve_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    a, x = op.inputs[0], op.output
    lower, transpose_a = op.attrs["lower"], op.attrs["transpose_a"]
    gb = _tri(b, a, g, lower, not transpose_a)
    if not needs[0]:
        return (None, gb)
    ga = mm(b, x, mT(b, gb)) if transpose_a else mm(b, gb, mT(b, x))
    return (_neg(b, triangle(b, ga, lower)), gb)


def _triangular_solve_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    da, db = tangents
    a, x = op.inputs[0], op.output
    lower, transpose_a = op.attrs["lower"], op.attrs["transpose_a"]
    rhs = db
    if da is not None:
        t = triangle(b, da, lower)
        dax = mm(b, mT(b, t) if transpose_a else t, x)
        rhs = _neg(b, dax) if db is None else _sub(b, db, dax)
    return (_tri(b, a, rhs, lower, transpose_a),)


def _inverse_transpose(b: Builder, a: Value) -> Value:
    return _solve(b, mT(b, a), eye_like(b, a))


def _slogdet_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    _, g = cts
    if g is None:
        return (None,)
    a = op.inputs[0]
    return (_mul(b, b.broadcast(g, a.shape, tuple(range(g.type.ndim))), _inverse_transpose(b, a)),)


def _slogdet_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (da,) = tangents
    d = diag_part(b, _solve(b, op.inputs[0], da))
    return (None, b.op(P.reduce_sum, d, axes=(d.type.ndim - 1,)))  # tr(A⁻¹ dA)


# ---------------------------------------------------------------------------------------
# cholesky (Murray 2016)


def _phi(b: Builder, x: Value) -> Value:
    """The lower triangle of ``x`` with its diagonal halved."""
    half = _mul(b, eye_like(b, x), _c(b, 0.5, x))
    return _mul(b, x, _sub(b, _pattern(b, x, P.ge), half))


def _cholesky_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    lo = op.output
    p = _phi(b, mm(b, mT(b, lo), g))
    y = _tri(b, lo, p, True, True)  # L⁻ᵀ P
    s = mT(b, _tri(b, lo, mT(b, y), True, True))  # L⁻ᵀ P L⁻¹
    return (sym(b, s),)


def _cholesky_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (da,) = tangents
    lo = op.output
    y = _tri(b, lo, sym(b, da), True, False)  # L⁻¹ dA
    x = mT(b, _tri(b, lo, mT(b, y), True, False))  # L⁻¹ dA L⁻ᵀ
    return (mm(b, lo, _phi(b, x)),)


# ---------------------------------------------------------------------------------------
# eigh


def _eigh_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    gw, gv = cts
    w, v = op.outputs
    inner = None
    if gv is not None:
        inner = _mul(b, _gaps(b, w), mm(b, mT(b, v), gv))
    if gw is not None:
        dw = diag_matrix(b, gw, v)
        inner = dw if inner is None else _add(b, inner, dw)
    return (sym(b, mm(b, mm(b, v, inner), mT(b, v))),)


def _eigh_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (da,) = tangents
    w, v = op.outputs
    m = mm(b, mm(b, mT(b, v), sym(b, da)), v)
    return (diag_part(b, m), mm(b, v, _mul(b, _gaps(b, w), m)))


# ---------------------------------------------------------------------------------------
# svd (Townsend 2016)


def _svd_gaps(b: Builder, s: Value) -> Value:
    return _gaps(b, _mul(b, s, s))


def _svd_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (da,) = tangents
    u, s, vh = op.outputs
    v = mT(b, vh)
    m, n = op.inputs[0].shape[-2:]
    dp = mm(b, mm(b, mT(b, u), da), v)
    f = _svd_gaps(b, s)
    dps = _scale_columns(b, dp, s)  # dP S
    sdp = _scale_rows(b, dp, s)  # S dP
    du = mm(b, u, _mul(b, f, _add(b, dps, mT(b, dps))))
    dv = mm(b, v, _mul(b, f, _add(b, sdp, mT(b, sdp))))
    if m > n:
        dav = mm(b, da, v)
        du = _add(b, du, _scale_columns(b, _sub(b, dav, mm(b, u, mm(b, mT(b, u), dav))), _recip(b, s)))
    if n > m:
        dau = mm(b, mT(b, da), u)
        dv = _add(b, dv, _scale_columns(b, _sub(b, dau, mm(b, v, mm(b, vh, dau))), _recip(b, s)))
    return (du, diag_part(b, dp), mT(b, dv))


def _recip(b: Builder, s: Value) -> Value:
    return _div(b, _c(b, 1.0, s), s)


def _svd_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    gu, gs, gvh = cts
    u, s, vh = op.outputs
    v = mT(b, vh)
    m, n = op.inputs[0].shape[-2:]
    f = _svd_gaps(b, s)
    like = mm(b, mT(b, u), u)  # a [..., k, k] value for the shapes of the pieces below
    pbar = None

    def add(x: Value) -> None:
        nonlocal pbar
        pbar = x if pbar is None else _add(b, pbar, x)

    if gu is not None:
        j = _mul(b, f, mm(b, mT(b, u), gu))
        add(_scale_columns(b, _add(b, j, mT(b, j)), s))  # (J + Jᵀ) S
    gv = mT(b, gvh) if gvh is not None else None
    if gv is not None:
        k = _mul(b, f, mm(b, mT(b, v), gv))
        add(_scale_rows(b, _add(b, k, mT(b, k)), s))  # S (K + Kᵀ)
    if gs is not None:
        add(diag_matrix(b, gs, like))
    ga = mm(b, mm(b, u, pbar), vh) if pbar is not None else None
    if gu is not None and m > n:  # (I - UUᵀ) Ū S⁻¹ Vᵀ
        proj = _sub(b, gu, mm(b, u, mm(b, mT(b, u), gu)))
        ga = _add_any(b, ga, mm(b, _scale_columns(b, proj, _recip(b, s)), vh))
    if gv is not None and n > m:  # U S⁻¹ V̄ᵀ (I - VVᵀ)
        proj = _sub(b, gv, mm(b, v, mm(b, vh, gv)))
        ga = _add_any(b, ga, mm(b, _scale_columns(b, u, _recip(b, s)), mT(b, proj)))
    return (ga,)


# ---------------------------------------------------------------------------------------
# qr (Townsend 2018)


def _check_qr(op: Op) -> None:
    m, n = op.inputs[0].shape[-2:]
    if m < n:
        where = f" (at {op.loc})" if op.loc else ""
        raise NotImplementedError(f"qr: no derivative for a wide {m}x{n} matrix (m < n), as in JAX{where}")


def _strictly_lower(b: Builder, x: Value) -> Value:
    return _mul(b, x, _pattern(b, x, P.gt))


def _qr_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    _check_qr(op)
    (da,) = tangents
    q, r = op.outputs
    c = mT(b, _tri(b, r, mT(b, da), False, True))  # dA R⁻¹
    m = mm(b, mT(b, q), c)
    lo = _strictly_lower(b, m)
    omega = _sub(b, lo, mT(b, lo))
    return (_add(b, mm(b, q, _sub(b, omega, m)), c), mm(b, _sub(b, m, omega), r))


def _qr_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    _check_qr(op)
    gq, gr = cts
    q, r = op.outputs
    x = None
    if gq is not None:
        x = mm(b, mT(b, q), gq)
    if gr is not None:
        rrt = mm(b, gr, mT(b, r))
        x = _neg(b, rrt) if x is None else _sub(b, x, rrt)
    y = _sub(b, _strictly_lower(b, _sub(b, x, mT(b, x))), x)
    gc = _add_any(b, gq, mm(b, q, y))
    return (mT(b, _tri(b, r, mT(b, gc), False, False)),)  # C̄ R⁻ᵀ


_define(P.solve, _solve_vjp, _solve_jvp)
_define(P.triangular_solve, _triangular_solve_vjp, _triangular_solve_jvp)
_define(P.slogdet, _slogdet_vjp, _slogdet_jvp)
_define(P.cholesky, _cholesky_vjp, _cholesky_jvp)
_define(P.eigh, _eigh_vjp, _eigh_jvp)
_define(P.svd, _svd_vjp, _svd_jvp)
_define(P.qr, _qr_vjp, _qr_jvp)
