"""Adaptive Rosenbrock solver (Rodas5P) for the PBPK equations, with a block-arrowhead solver.

Why this module exists
----------------------
The PBPK right-hand side is ``dy/dt = K(p) y + N(y)`` with K sparse and the binding term N the
only non-linearity, so the Jacobian is known analytically (``J = K + dN/dy``). An implicit
Runge-Kutta method (diffrax ``Kvaerno5``) spends its time on a forward-mode Jacobian, a dense
LU and many Newton solves per step; a linearly implicit (Rosenbrock) method needs one Jacobian,
one factorisation and one solve per stage, and no Newton iteration. diffrax (0.7) has no
Rosenbrock solver and lineax has no block-arrowhead (bordered block-diagonal) solver, so both
are written here, in pure JAX (``lax.while_loop``, static shapes, jit- and vmap-able).

Method
------
Rodas5P: Steinebach G (2023), "Construction of Rosenbrock-Wanner method Rodas5P and numerical
benchmarks within the Julia Differential Equations package", BIT Numer Math 63:27. 8 stages,
order 5, embedded order 4, stiffly accurate and L-stable. The coefficients are those of the
reference implementation (OrdinaryDiffEq.jl ``Rodas5PTableau``, the author's own code), in the
transformed ("W-form") variables of Hairer & Wanner (Solving ODEs II, 2nd ed., 1996, Sec.
IV.7, eq. (7.25)): with ``M = I/(h gamma) - J``,

    U_i = y_n + sum_j a_ij k_j,   M k_i = f(t_n + c_i h, U_i) + h d_i f_t + sum_j (C_ij / h) k_j,
    y_{n+1} = U_8 + k_8,  error estimate k_8.

Step-size control: the PI controller of Gustafsson (1991) in the form of Hairer, Norsett &
Wanner (Solving ODEs I, 2nd ed., Sec. II.4, eq. (4.13) and the remarks on (4.13')),
``fac = safety * err^(-0.7/k) * err_prev^(0.4/k)`` with k = 5 (embedded order + 1), on the
RMS norm of the error scaled by ``atol + rtol * max(|y_n|, |y_{n+1}|)`` (the norm diffrax and
OrdinaryDiffEq use). The step is clipped to land exactly on every requested output time (no
dense output is used). Controller decisions are under ``stop_gradient``: forward-mode
derivatives are those of the discrete scheme with frozen step sizes.

Quadrature states
-----------------
Sinks and time-integral states never feed back (their Jacobian columns are zero), so the
augmented Jacobian is ``[[J, 0], [w G, 0]]``. Solving the Rosenbrock stage equations of the
augmented system exactly gives, for the quadrature rows (``q' = w(t) G y``),
``kq_i = h gamma (rq_i + w(t_n) G k_i)``: explicit, no linear solve. Because ``G`` is linear,
``kq_i = G v_i`` with the y-space recursion
``v_i = h gamma (w(t_i) U_i + h d_i w'(t_n) y_n + sum_j (C_ij/h) v_j + w(t_n) k_i)``, one vector
per distinct weight w (1 for sinks, exp(-lambda (t - t_admin)) for the time integrals of the
total-ligand form), so G is applied twice per step. This is the same Rodas5P step as on the
full system (same order, same error estimate on all states).

Linear solver
-------------
The compartment graph is hub-and-spoke. :func:`block_structure` removes the highest-degree
states ("hubs", e.g. arterial and venous blood) greedily (three rules, see there) and keeps the
hub set that minimises a flop estimate; the remaining states fall into connected components
(organs), grouped by size and padded to their group's block size (at most three groups: a
model whose organs keep 1-4 states does not pay for 4 x 4 blocks everywhere). ``M`` is then
block-arrowhead, ``[[A, B], [C, D]]`` with A block-diagonal, and is solved by block elimination: every diagonal block inverted by
Gauss-Jordan elimination (vectorised over blocks), then the small Schur complement
``S = D - C A^-1 B``. No pivoting: ``M = I/(h gamma) - K`` is a column diagonally dominant
M-matrix for a compartment operator K (non-negative off-diagonals, non-positive column sums),
and so is every Schur complement (Golub & Van Loan, Matrix Computations, 4th ed., Thm 3.4.3);
binding adds ``kon/V * (free, R0 - bound)``-type terms that keep this while bound <= R0.
``linear_solver="dense"`` uses a pivoted dense LU (``jax.scipy.linalg.lu_factor``) instead,
for comparison. The state is kept in the padded block layout for the whole integration, so
the right-hand side is the same block mat-vec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbpk_models.errors import InputError, ModelError


# -- Rodas5P tableau (Steinebach 2023; OrdinaryDiffEq.jl Rodas5PTableau) -----------------------
@dataclass(frozen=True)
class RosenbrockTableau:
    name: str
    gamma: float
    a: np.ndarray      # (s, s) stage abscissae in transformed variables, strictly lower
    C: np.ndarray      # (s, s) strictly lower
    c: np.ndarray      # (s,) stage times
    d: np.ndarray      # (s,) coefficients of h f_t
    m: np.ndarray      # (s,) solution weights: y1 = y0 + sum m_i k_i
    e: np.ndarray      # (s,) error weights: err = sum e_i k_i
    err_order: int     # order of the embedded solution (controller exponent 1/(err_order+1))


def rodas5p() -> RosenbrockTableau:
    s = 8
    a = np.zeros((s, s))
    C = np.zeros((s, s))
    a[1, :1] = [3.0]
    a[2, :2] = [2.849394379747939, 0.45842242204463923]
    a[3, :3] = [-6.954028509809101, 2.489845061869568, -10.358996098473584]
    a[4, :4] = [2.8029986275628964, 0.5072464736228206, -0.3988312541770524,
                -0.04721187230404641]
    a[5, :5] = [-7.502846399306121, 2.561846144803919, -11.627539656261098,
                -0.18268767659942256, 0.030198172008377946]
    a[6, :6] = np.r_[a[5, :5], 1.0]          # U_7 = U_6 + k_6
    a[7, :7] = np.r_[a[5, :5], 1.0, 1.0]     # U_8 = U_7 + k_7
    C[1, :1] = [-14.155112264123755]
    C[2, :2] = [-17.97296035885952, -2.859693295451294]
    C[3, :3] = [147.12150275711716, -1.41221402718213, 71.68940251302358]
    C[4, :4] = [165.43517024871676, -0.4592823456491126, 42.90938336958603,
                -5.961986721573306]
    C[5, :5] = [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
                -0.6610691825249471]
    C[6, :6] = [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
                -19.097331116725623, -28.087943162872662]
    C[7, :7] = [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
                -40.06618937091002, -54.66780262877968, -9.48861652309627]
    c = np.array([0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716,
                  0.4288403609558664, 1.0, 1.0, 1.0])
    d = np.array([0.21193756319429014, -0.42387512638858027, -0.3384627126235924,
                  1.8046452872882734, 2.325825639765069, 0.0, 0.0, 0.0])
    m = np.r_[a[7, :7], 1.0]                 # y1 = U_8 + k_8
    e = np.zeros(s)
    e[-1] = 1.0
    return RosenbrockTableau("rodas5p", 0.21193756319429014, a, C, c, d, m, e, 4)


# -- block-arrowhead structure ------------------------------------------------------------------
@dataclass(frozen=True)
class BlockStructure:
    """Padded block layout of n states: groups of blocks, then ``n_hubs`` hubs.

    ``groups``: ``((block_size, n_blocks), ...)`` in layout order (largest blocks first); the
    blocks of a group are padded to its block size, so a model whose organs have 1-4 states
    does not pay for 4 x 4 blocks everywhere. ``blocks``: state-index tuples in layout order;
    ``pos[i]``: padded index of state i; ``hubs``: hub states (after all blocks).
    """

    n: int
    hubs: tuple
    blocks: tuple
    groups: tuple
    pos: np.ndarray

    @property
    def n_hubs(self) -> int:
        return len(self.hubs)

    @property
    def n_blocks(self) -> int:
        return sum(nb for _, nb in self.groups)

    @property
    def block_size(self) -> int:
        """The largest block size (0 without blocks)."""
        return max((bs for bs, _ in self.groups), default=0)

    @property
    def n_block_states(self) -> int:
        """Padded states in blocks (hubs start at this index)."""
        return sum(bs * nb for bs, nb in self.groups)

    @property
    def n_padded(self) -> int:
        return self.n_block_states + self.n_hubs

    def block_of(self, padded_index) -> np.ndarray:
        """Block number (layout order) of padded indices; -1 for hubs."""
        p = np.asarray(padded_index)
        out = np.full(p.shape, -1, dtype=np.int64)
        off = nb0 = 0
        for bs, nb in self.groups:
            m = (p >= off) & (p < off + bs * nb)
            out[m] = nb0 + (p[m] - off) // bs
            off += bs * nb
            nb0 += nb
        return out


def _components(adj: np.ndarray, keep: np.ndarray) -> list[list[int]]:
    from scipy.sparse.csgraph import connected_components

    idx = np.nonzero(keep)[0]
    if idx.size == 0:
        return []
    _, lab = connected_components(adj[np.ix_(idx, idx)], directed=False)
    comps = [sorted(idx[lab == k].tolist()) for k in range(lab.max() + 1)]
    return sorted(comps, key=lambda c: c[0])


# Flop-equivalent cost of one more block group (its unrolled Gauss-Jordan, A^-1 B and mat-vecs
# are separate small kernels): an assumed tie-breaker, so that a group is added only when it
# saves padding. Groups are asked for only for large vmapped batches (``max_groups``), where the
# padded flops dominate (benchmarks/bench_blocks.py).
GROUP_COST = 2000.0


def _group_cost(nb, bs, nh, solves_per_factor):
    """Flops of one group of ``nb`` blocks of size ``bs``: block inverses, ``A^-1 B``, its
    share of the Schur complement; per solve the block mat-vecs and hub terms."""
    return (nb * bs ** 3 + nb * bs ** 2 * nh + nb * bs * nh ** 2
            + solves_per_factor * (nb * bs ** 2 + 2 * nb * bs * nh))


def _best_groups(sizes: tuple, nh: int, solves_per_factor: int, max_groups: int):
    """Block sizes -> (cost, classes): the class sizes (descending, the largest block size
    first) that minimise the padded flop estimate plus ``GROUP_COST`` per extra group; every
    block is padded to the smallest class that holds it."""
    from itertools import combinations

    base = nh ** 3 + solves_per_factor * nh ** 2
    distinct = sorted(set(sizes), reverse=True)
    if not distinct:
        return base, ()
    best = None
    for r in range(min(max_groups, len(distinct))):
        for extra in combinations(distinct[1:], r):
            classes = (distinct[0],) + extra
            count = dict.fromkeys(classes, 0)
            for s in sizes:
                count[min(c for c in classes if c >= s)] += 1
            cost = base + GROUP_COST * r + sum(
                _group_cost(nb, bs, nh, solves_per_factor) for bs, nb in count.items())
            if best is None or cost < best[0]:
                best = (cost, classes)
    return best


def _layout_cost(comps, nh, solves_per_factor, max_groups=1):
    """Flop estimate of one factorisation plus ``solves_per_factor`` solves of the padded
    block-arrowhead layout (blocks grouped by size, see :func:`_best_groups`)."""
    sizes = tuple(sorted((len(c) for c in comps), reverse=True))
    return _best_groups(sizes, nh, solves_per_factor, max_groups)[0]


def _greedy_hubs(adj, max_hubs, solves_per_factor, rule, max_groups=1):
    """One greedy hub sequence; returns the cheapest (cost, hubs, comps) among its prefixes and
    the one-state extensions tried at each step.

    Each step removes one state. ``rule="split"``: the candidates are the states of the first
    largest component, ranked by the largest component left (ties: highest degree).
    ``rule="split_all"``: the states of every largest component, ranked by (largest component
    left, how many components of that size, layout cost, -degree), so that when several blocks
    share the largest size they are split one after the other. ``rule="degree"``: the states of
    highest remaining degree (blood pools first), ranked by the largest component left.
    """
    n = adj.shape[0]
    keep = np.ones(n, dtype=bool)
    hubs: list[int] = []
    comps = _components(adj, keep)
    best = None

    def layout_cost(comps, nh):
        return _layout_cost(comps, nh, solves_per_factor, max_groups)

    for _ in range(min(max_hubs, n) + 1):
        cost = layout_cost(comps, len(hubs))
        if best is None or cost < best[0]:
            best = (cost, list(hubs), comps)
        if not keep.any() or len(hubs) >= max_hubs:
            break
        bs = max(len(c) for c in comps)
        deg = (adj & keep[None, :]).sum(axis=1)
        if rule == "split":
            pool = [max(comps, key=len)]
        elif rule == "split_all":
            pool = [c for c in comps if len(c) == bs]
        else:
            dk = np.where(keep, deg, -1)
            pool = [np.nonzero(dk == dk.max())[0].tolist()]
        trial = []
        for comp in pool:
            for c in comp:
                keep[c] = False
                rest = _components(adj, keep)
                keep[c] = True
                sizes = [len(r) for r in rest]
                mb = max(sizes, default=0)
                cost = layout_cost(rest, len(hubs) + 1)
                if cost < best[0]:       # every evaluated hub set is a candidate layout
                    best = (cost, hubs + [c], rest)
                key = (mb, sizes.count(mb), cost, -deg[c], c) if rule == "split_all" \
                    else (mb, -deg[c], c)
                trial.append((key, c, rest))
        _, h, comps = min(trial, key=lambda x: x[0])
        hubs.append(h)
        keep[h] = False
    return best


def block_structure(pattern: np.ndarray, max_hubs: int = 12, solves_per_factor: int = 8,
                    max_groups: int = 1) -> BlockStructure:
    """Choose hubs, blocks and block groups from a sparsity pattern (n x n bool) automatically.

    Hubs are removed greedily (see :func:`_greedy_hubs`) by three rules: the original one (a
    state of the largest component whose removal leaves the smallest largest component), one
    that splits all components of the largest size in turn (it matters when two blocks share
    the largest size, e.g. merged organs of a reduced model) and highest degree first (blood
    pools; on the reduced psma-pbrpk the component rules peel organ vascular states off one by
    one and end with 10 hubs, blood-first needs 4). Among the hub sets met on the three
    sequences (at most max_hubs hubs) the layout with the smallest flop estimate
    (:func:`_layout_cost`: factorisation plus ``solves_per_factor`` solves) is kept; ties go to
    the earlier rule. The blocks are then grouped by size (at most ``max_groups`` groups, see
    :func:`_best_groups`); ``max_groups=1`` pads every block to the largest.
    """
    pattern = np.asarray(pattern, dtype=bool)
    n = pattern.shape[0]
    if max_groups < 1:
        raise InputError(f"max_groups must be at least 1, not {max_groups}")
    adj = (pattern | pattern.T) & ~np.eye(n, dtype=bool)
    best = min((_greedy_hubs(adj, max_hubs, solves_per_factor, rule, max_groups) + (k,)
                for k, rule in enumerate(("split", "split_all", "degree"))),
               key=lambda x: (x[0], x[3]))
    _, hubs, comps, _ = best
    sizes = tuple(sorted((len(c) for c in comps), reverse=True))
    _, classes = _best_groups(sizes, len(hubs), solves_per_factor, max_groups)
    cls = [min(c for c in classes if c >= len(comp)) for comp in comps]
    order = sorted(range(len(comps)), key=lambda k: (-cls[k], comps[k][0]))
    groups = tuple((c, sum(1 for x in cls if x == c)) for c in classes)
    pos = np.empty(n, dtype=np.int64)
    p = 0
    for k in order:
        for j, i in enumerate(comps[k]):
            pos[i] = p + j
        p += cls[k]
    for j, i in enumerate(hubs):
        pos[i] = p + j
    blocks = tuple(tuple(comps[k]) for k in order)
    return BlockStructure(n, tuple(hubs), blocks, groups, pos)


# Small products below are written as einsum or as sums unrolled over the short contracted
# axis: under vmap on CPU these are 5-10x faster than multiply-and-reduce over a short minor axis
# or dot_general with two batch dimensions (measured, 2-core EPYC, jax 0.10.2).
def _bmv(A, x):
    """Block mat-vec: (nbk, m, m) x (nbk, m) -> (nbk, m)."""
    import jax.numpy as jnp

    return jnp.einsum("kij,kj->ki", A, x)


def _unrolled_mv(B, x):
    """(..., m, n) x (n,) -> (..., m), unrolled over n."""
    import jax.numpy as jnp

    if B.shape[-1] == 0:
        return jnp.zeros(B.shape[:-1], B.dtype)
    return sum(B[..., j] * x[j] for j in range(B.shape[-1]))


def _inv_nopivot(M):
    """Inverse of (..., m, m) matrices by Gauss-Jordan elimination without pivoting (for
    diagonally dominant M-matrices), unrolled over m and vectorised over the leading axes."""
    import jax.numpy as jnp

    m = M.shape[-1]
    X = jnp.concatenate([M, jnp.broadcast_to(jnp.eye(m, dtype=M.dtype), M.shape)], axis=-1)
    for k in range(m):
        row = X[..., k, :] / X[..., k, k:k + 1]
        ek = np.zeros(m)
        ek[k] = 1.0
        col = X[..., :, k] * (1.0 - ek)
        X = X - col[..., :, None] * row[..., None, :]
        X = jnp.where(ek[:, None] > 0, row[..., None, :], X)
    return X[..., m:]


# -- the solver ----------------------------------------------------------------------------------
class PBPKRosenbrock:
    """Rodas5P for a compiled :class:`~pbpk_models.model.Model` (hashable by identity).

    ``solve(vals, kon_v, t_ref, y0, t0, t1, ts, ...)`` integrates from ``t0`` to ``t1``;
    ``vals, kon_v`` from ``model.operator(p)``, ``t_ref`` the administration time of the
    total-ligand form's decay weight. ``linear_solver``: ``"block"`` (block-arrowhead
    elimination) or ``"dense"`` (pivoted dense LU, for comparison). ``max_groups``: blocks
    grouped by size into at most this many groups (:func:`block_structure`). One group (every
    block padded to the largest) has the fewest operations and suits one patient; three groups
    pad less and suit large vmapped batches (psma-pbrpk, 64 patients: 1.64x the throughput for
    14 % more compile time; 6-cycle trial engine, 256 patients: 1.19x for twice the compile
    time; ``benchmarks/bench_blocks.py``).
    """

    def __init__(self, model, linear_solver: str = "block", max_hubs: int = 12,
                 max_groups: int = 1):
        if linear_solver not in ("block", "dense"):
            raise InputError(f"linear_solver must be 'block' or 'dense', not {linear_solver!r}")
        self.model = model
        self.linear_solver = linear_solver
        self.tab = rodas5p()
        n_imp = model.sink_offset
        self.n_imp, self.nq = n_imp, model.n_states - n_imp
        rows, cols = np.asarray(model.sparse_rows), np.asarray(model.sparse_cols)
        if np.any(cols >= n_imp):
            raise ModelError("sink or time-integral states feed back into the system; the "
                             "Rosenbrock solver integrates them as quadratures")
        fi, bi = np.asarray(model._free_idx), np.asarray(model._bound_idx)
        self.nb, self.ns = fi.shape
        # analytic Jacobian of the binding term: entries (row, col) and their value as a
        # signed selection of the (2 nb ns) vector [d_free.ravel(), d_bound.ravel()]
        nl_r, nl_c, nl_src, nl_sgn = [], [], [], []
        nbs = self.nb * self.ns
        for b in range(self.nb):
            for s in range(self.ns):
                k = b * self.ns + s
                for r, sg in ((fi[b, s], 1.0), (bi[b, s], -1.0)):
                    nl_r.append(r); nl_c.append(fi[b, s]); nl_src.append(k); nl_sgn.append(sg)
                    for s2 in range(self.ns):
                        nl_r.append(r); nl_c.append(bi[b, s2]); nl_src.append(nbs + k)
                        nl_sgn.append(sg)
        nl_r, nl_c = np.array(nl_r, dtype=int), np.array(nl_c, dtype=int)
        pattern = np.zeros((n_imp, n_imp), dtype=bool)
        lin = rows < n_imp
        pattern[rows[lin], cols[lin]] = True
        pattern[nl_r, nl_c] = True
        self.struct = st = block_structure(pattern, max_hubs=max_hubs, max_groups=max_groups)
        nh, npad = st.n_hubs, st.n_padded
        self.nbb = nbb = st.n_block_states
        pos = st.pos
        self.real_mask = np.zeros(npad)        # 1 at real states, 0 at padding
        self.real_mask[pos] = 1.0

        # Flat block arrays: per group (block size bs, nb blocks, first padded index off)
        # A (nb, bs, bs), B (nb, bs, nh), C (nh, nb bs); then D (nh, nh). ``_glayout`` holds
        # (bs, nb, off, offA, offB, offC) per group; ``_offD`` and ``_flat_size`` the rest.
        glayout, off, flat = [], 0, 0
        for bs, nb in st.groups:
            glayout.append((bs, nb, off, flat, flat + nb * bs * bs, flat + nb * bs * (bs + nh)))
            off += nb * bs
            flat += nb * bs * (bs + 2 * nh)
        self._glayout = tuple(glayout)
        self._offD, self._flat_size = flat, flat + nh * nh
        gstart = np.array([g[2] for g in glayout] + [nbb], dtype=np.int64)

        def dest(r, c):
            """Flat index of the Jacobian entry (r, c) of the implicit system."""
            pr, pc = pos[r], pos[c]
            rb, cb = pr < nbb, pc < nbb
            out = np.empty(r.shape, dtype=np.int64)
            gr = np.searchsorted(gstart, pr, side="right") - 1
            gc = np.searchsorted(gstart, pc, side="right") - 1
            for g, (bs, nb, o, oA, oB, oC) in enumerate(glayout):
                m = rb & cb & (gr == g)
                lr, lc = pr[m] - o, pc[m] - o
                if np.any((gc[m] != g) | (lr // bs != lc // bs)):
                    raise ModelError("internal: Jacobian entry across blocks")
                out[m] = oA + (lr // bs) * bs * bs + (lr % bs) * bs + lc % bs
                m = rb & ~cb & (gr == g)
                out[m] = oB + (pr[m] - o) * nh + (pc[m] - nbb)
                m = ~rb & cb & (gc == g)
                out[m] = oC + (pr[m] - nbb) * nb * bs + (pc[m] - o)
            m = ~rb & ~cb
            out[m] = flat + (pr[m] - nbb) * nh + (pc[m] - nbb)
            return out

        self._lin_sel = np.nonzero(lin)[0]
        self._lin_dest = dest(rows[lin], cols[lin])
        q_sel = np.nonzero(~lin)[0]
        self._q_sel = q_sel
        self._q_dest = (rows[q_sel] - n_imp) * npad + pos[cols[q_sel]]
        # quadrature weight classes: 0 = unweighted; 1 = exp(-lambda (t - t_ref)) (total form)
        qrow_cls = np.zeros(self.nq, dtype=np.int64)
        self.decay = [0.0]
        if model.mode == "total":
            qrow_cls[model.acc_offset - n_imp:] = 1
            self.decay.append(float(model.decay_constants_per_h[0]))
        self.qrow_cls = qrow_cls
        # binding term: gathers by index, the scatter as a constant one-hot GEMM
        self._pf, self._pb = pos[fi.ravel()], pos[bi.ravel()]
        Sf = np.zeros((npad, nbs))
        Sb = np.zeros((npad, nbs))
        Sf[pos[fi.ravel()], np.arange(nbs)] = 1.0
        Sb[pos[bi.ravel()], np.arange(nbs)] = 1.0
        self._Pnl = (Sf - Sb).T                       # q.ravel() @ Pnl adds q to free, -q bound
        # [d_free, d_bound] (2 nbs) -> values at the distinct Jacobian entries of the binding
        # term (signed selection), scattered into the block arrays
        nl_dest = dest(nl_r, nl_c)
        self._jac_dest, inv = np.unique(nl_dest, return_inverse=True)
        Pj = np.zeros((2 * nbs, self._jac_dest.size))
        np.add.at(Pj, (np.array(nl_src, dtype=int), inv.ravel()), np.array(nl_sgn, dtype=float))
        self._Pjac = Pj
        # dense fallback: block arrays -> dense padded matrix (same order as the flat arrays)
        dr, dc = [], []
        for bs, nb, o, _, _, _ in glayout:
            for k in range(nb):
                for i in range(bs):
                    for j in range(bs):
                        dr.append(o + k * bs + i); dc.append(o + k * bs + j)
            for k in range(nb):
                for i in range(bs):
                    for j in range(nh):
                        dr.append(o + k * bs + i); dc.append(nbb + j)
            for j in range(nh):
                for i in range(nb * bs):
                    dr.append(nbb + j); dc.append(o + i)
        for i in range(nh):
            for j in range(nh):
                dr.append(nbb + i); dc.append(nbb + j)
        self._dense_rows, self._dense_cols = np.array(dr), np.array(dc)

    # -- layout ------------------------------------------------------------------------------------
    def to_padded(self, y):
        """Model states (n_states,) -> (padded implicit states (n_padded,), quadratures (nq,))."""
        import jax.numpy as jnp

        yp = jnp.zeros(self.struct.n_padded, y.dtype).at[self.struct.pos].set(y[:self.n_imp])
        return yp, y[self.n_imp:]

    def from_padded(self, yp, q):
        import jax.numpy as jnp

        return jnp.concatenate([yp[..., self.struct.pos], q], axis=-1)

    # -- operators ---------------------------------------------------------------------------------
    def _split(self, flat):
        """Flat block arrays -> (((A, B, C) per group), D)."""
        nh = self.struct.n_hubs
        groups = tuple((flat[oA:oB].reshape(nb, bs, bs), flat[oB:oC].reshape(nb, bs, nh),
                        flat[oC:oC + nh * nb * bs].reshape(nh, nb * bs))
                       for bs, nb, _, oA, oB, oC in self._glayout)
        return groups, flat[self._offD:].reshape(nh, nh)

    def _block_parts(self, y):
        """Padded vector -> (block vectors (nb, bs) per group, hub part)."""
        return (tuple(y[o:o + nb * bs].reshape(nb, bs) for bs, nb, o, _, _, _ in self._glayout),
                y[self.nbb:])

    def setup(self, vals, kon_v):
        """Per-parameter constants: K in block form (flat), quadrature matrix G, kon/V."""
        import jax.numpy as jnp

        Kflat = jnp.zeros(self._flat_size, vals.dtype).at[self._lin_dest].add(vals[self._lin_sel])
        G = jnp.zeros(self.nq * self.struct.n_padded, vals.dtype).at[self._q_dest].add(
            vals[self._q_sel]).reshape(self.nq, self.struct.n_padded)
        return Kflat, G, kon_v

    def _binding(self, y, kon_v):
        free = y[self._pf].reshape(self.nb, self.ns)
        bound = y[self._pb].reshape(self.nb, self.ns)
        return free, bound.sum(axis=1, keepdims=True)

    def rhs(self, Kflat, kon_v, y):
        """dy/dt of the padded implicit states (autonomous)."""
        free, btot = self._binding(y, kon_v)
        q = kon_v * free * btot
        return self.block_matvec(Kflat, y) + q.ravel() @ self._Pnl

    def jacobian_flat(self, Kflat, kon_v, y):
        """Analytic Jacobian of :meth:`rhs` in block form (flat; see :meth:`dense`)."""
        import jax.numpy as jnp

        free, btot = self._binding(y, kon_v)
        dfree = kon_v * btot
        dbound = kon_v * free
        nl = jnp.concatenate([dfree.ravel(), dbound.ravel()]) @ self._Pjac
        return Kflat.at[self._jac_dest].add(nl)

    def dense(self, flat):
        """Dense (n_padded, n_padded) matrix from block arrays (flat)."""
        import jax.numpy as jnp

        n = self.struct.n_padded
        return jnp.zeros((n, n), flat.dtype).at[self._dense_rows, self._dense_cols].add(flat)

    def factor(self, Jflat, inv_hg, method=None):
        """Factorise M = I * inv_hg - J (J in block form)."""
        import jax.numpy as jnp
        import jax.scipy.linalg as jsl

        method = method or self.linear_solver
        if method == "dense":
            n = self.struct.n_padded
            M = inv_hg * jnp.eye(n, dtype=Jflat.dtype) - self.dense(Jflat)
            return jsl.lu_factor(M)
        groups, D = self._split(Jflat)
        nh = self.struct.n_hubs
        S = inv_hg * jnp.eye(nh, dtype=Jflat.dtype) - D
        facs = []
        for A, B, C in groups:
            bs = A.shape[-1]
            Ainv = _inv_nopivot(inv_hg * jnp.eye(bs, dtype=A.dtype) - A)
            E = -sum(Ainv[:, :, j, None] * B[:, None, j, :] for j in range(bs))  # -A^-1 B
            S = S + C @ E.reshape(-1, nh)
            facs.append((Ainv, E, C))
        return tuple(facs), _inv_nopivot(S)

    def solve_linear(self, fac, r, method=None):
        import jax.numpy as jnp
        import jax.scipy.linalg as jsl

        method = method or self.linear_solver
        if method == "dense":
            return jsl.lu_solve(fac, r)
        facs, Sinv = fac
        rbs, acc = self._block_parts(r)
        zbs = []
        for (Ainv, _, C), rb in zip(facs, rbs):
            zb = _bmv(Ainv, rb)
            acc = acc + C @ zb.ravel()
            zbs.append(zb)
        xh = Sinv @ acc
        xb = [(zb - _unrolled_mv(E, xh)).ravel() for zb, (_, E, _) in zip(zbs, facs)]
        return jnp.concatenate(xb + [xh])

    def block_matvec(self, flat, y):
        """J y for a matrix J in block form (flat) and a padded vector y."""
        import jax.numpy as jnp

        groups, D = self._split(flat)
        ybs, yh = self._block_parts(y)
        fh = D @ yh
        fb = []
        for (A, B, C), yb in zip(groups, ybs):
            fb.append((_bmv(A, yb) + _unrolled_mv(B, yh)).ravel())
            fh = fh + C @ yb.ravel()
        return jnp.concatenate(fb + [fh])

    def _stage_solver(self):
        """``lsolve(fac, Jflat, inv_hg, r) = (I inv_hg - J)^-1 r`` given the factorisation
        ``fac`` of that matrix, with a custom JVP that reuses ``fac``:
        ``dx = M^-1 (dr + dJ x - d(inv_hg) x)``. Without it, forward mode differentiates the
        Gauss-Jordan factorisation itself once per tangent direction (``jacfwd`` over 7
        parameters cost ~20 primal solves); with it a tangent costs one mat-vec and one
        triangular-free block solve per stage. Primal values are unchanged."""
        import jax

        if getattr(self, "_lsolve", None) is not None:
            return self._lsolve

        @jax.custom_jvp
        def lsolve(fac, Jflat, inv_hg, r):
            return self.solve_linear(fac, r)

        @lsolve.defjvp
        def lsolve_jvp(primals, tangents):
            fac, Jflat, inv_hg, r = primals
            _, dJ, dinv, dr = tangents
            x = self.solve_linear(fac, r)
            rhs = dr + self.block_matvec(dJ, x) - dinv * x
            return x, self.solve_linear(fac, rhs)

        self._lsolve = lsolve
        return lsolve

    # -- one step ----------------------------------------------------------------------------------
    def step(self, consts, t_ref, t, y, h):
        """One Rodas5P step of size h from (t, y): returns (dy, dq, err_y, err_q)."""
        import jax.numpy as jnp
        from jax import lax

        Kflat, G, kon_v = consts
        tab = self.tab
        s = len(tab.c)
        inv_h = 1.0 / h
        hg = h * tab.gamma
        Jflat = self.jacobian_flat(Kflat, kon_v, y)
        inv_hg = 1.0 / hg
        # the factorisation carries no derivative: tangents go through lsolve's custom JVP
        fac = self.factor(lax.stop_gradient(Jflat), lax.stop_gradient(inv_hg))
        lsolve = self._stage_solver()
        lam = jnp.asarray(self.decay, dtype=y.dtype)                 # (ncls,)
        w_n = jnp.exp(-lam * (t - t_ref))
        dw_n = -lam * w_n
        ks, vs = [], []
        for i in range(s):
            U = y
            for j in range(i):
                if tab.a[i, j] != 0.0:
                    U = U + tab.a[i, j] * ks[j]
            r = self.rhs(Kflat, kon_v, U)
            for j in range(i):
                if tab.C[i, j] != 0.0:
                    r = r + (tab.C[i, j] * inv_h) * ks[j]
            k = lsolve(fac, Jflat, inv_hg, r)
            # quadrature recursion (one y-space vector per weight class)
            w_i = jnp.exp(-lam * (t + tab.c[i] * h - t_ref))
            v = w_i[:, None] * U[None] + w_n[:, None] * k[None]
            if tab.d[i] != 0.0:
                v = v + (h * tab.d[i]) * dw_n[:, None] * y[None]
            for j in range(i):
                if tab.C[i, j] != 0.0:
                    v = v + (tab.C[i, j] * inv_h) * vs[j]
            ks.append(k)
            vs.append(hg * v)
        dy = sum(tab.m[i] * ks[i] for i in range(s) if tab.m[i] != 0.0)
        ey = sum(tab.e[i] * ks[i] for i in range(s) if tab.e[i] != 0.0)
        Vm = sum(tab.m[i] * vs[i] for i in range(s) if tab.m[i] != 0.0)   # (ncls, npad)
        Ve = sum(tab.e[i] * vs[i] for i in range(s) if tab.e[i] != 0.0)
        onehot = (self.qrow_cls[:, None] == np.arange(len(self.decay))[None]).astype(float)
        dq = ((G @ Vm.T) * onehot).sum(-1)                                  # (nq,)
        eq = ((G @ Ve.T) * onehot).sum(-1)
        return dy, dq, ey, eq

    # -- integration -------------------------------------------------------------------------------
    def solve(self, vals, kon_v, t_ref, y0, t0, t1, ts, *, rtol, atol, max_steps=20000,
              dt0=1e-3, safety=0.9, facmin=0.2, facmax=6.0):
        """Integrate from t0 to t1, landing on every output time.

        Returns ``(ys, y_end, ok, n_steps)``: ``ys`` (n_ts, n_states) at ``clip(ts, t0, t1)``,
        ``y_end`` at t1, ``ok`` False if the step budget ran out, the step size underflowed
        or the state became non-finite, ``n_steps`` attempted steps.
        """
        import jax.numpy as jnp
        from jax import lax

        dtype = y0.dtype
        consts = self.setup(vals, kon_v)
        yp0, q0 = self.to_padded(y0)
        n_true = float(self.n_imp + self.nq)
        kexp = float(self.tab.err_order + 1)
        b1, b2 = 0.7 / kexp, 0.4 / kexp
        tg = jnp.concatenate([jnp.clip(ts, t0, t1), jnp.reshape(t1, (1,)).astype(dtype)])
        order = jnp.argsort(tg, stable=True)
        tgs = tg[order]
        n_tg = tg.shape[0]
        i0 = jnp.searchsorted(tgs, t0, side="right")
        saved_y = jnp.broadcast_to(yp0, (n_tg,) + yp0.shape)
        saved_q = jnp.broadcast_to(q0, (n_tg,) + q0.shape)
        t0 = jnp.asarray(t0, dtype)
        h0 = jnp.minimum(jnp.asarray(dt0, dtype), jnp.maximum(t1 - t0, 1e-12))
        init = (t0, yp0, q0, h0, jnp.asarray(1.0, dtype), i0, jnp.asarray(0),
                jnp.asarray(False), jnp.asarray(True), saved_y, saved_q)

        def cond(c):
            _, _, _, _, _, i, n, _, ok, _, _ = c
            return (i < n_tg) & (n < max_steps) & ok

        def body(c):
            t, y, q, h, err_prev, i, n, rejected, ok, sy, sq = c
            target = tgs[jnp.minimum(i, n_tg - 1)]
            gap = target - t
            land = h >= gap
            h_try = jnp.where(land, gap, h)
            dy, dq, ey, eq = self.step(consts, t_ref, t, y, h_try)
            y1, q1 = y + dy, q + dq
            sc_y = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
            sc_q = atol + rtol * jnp.maximum(jnp.abs(q), jnp.abs(q1))
            err = jnp.sqrt((jnp.sum((ey / sc_y) ** 2) + jnp.sum((eq / sc_q) ** 2)) / n_true)
            err = lax.stop_gradient(err)
            finite = jnp.isfinite(err)
            accept = finite & (err <= 1.0)
            e = jnp.maximum(err, 1e-10)
            fac_acc = safety * e ** (-b1) * jnp.maximum(err_prev, 1e-4) ** b2
            fac_acc = jnp.clip(fac_acc, facmin, jnp.where(rejected, 1.0, facmax))
            fac_rej = jnp.where(finite, jnp.clip(safety * e ** (-1.0 / kexp), facmin, 1.0), 0.25)
            h_new = h_try * jnp.where(accept, fac_acc, fac_rej)
            # a step shortened to land on an output time keeps the earlier proposal
            h_new = jnp.where(accept & land, jnp.maximum(h_new, h), h_new)
            h_new = lax.stop_gradient(h_new)
            t_new = jnp.where(land, target, t + h_try)
            save = accept & land
            sy = sy.at[i].set(jnp.where(save, y1, sy[i]))
            sq = sq.at[i].set(jnp.where(save, q1, sq[i]))
            i_new = jnp.where(save, jnp.searchsorted(tgs, target, side="right"), i)
            t = jnp.where(accept, t_new, t)
            y = jnp.where(accept, y1, y)
            q = jnp.where(accept, q1, q)
            err_prev = jnp.where(accept, jnp.maximum(err, 1e-4), err_prev)
            ok = ok & (h_new > 1e-14 * jnp.maximum(jnp.abs(t), 1.0))
            return (t, y, q, h_new, err_prev, i_new, n + 1, ~accept, ok, sy, sq)

        out = lax.while_loop(cond, body, init)
        _, y, q, _, _, i, n, _, ok, sy, sq = out
        ok = ok & (i >= n_tg) & jnp.all(jnp.isfinite(y))
        first = jnp.searchsorted(tgs, tgs, side="left")
        ys_sorted = self.from_padded(sy[first], sq[first])
        ys = jnp.zeros_like(ys_sorted).at[order].set(ys_sorted)
        return ys[:-1], ys[-1], ok, n
