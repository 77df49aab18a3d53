"""A surrogate of measured KL divergence over a search space: additive per-choice effects around the prior, plus the
pairwise interactions the data support, with honest uncertainty.

Model (on the KLD scale, not log KLD), for a point x (a level per dimension, `choices.ChoiceTable`):

    KLD(x) = b0 + g P(x) + sum_f z_f P_f(x) / r_f + sum_d s_d p_d[x_d] / r_d + sum_d delta_d[x_d]
                + sum_{(a,b) in S} eta_ab[x_a, x_b] + e

* p_d[l] is the prior's relative error of dimension d at level l (`prior.Prior`), P(x) = sum_d p_d[x_d], P_f(x)
  its part in family f (the space file's dimension: attn_q for attn_q.L0..L29), r_f and r_d the prior's ranges
  (so every ridge coefficient is in KLD units). g (free) turns relative error into KLD; z_f lets a family's
  sensitivity differ, s_d a dimension's (both ridge); delta (ridge toward 0: each effect is pulled toward its
  prior-scaled value) corrects single choices, on the scale of the level's own prior error (p_d[l] / r_d + 0.05):
  the prior's error is relative, and a choice it calls nearly lossless (Q5_K, F32) must not carry noise larger
  than the true differences among such choices, which the solver would exploit across dozens of dimensions. eta
  are the selected interactions (ridge). Without a prior the model is intercept + ridge main effects (+ pairs).
* Why KLD and not log KLD: for small perturbations a model's KL divergence is, to first order, a *sum* over tensors
  of sensitivity x relative error (the linearity theorem of HIGGS, Malinovskii et al. 2024); that is additive on
  the KLD scale, and the prior enters linearly. A log model would make every change multiplicative (upgrading
  attn_q would cut the whole KLD by a fixed fraction, whatever the experts do). The heteroscedasticity that log
  would absorb is modelled instead: row i has variance kld_se_i^2 + (tau m_i)^2, the measurement's standard error
  plus a model misfit proportional to the predicted KLD m_i (tau by the method of moments: the weighted
  chi-square equals its degrees of freedom).
* Ridge strengths (levels, families, dimensions) are chosen by the REML evidence (marginal likelihood), with a weak
  half-normal prior on tau as tie-breaker (see `_tune`): leave-one-out cannot judge a level measured once.
* Interactions: forward selection. At each step every pair of dimensions that both vary in the rows is ranked by a
  score test of its cell indicators (made orthogonal to the pair's main effects) against the current fit; the best
  `_NESTED_TESTS` are refitted and tested as nested models, weighted with the larger model's variances (an
  F-test's logic), on all rows and again without the row that contributes most (evidence resting on one row is an
  outlier's). The best pair enters only if that p-value is below the 3-standard-error level (0.0027) divided by
  the number of pairs ranked (Bonferroni: purely additive rows invent an interaction with probability under 0.3%
  per step) *and* the refit lowers the exact leave-one-out predictive loss. At most `max_interactions` pairs.
* Uncertainty: `predict` returns the posterior mean and standard error: parameter covariance (X'WX + ridge)^-1
  (the Bayesian reading of the ridge: a choice never measured keeps its prior's width) plus the misfit variance.
  Leave-one-out numbers (`FitQuality`) are exact for the final model (closed form, e_i = r_i / (1 - h_ii)) but
  do not redo the selection, so they flatter selected interactions slightly.

Rows: `observations_from_rows` reads store rows (complete, KLD present, one evaluation): a row's `map` gives its
levels exactly (`ChoiceTable.levels_of_map`), else its `params` (a partial point: missing dimensions at the base
map's choice, `SearchSpace.map_for` semantics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .choices import ChoiceError, ChoiceTable, params_of_row
from ..core import metrics
from ..core.compat import former_names
from ..core.errors import CerebellumError

if TYPE_CHECKING:
    from .prior import Prior
    from .solver import Problem

THREE_SIGMA_P = 0.0026997960632601866  # two-sided P(|N(0,1)| > 3)
DEFAULT_MAX_INTERACTIONS = 8
MIN_ROWS = 3
LEVEL_FLOOR = 0.05  # a level deviation's scale: its prior error / the dimension's prior range, plus this
MISFIT_SCALE = 0.02  # the half-normal prior on tau, the model misfit relative to KLD (a tie-breaker, see _tune)
_NESTED_TESTS = 5  # pairs refitted per selection step (the best by the score test)
# Ridge strengths, in units of the median row weight 1 / kld_se^2: a level's prior weighs as much as 10^e rows.
_LAMBDA_GRID = tuple(10.0 ** e for e in range(-5, 4))


class SurrogateError(CerebellumError):
    """Rows a surrogate cannot be fitted on (too few, non-finite); one line."""


@dataclass(frozen=True)
class Observation:
    """One measured row: the levels of its map (`ChoiceTable` levels), the mean of the fitted metric (KLD on the
    text or the code corpus, or NLL) and that mean's standard error."""

    levels: tuple[int, ...]
    value: float
    se: float | None = None
    label: str = ""


def observation(table: ChoiceTable, point: Mapping[str, int], value: float, se: float | None = None,
                label: str = "") -> Observation:
    """An observation of a (possibly partial) point."""
    return Observation(table.levels_of_point(point), float(value), None if se is None else float(se), label)


# What a surrogate can be fitted on: mean KLD (text or code corpus: the store metrics), or mean NLL = ln(PPL)
# (per-token, additive; from the stored perplexity).
FIT_METRICS = ("kld", "kld_code", "nll")


def _metric_of(row: Mapping, metric: str) -> tuple[float | None, float | None]:
    """(value, standard error) of a row's `metric`; NLL from the stored PPL (ln PPL, SE by the delta method)."""
    if metric in ("kld", "kld_code"):
        m = metrics.metric(metric)
        return _finite(m.stored(row)), _finite(m.stored_se(row))
    if metric == "nll":
        ppl_metric = metrics.metric("ppl")
        ppl, se = _finite(ppl_metric.stored(row)), _finite(ppl_metric.stored_se(row))
        if ppl is None or ppl <= 0:
            return None, None
        return math.log(ppl), None if se is None else se / ppl
    raise SurrogateError(f"unknown surrogate metric {metric!r}; choose {' or '.join(FIT_METRICS)}")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def observations_from_rows(table: ChoiceTable, rows: Iterable[Mapping], eval_hash: str | None = None,
                           metric: str = "kld") -> tuple[tuple[Observation, ...], int]:
    """(observations, rows skipped) from result-store rows: complete rows with the metric (a KLD on the text or
    the code corpus, or a PPL for metric "nll"; of `eval_hash` when given) whose map (or, without a map, params) is
    a choice of the table; the others are counted as skipped."""
    out, skipped = [], 0
    for row in rows:
        value, se = _metric_of(row, metric) if row.get("status") == "complete" else (None, None)
        if value is None:
            skipped += 1
            continue
        if eval_hash is not None and row.get("eval_hash") != eval_hash:
            skipped += 1
            continue
        levels = None
        if row.get("map"):
            levels = table.levels_of_map(dict(row["map"]))
        else:
            params = params_of_row(row)
            if params is not None:
                try:
                    levels = table.levels_of_point(params)
                except ChoiceError:
                    levels = None
        if levels is None:
            skipped += 1
            continue
        out.append(Observation(levels, value, se, str(row.get("label") or row.get("trial_id") or "")))
    return tuple(out), skipped


@dataclass(frozen=True)
class PairTest:
    """One pair's test at the last selection step: "nested" (refitted, the p-value that decides) for the best few,
    "score" (the ranking) for the others."""

    a: str
    b: str
    statistic: float
    df: int
    log10_p: float
    test: str = "score"


@dataclass(frozen=True)
class FitQuality:
    """How well the surrogate fits its rows. LOO: exact leave-one-out of the final model (selection not redone)."""

    n_rows: int
    r2: float  # weighted, in sample
    loo_rmse: float  # KLD units
    loo_rel_rmse: float  # root mean square of LOO error / measured KLD
    loo_spearman: float  # rank correlation of LOO predictions with measurements
    effective_params: float  # trace of the hat matrix
    misfit: float  # tau: the model error's standard deviation as a fraction of the predicted KLD
    lambda_levels: float  # ridge strength of a level effect, in rows: its prior weighs as much as this many rows
    lambda_families: float  # the same for a family's sensitivity
    lambda_dims: float  # the same for a dimension's sensitivity
    prior_coefficient: float | None  # g: KLD per unit of summed relative error
    prior_coefficient_se: float | None
    screened: tuple[PairTest, ...] = ()  # the best pairs of the last selection step, best first
    bonferroni_p: float = 0.0  # the threshold the last screening step used


@dataclass(frozen=True)
class PairDeparture:
    """A cell of a selected pair whose joint effect departs from additivity: relative to the base cell (ba, bb),
    departure = f(i, j) - f(i, bb) - f(ba, j) + f(ba, bb), in KLD."""

    a: str
    b: str
    type_a: str
    type_b: str
    departure: float
    se: float

    @property
    def z(self) -> float:
        return self.departure / self.se if self.se > 0 else math.inf


# ---- design ----------------------------------------------------------------------------------------------------------


class _Design:
    """Column layout and row encoding of the model (internal units: KLD divided by `scale`)."""

    def __init__(self, table: ChoiceTable, prior_levels: Sequence[Sequence[float]] | None,
                 pairs: Sequence[tuple[int, int]]):
        self.table = table
        self.prior = None if prior_levels is None else [np.asarray(e, dtype=np.float64) for e in prior_levels]
        self.pairs = list(pairs)
        col = 1
        self.prior_col = None
        self.family_cols: dict[str, tuple[int, float]] = {}  # family -> (column, prior range of the family)
        self.dim_cols: dict[int, tuple[int, float]] = {}  # param index -> (column, prior range of the param)
        if self.prior is not None:
            top = max(float(np.max(e)) for e in self.prior)
            self.prior_norm = top if top > 0 else 1.0
            self.prior_col = col
            col += 1
            fams = sorted(set(table.families))
            if len(fams) > 1:
                for f in fams:
                    r = sum(float(np.ptp(self.prior[i])) for i in range(table.n_params) if table.families[i] == f)
                    if r > 0:
                        self.family_cols[f] = (col, r)
                        col += 1
            for i in range(table.n_params):
                r = float(np.ptp(self.prior[i]))
                if r > 0:
                    self.dim_cols[i] = (col, r)
                    col += 1
        # a level's deviation is relative to its prior error (plus a floor: a wrong prior can be corrected
        # additively too), so a choice the prior calls nearly lossless cannot carry a large noisy effect
        self.level_scale = []
        for i in range(table.n_params):
            r = float(np.ptp(self.prior[i])) if self.prior is not None else 0.0
            self.level_scale.append(self.prior[i] / r + LEVEL_FLOOR if r > 0 else np.ones(table.n_levels(i)))
        self.level_offset = []
        for i in range(table.n_params):
            self.level_offset.append(col)
            col += table.n_levels(i)
        self.pair_offset = []
        for a, b in self.pairs:
            self.pair_offset.append(col)
            col += table.n_levels(a) * table.n_levels(b)
        self.n_cols = col

    def penalty(self, lams: tuple[float, float, float]) -> np.ndarray:
        """Ridge strength per column from (levels and interactions, families, dimensions); 0 for the free columns
        (intercept, prior coefficient)."""
        lam_levels, lam_families, lam_dims = lams
        pen = np.full(self.n_cols, lam_levels)
        pen[0] = 0.0
        if self.prior_col is not None:
            pen[self.prior_col] = 0.0
        for c, _ in self.family_cols.values():
            pen[c] = lam_families
        for c, _ in self.dim_cols.values():
            pen[c] = lam_dims
        return pen

    def rows(self, levels: np.ndarray) -> np.ndarray:
        n = levels.shape[0]
        X = np.zeros((n, self.n_cols))
        X[:, 0] = 1.0
        t = self.table
        if self.prior is not None:
            per_dim = np.stack([self.prior[i][levels[:, i]] for i in range(t.n_params)], axis=1)
            X[:, self.prior_col] = per_dim.sum(axis=1) / self.prior_norm
            for f, (c, r) in self.family_cols.items():
                mask = np.array([fam == f for fam in t.families])
                X[:, c] = per_dim[:, mask].sum(axis=1) / r
            for i, (c, r) in self.dim_cols.items():
                X[:, c] = per_dim[:, i] / r
        rows = np.arange(n)
        for i in range(t.n_params):
            X[rows, self.level_offset[i] + levels[:, i]] = self.level_scale[i][levels[:, i]]
        for (a, b), off in zip(self.pairs, self.pair_offset):
            X[rows, off + levels[:, a] * t.n_levels(b) + levels[:, b]] = 1.0
        return X


class _Solved:
    """One weighted ridge solve with fixed variances v: coefficients, leverages, residuals; the residual maker R
    (r = R y) and the posterior covariance (X'WX + pen)^-1 on demand. Columns with a zero penalty are free.

    Primal form (p x p inverse) when there are at least as many rows as columns, else the mixed-model form
    (n x n): y = U b + Z u + e, u ~ N(0, D), e ~ N(0, V), K = V + Z D Z', P = K^-1 - K^-1 U (U'K^-1U)^-1 U'K^-1;
    then r = V P y, h_ii = 1 - v_i P_ii, u = D Z'P y (Henderson's equations, the same numbers as the primal).
    `neg2_reml`: -2 log of the restricted (REML) marginal likelihood, up to a constant: log|K| + log|U'K^-1U| +
    y'Py, the evidence the ridge strengths are chosen by."""

    def __init__(self, X: np.ndarray, y: np.ndarray, v: np.ndarray, pen: np.ndarray):
        self.X, self.v, self.pen = X, v, pen
        n, p = X.shape
        w = 1.0 / v
        free = pen <= 0
        self._P = None
        self._cov = None
        if n < p and free.sum() < n:
            U, Z, d = X[:, free], X[:, ~free], 1.0 / pen[~free]
            K = np.diag(v) + (Z * d) @ Z.T
            Kinv = _inv(K)
            KU = Kinv @ U
            S = U.T @ KU
            if np.linalg.cond(S) < 1e12:
                Sinv = _inv(S)
                self._P = Kinv - KU @ Sinv @ KU.T
                self._parts = (free, U, Z, d, KU, Sinv)
                Py = self._P @ y
                theta = np.empty(p)
                theta[free] = Sinv @ (KU.T @ y)
                theta[~free] = d * (Z.T @ Py)
                self.theta = theta
                self.r = v * Py
                self.h = 1.0 - v * np.diag(self._P)
                self.neg2_reml = (np.linalg.slogdet(K)[1] + np.linalg.slogdet(S)[1] + float(y @ Py))
                return
        tiny = 1e-9 * max(1.0, float(np.mean(w)))
        A = X.T @ (w[:, None] * X) + np.diag(np.where(free, tiny, pen))
        self._cov = _inv(A)
        self.theta = self._cov @ (X.T @ (w * y))
        self.r = y - X @ self.theta
        self.h = w * np.sum((X @ self._cov) * X, axis=1)
        # log|K| + log|U'K^-1U| = log|V| + log|D| + log|A|;  y'Py = r'Wr + theta' pen theta
        self.neg2_reml = (float(np.sum(np.log(v))) - float(np.sum(np.log(pen[~free]))) + np.linalg.slogdet(A)[1]
                          + float(np.sum(w * self.r ** 2)) + float(np.sum(pen[~free] * self.theta[~free] ** 2)))

    def resid_maker(self) -> np.ndarray:
        if self._P is not None:
            return self.v[:, None] * self._P
        return np.eye(len(self.v)) - self.X @ self._cov @ (self.X.T / self.v)

    def cov(self) -> np.ndarray:
        if self._cov is None:
            free, U, Z, d, KU, Sinv = self._parts
            p = self.X.shape[1]
            ZD = Z * d
            cov = np.empty((p, p))
            cov[np.ix_(free, free)] = Sinv
            cuu = np.diag(d) - ZD.T @ self._P @ ZD
            cov[np.ix_(~free, ~free)] = cuu
            cbu = -Sinv @ (KU.T @ ZD)
            cov[np.ix_(free, ~free)] = cbu
            cov[np.ix_(~free, free)] = cbu.T
            self._cov = cov
        return self._cov


def _inv(A: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(A)


@dataclass
class _Fit:
    solved: _Solved
    theta: np.ndarray
    h: np.ndarray
    w: np.ndarray
    v: np.ndarray
    r: np.ndarray
    tau2: float
    nlpd: float  # leave-one-out negative log predictive density (internal units)
    neg2_reml: float  # -2 log restricted marginal likelihood (up to a constant)

    @property
    def cov(self) -> np.ndarray:
        return self.solved.cov()


def _misfit_floor(y: np.ndarray) -> float:
    return 0.1 * float(np.median(np.abs(y))) or 1e-12


def _fit(X: np.ndarray, y: np.ndarray, se2: np.ndarray, pen: np.ndarray, tau2: float = 0.0,
         iterations: int = 8) -> _Fit:
    """Weighted ridge with the misfit variance tau^2 re-estimated from the residuals (method of moments),
    starting from `tau2`."""
    n = len(y)
    floor = _misfit_floor(y)
    m2 = np.maximum(np.abs(y), floor) ** 2
    for _ in range(iterations):
        v = se2 + tau2 * m2
        sol = _Solved(X, y, v, pen)
        pred = y - sol.r
        m2 = np.maximum(np.abs(pred), floor) ** 2
        new = _solve_tau2(sol.r, se2, m2, n - float(sol.h.sum()))
        done = abs(new - tau2) <= 1e-2 * max(tau2, new) or new == tau2
        tau2 = new
        if done:
            break
    h = np.clip(sol.h, 0.0, 1.0 - 1e-9)
    e = sol.r / (1.0 - h)
    v_loo = v / (1.0 - h)
    nlpd = 0.5 * float(np.sum(np.log(2 * math.pi * v_loo) + e * e / v_loo))
    return _Fit(sol, sol.theta, sol.h, 1.0 / v, v, sol.r, tau2, nlpd, sol.neg2_reml)


def _solve_tau2(r: np.ndarray, se2: np.ndarray, m2: np.ndarray, dof: float) -> float:
    """tau^2 >= 0 with sum r^2 / (se^2 + tau^2 m^2) = dof (0 when the measurement errors already explain r)."""
    if dof <= 0.5:
        return 0.0

    def chi2(t: float) -> float:
        return float(np.sum(r * r / (se2 + t * m2)))

    if chi2(0.0) <= dof:
        return 0.0
    lo, hi = 0.0, 1.0
    while chi2(hi) > dof and hi < 1e8:
        lo, hi = hi, hi * 10
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if chi2(mid) > dof:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _tune(design: _Design, L: np.ndarray, y: np.ndarray, se2: np.ndarray
          ) -> tuple[_Fit, tuple[float, float, float]]:
    """The fit with the ridge strengths (levels, families, dimensions) of greatest REML evidence: one strength for
    all over the grid, then a coarse grid over (levels, dimensions), which trade off along a diagonal valley that
    one-coordinate moves cannot follow, then coordinate passes over the full grid until none improves. Each fit
    starts from the previous one's misfit.

    Evidence, not leave-one-out: a level measured once (an ablation step) tells leave-one-out nothing about its own
    effect, so leave-one-out would shrink every such effect to zero; the evidence judges the effects' spread
    jointly. For such a level the evidence cannot tell its effect from model misfit (only their summed variance is
    identified), so the criterion adds a weak half-normal prior on the misfit (scale MISFIT_SCALE): misfit is
    claimed when the rows demonstrate it, not to explain what an effect explains as well."""
    X = design.rows(L)
    unit = float(np.median(1.0 / se2))
    grid = [unit * g for g in _LAMBDA_GRID]
    coarse = grid[::2]
    seen: dict[tuple[float, float, float], float] = {}
    best: tuple[float, _Fit, tuple[float, float, float]] | None = None
    tau2 = 0.0

    def consider(lams: tuple[float, float, float]) -> None:
        nonlocal best, tau2
        if lams in seen:
            return
        f = _fit(X, y, se2, design.penalty(lams), tau2)
        tau2 = f.tau2
        crit = f.neg2_reml + f.tau2 / MISFIT_SCALE ** 2
        seen[lams] = crit
        if best is None or crit < best[0]:
            best = (crit, f, lams)

    for lam in grid:
        consider((lam, lam, lam))
    assert best is not None
    present = (True, bool(design.family_cols), bool(design.dim_cols))
    if present[2]:
        fam = best[2][1]
        for lam_l in coarse:
            for lam_d in coarse:
                consider((lam_l, fam, lam_d))
    for _ in range(4):
        before = best[2]
        for k in (k for k in range(3) if present[k]):
            start = best[2]
            tau2 = best[1].tau2
            for lam in grid:
                consider(start[:k] + (lam,) + start[k + 1:])
        if best[2] == before:
            break
    return best[1], best[2]


# ---- interaction screening -------------------------------------------------------------------------------------------


def _log_chi2_sf(x: float, k: int) -> float:
    """Natural log of the chi-square survival function with integer k degrees of freedom (exact series)."""
    if x <= 0:
        return 0.0
    h = x / 2.0
    if k % 2 == 0:
        terms = [i * math.log(h) - math.lgamma(i + 1) for i in range(k // 2)]
        lead = []
    else:
        z = math.sqrt(h)
        ec = math.erfc(z)
        lead = [math.log(ec)] if ec > 0 else [-h - math.log(z * math.sqrt(math.pi))]
        terms = [(i + 0.5) * math.log(h) - math.lgamma(i + 1.5) for i in range((k - 1) // 2)]
    parts = lead + [t - h for t in terms]
    top = max(parts)
    return top + math.log(sum(math.exp(p - top) for p in parts))


def _nested_statistic(X_r: np.ndarray, y: np.ndarray, full: _Fit, pen_r: np.ndarray) -> tuple[float, int, np.ndarray]:
    """(statistic, df, per-row contributions) of the nested comparison restricted vs full, both weighted with the
    full model's variances (an F-test's logic: the full model's misfit estimate is not inflated by what the
    restricted model lacks): the drop in weighted residual sum of squares, on ceil(difference of effective
    parameters) degrees of freedom (rounding up is conservative: with ridge the drop is a sum of chi-squares with
    weights below 1)."""
    restricted = _Solved(X_r, y, full.v, pen_r)
    contributions = full.w * (restricted.r ** 2 - full.r ** 2)
    df = max(1, math.ceil(float(full.h.sum()) - float(restricted.h.sum()) - 1e-6))
    return max(float(contributions.sum()), 0.0), df, contributions


def _nested_test(X_r: np.ndarray, X_f: np.ndarray, y: np.ndarray, se2: np.ndarray, pen_r: np.ndarray,
                 pen_f: np.ndarray, tau2: float) -> tuple[float, float, int, _Fit]:
    """(log p, statistic, df, full fit) of adding the columns of X_f beyond X_r; the log p is the larger of the
    test on all rows and on all rows but the one that contributes most, so that evidence resting on a single row
    (indistinguishable from an outlier) does not count."""
    full = _fit(X_f, y, se2, pen_f, tau2)
    stat, df, contrib = _nested_statistic(X_r, y, full, pen_r)
    log_p = _log_chi2_sf(stat, df)
    if len(y) > MIN_ROWS + 1:
        keep = np.arange(len(y)) != int(np.argmax(contrib))
        sub = _fit(X_f[keep], y[keep], se2[keep], pen_f, full.tau2)
        stat2, df2, _ = _nested_statistic(X_r[keep], y[keep], sub, pen_r)
        log_p = max(log_p, _log_chi2_sf(stat2, df2))
    return log_p, stat, df, full


def _onehot(levels: np.ndarray) -> np.ndarray:
    values, inv = np.unique(levels, return_inverse=True)
    out = np.zeros((len(levels), len(values)))
    out[np.arange(len(levels)), inv] = 1.0
    return out


def _screen(design: _Design, fit: _Fit, X: np.ndarray, L: np.ndarray,
            candidates: Sequence[tuple[int, int]]) -> list[tuple[float, float, int, tuple[int, int]]]:
    """(log p, statistic, df, pair) of every candidate pair's score test against the current fit, best first.

    For a pair, Z are its cell indicators made W-orthogonal to its two main effects (Zi = Z - B G), the score is
    g = Zi' W r and Var(g) = Zi' M Zi with M = W R V R' W = F F' (F = W R V^1/2, R the residual maker). F'Zi is
    F'Z - (F'B) G, and F'Z sums F's rows cell by cell: n^2 additions per pair, not n^2 x cells products."""
    n = len(fit.r)
    W = fit.w
    R = fit.solved.resid_maker()  # r = R y
    Ft = (np.sqrt(fit.v)[:, None] * R.T) * W  # F' = V^1/2 R' W  (n x n)
    Wr = W * fit.r
    t = design.table
    onehot: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # d -> (one-hot of observed levels, F' one-hot)
    out = []
    for a, b in candidates:
        for d in (a, b):
            if d not in onehot:
                A = _onehot(L[:, d])
                onehot[d] = (A, Ft @ A)
        cells = L[:, a] * t.n_levels(b) + L[:, b]
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_cells[1:] != sorted_cells[:-1]]))
        if len(starts) < 2:
            continue
        inv = np.cumsum(np.concatenate([[False], sorted_cells[1:] != sorted_cells[:-1]]))
        cell_of = np.empty(n, dtype=np.int64)
        cell_of[order] = inv
        c = len(starts)
        FtZ = np.add.reduceat(Ft[:, order], starts, axis=1)  # n x c
        B = np.hstack([onehot[a][0], onehot[b][0]])
        FtB = np.hstack([onehot[a][1], onehot[b][1]])
        BW = B.T * W
        ZtWB = np.zeros((c, B.shape[1]))
        np.add.at(ZtWB, cell_of, (B * W[:, None]))
        G = np.linalg.pinv(BW @ B) @ ZtWB.T  # (B'WB)^+ B'WZ
        g = np.bincount(cell_of, weights=Wr, minlength=c) - G.T @ (B.T @ Wr)
        FtZi = FtZ - FtB @ G
        S = FtZi.T @ FtZi
        vals, vecs = np.linalg.eigh(S)
        keep = vals > 1e-9 * max(float(vals.max()), 1e-300)
        df = int(keep.sum())
        if df == 0:
            continue
        proj = vecs[:, keep].T @ g
        stat = float(np.sum(proj * proj / vals[keep]))
        out.append((_log_chi2_sf(stat, df), stat, df, (a, b)))
    out.sort(key=lambda x: (x[0], -x[1]))
    return out


# ---- the surrogate ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surrogate:
    """A fitted surrogate (see the module docstring); build with `fit_surrogate`."""

    table: ChoiceTable
    interactions: tuple[tuple[str, str], ...]
    quality: FitQuality
    scale: float  # internal unit, in KLD
    prior_levels: tuple[tuple[float, ...], ...] | None = field(repr=False)
    theta: tuple[float, ...] = field(repr=False)
    cov: np.ndarray = field(repr=False, compare=False)
    tau2: float = 0.0

    def _design(self) -> _Design:
        idx = {p: i for i, p in enumerate(self.table.params)}
        return _Design(self.table, self.prior_levels, [(idx[a], idx[b]) for a, b in self.interactions])

    def _mean_se(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = self._design().rows(L)
        theta = np.asarray(self.theta)
        mean = X @ theta
        var = np.sum((X @ self.cov) * X, axis=1)
        floor = 0.1  # internal units are KLD / median KLD of the rows
        var = var + self.tau2 * np.maximum(np.abs(mean), floor) ** 2
        return mean * self.scale, np.sqrt(np.maximum(var, 0.0)) * self.scale

    def predict(self, points: Sequence[Mapping[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(mean KLD, standard error) of each (possibly partial) point: parameter uncertainty plus model misfit."""
        return self.predict_levels([self.table.levels_of_point(p) for p in points])

    def predict_levels(self, levels: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        L = np.array([self.table.check_levels(lv) for lv in levels], dtype=np.int64).reshape(-1, self.table.n_params)
        return self._mean_se(L)

    def _level_costs(self) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """(constant, per-param level costs, per-pair cell tables) in KLD: the mean is their sum."""
        d = self._design()
        th = np.asarray(self.theta) * self.scale
        t = self.table
        costs = []
        for i in range(t.n_params):
            c = th[d.level_offset[i]: d.level_offset[i] + t.n_levels(i)] * d.level_scale[i]
            if d.prior is not None:
                c += th[d.prior_col] * d.prior[i] / d.prior_norm
                if t.families[i] in d.family_cols:
                    col, r = d.family_cols[t.families[i]]
                    c += th[col] * d.prior[i] / r
                if i in d.dim_cols:
                    col, r = d.dim_cols[i]
                    c += th[col] * d.prior[i] / r
            costs.append(c)
        tables = []
        for (a, b), off in zip(d.pairs, d.pair_offset):
            tables.append(th[off: off + t.n_levels(a) * t.n_levels(b)].reshape(t.n_levels(a), t.n_levels(b)))
        return float(th[0]), costs, tables

    def effects(self) -> dict[str, dict[str, float]]:
        """{param: {candidate type: predicted KLD change from the base map's choice}} (main effects only)."""
        _, costs, _ = self._level_costs()
        t = self.table
        return {p: {ty: float(costs[i][k] - costs[i][t.base_level[i]]) for k, ty in enumerate(t.types[i])}
                for i, p in enumerate(t.params)}

    def problem(self) -> Problem:
        """The solver problem 'least predicted mean KLD' over the candidates (sizes exact)."""
        from .solver import Interaction, Problem

        const, costs, tables = self._level_costs()
        t = self.table
        inter = tuple(
            Interaction(a, b, tuple(tuple(float(v) for v in row[: len(t.types[t.index(b)])])
                                    for row in tab[: len(t.types[t.index(a)])]))
            for (a, b), tab in zip(self.interactions, tables)
        )
        return Problem(params=t.params, types=t.types,
                       costs=tuple(tuple(float(v) for v in c[: len(ts)]) for c, ts in zip(costs, t.types)),
                       sizes=tuple(b[: len(ts)] for b, ts in zip(t.level_bytes, t.types)),
                       fixed_bytes=t.fixed_bytes, n_elements=t.n_elements, constant=const, interactions=inter)

    def departures(self, min_z: float = 3.0) -> tuple[PairDeparture, ...]:
        """Cells of the selected pairs whose joint effect departs from additivity by more than `min_z` standard
        errors (the departure's posterior standard error), largest |z| first."""
        d = self._design()
        t = self.table
        th = np.asarray(self.theta)
        out = []
        for (a, b), off in zip(d.pairs, d.pair_offset):
            kb = t.n_levels(b)
            ba, bb = t.base_level[a], t.base_level[b]
            for i in range(t.n_levels(a)):
                for j in range(kb):
                    if i == ba or j == bb:
                        continue
                    c = np.zeros(d.n_cols)
                    c[off + i * kb + j] += 1
                    c[off + i * kb + bb] -= 1
                    c[off + ba * kb + j] -= 1
                    c[off + ba * kb + bb] += 1
                    dep = float(c @ th) * self.scale
                    se = math.sqrt(max(float(c @ self.cov @ c), 0.0)) * self.scale
                    if se == 0 or abs(dep) > min_z * se:
                        out.append(PairDeparture(t.params[a], t.params[b], t.level_name(a, i), t.level_name(b, j),
                                                 dep, se))
        return tuple(sorted(out, key=lambda x: -abs(x.z)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # ties: average rank
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_surrogate(table: ChoiceTable, observations: Sequence[Observation], prior: Prior | None = None, *,
                  interactions: bool = True, max_interactions: int = DEFAULT_MAX_INTERACTIONS,
                  candidate_pairs: Iterable[tuple[str, str]] | None = None,
                  min_se_fraction: float = 1e-3) -> Surrogate:
    """Fit the surrogate on measured observations (see the module docstring).

    `prior`: the space's `Prior` (its table must be `table`); None fits ridge main effects without it.
    `interactions`: select pairwise interactions (forward selection, at most `max_interactions`), among
    `candidate_pairs` (param names) or every pair of dimensions that both vary in the rows.
    `min_se_fraction`: a row's standard error is at least this fraction of its value (a missing or zero standard
    error would otherwise weigh infinitely).
    """
    if prior is not None and prior.table != table:
        raise SurrogateError("the prior was computed for another choice table (space, model or base map)")
    data = _fit_data(table, observations, prior, min_se_fraction)
    design = _Design(table, data.prior_levels, [])
    fit, lams = _tune(design, data.L, data.y, data.se2)
    model = _Model(design, fit, lams)
    if interactions and max_interactions > 0:
        model = _select_interactions(data, model, _candidate_pairs(data, candidate_pairs), max_interactions)
    names = table.params
    return Surrogate(table=table, interactions=tuple((names[a], names[b]) for a, b in model.design.pairs),
                     quality=_fit_quality(data, model), scale=data.scale, prior_levels=data.prior_levels,
                     theta=tuple(float(v) for v in model.fit.theta), cov=model.fit.cov, tau2=model.fit.tau2)


@dataclass(frozen=True)
class _FitData:
    """The observations as the fit takes them: levels, values in internal units (divided by `scale`, the median
    |value|) and variances with the standard-error floor applied."""

    table: ChoiceTable
    L: np.ndarray  # (rows, params) levels
    y_raw: np.ndarray  # measured values
    y: np.ndarray  # y_raw / scale
    se2: np.ndarray  # squared standard errors, internal units
    scale: float
    prior_levels: tuple[tuple[float, ...], ...] | None


def _fit_data(table: ChoiceTable, observations: Sequence[Observation], prior: Prior | None,
              min_se_fraction: float) -> _FitData:
    obs = list(observations)
    if len(obs) < MIN_ROWS:
        raise SurrogateError(f"a surrogate needs at least {MIN_ROWS} measured rows, got {len(obs)}")
    L = np.array([table.check_levels(o.levels) for o in obs], dtype=np.int64)
    y_raw = np.array([o.value for o in obs], dtype=np.float64)
    if not np.all(np.isfinite(y_raw)):
        raise SurrogateError("a row's measured value is not finite")
    scale = float(np.median(np.abs(y_raw))) or float(np.mean(np.abs(y_raw))) or 1.0
    y = y_raw / scale
    se = np.array([o.se if o.se is not None and math.isfinite(o.se) else 0.0 for o in obs]) / scale
    se = np.maximum(se, np.maximum(min_se_fraction * np.abs(y), 1e-9))
    prior_levels = None if prior is None else tuple(tuple(e) for e in prior.level_errors)
    return _FitData(table, L, y_raw, y, se * se, scale, prior_levels)


@dataclass(frozen=True)
class _Screened:
    """A pair's test at one selection step: "nested" (refitted, the p-value that decides) or "score" (ranking)."""

    log_p: float  # natural log
    statistic: float
    df: int
    pair: tuple[int, int]
    test: str


@dataclass(frozen=True)
class _Model:
    """A fitted design: its pairs, the fit, the ridge strengths, and the last selection step's tests."""

    design: _Design
    fit: _Fit
    lams: tuple[float, float, float]
    screened: tuple[_Screened, ...] = ()
    threshold: float = 0.0  # the p-value a pair had to beat at the last step (Bonferroni over the pairs ranked)


def _candidate_pairs(data: _FitData, candidate_pairs: Iterable[tuple[str, str]] | None) -> list[tuple[int, int]]:
    """Pairs of dimensions that both vary in the rows (of `candidate_pairs` when given), as param indices."""
    table, L = data.table, data.L
    varying = [i for i in range(table.n_params) if len(np.unique(L[:, i])) > 1]
    if candidate_pairs is None:
        return [(a, b) for ai, a in enumerate(varying) for b in varying[ai + 1:]]
    cands = sorted({tuple(sorted((table.index(a), table.index(b)))) for a, b in candidate_pairs if a != b})
    return [c for c in cands if c[0] in varying and c[1] in varying]


def _select_interactions(data: _FitData, model: _Model, cands: list[tuple[int, int]],
                         max_interactions: int) -> _Model:
    """Forward selection (module docstring): each step adds the best pair if its nested test beats the Bonferroni
    threshold and the refit lowers the leave-one-out predictive loss; the ridge strengths are tuned again at the
    end."""
    screened: tuple[_Screened, ...] = ()
    threshold = 0.0
    while cands and len(model.design.pairs) < max_interactions:
        ranked, refitted = _selection_step(data, model, cands)
        threshold = THREE_SIGMA_P / len(cands)
        screened = tuple(_Screened(c.log_p, c.statistic, c.df, c.pair, "nested") for c in refitted) + tuple(
            _Screened(lp, stat, df, pair, "score") for lp, stat, df, pair in ranked[_NESTED_TESTS:])
        if not refitted or refitted[0].log_p >= math.log(threshold) or refitted[0].model.fit.nlpd >= model.fit.nlpd:
            break
        model = refitted[0].model
        cands = [c for c in cands if c != refitted[0].pair]
    if model.design.pairs:
        fit, lams = _tune(model.design, data.L, data.y, data.se2)
        model = _Model(model.design, fit, lams)
    return replace(model, screened=screened, threshold=threshold)


@dataclass(frozen=True)
class _Refit:
    """A pair added to the model at one selection step: its nested test and the larger model."""

    log_p: float
    statistic: float
    df: int
    pair: tuple[int, int]
    model: _Model


def _selection_step(data: _FitData, model: _Model, cands: Sequence[tuple[int, int]]
                    ) -> tuple[list[tuple[float, float, int, tuple[int, int]]], list[_Refit]]:
    """(every candidate ranked by its score test, the best `_NESTED_TESTS` refitted and tested as nested models,
    best first)."""
    design, fit, lams = model.design, model.fit, model.lams
    X = design.rows(data.L)
    ranked = _screen(design, fit, X, data.L, cands)
    refitted = []
    for _, _, _, pair in ranked[:_NESTED_TESTS]:
        larger = _Design(data.table, data.prior_levels, design.pairs + [pair])
        log_p, stat, df, new = _nested_test(X, larger.rows(data.L), data.y, data.se2, design.penalty(lams),
                                            larger.penalty(lams), fit.tau2)
        refitted.append(_Refit(log_p, stat, df, pair, _Model(larger, new, lams)))
    refitted.sort(key=lambda r: (r.log_p, -r.statistic))
    return ranked, refitted


def _fit_quality(data: _FitData, model: _Model) -> FitQuality:
    """In-sample R^2, exact leave-one-out errors, the prior coefficient and the ridge strengths (in rows)."""
    design, fit, lams = model.design, model.fit, model.lams
    y, scale = data.y, data.scale
    pred = design.rows(data.L) @ fit.theta
    h = np.clip(fit.h, 0.0, 1.0 - 1e-9)
    e_loo = fit.r / (1.0 - h)
    loo_pred = (y - e_loo) * scale
    w = fit.w
    ybar = float(np.sum(w * y) / np.sum(w))
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan
    g, g_se = _prior_coefficient(design, fit, scale)
    names = data.table.params
    unit = float(np.median(1.0 / data.se2))
    return FitQuality(
        n_rows=len(y), r2=r2, loo_rmse=float(np.sqrt(np.mean((e_loo * scale) ** 2))),
        loo_rel_rmse=float(np.sqrt(np.mean((e_loo / np.where(y != 0, y, 1.0)) ** 2))),
        loo_spearman=spearman(loo_pred, data.y_raw), effective_params=float(fit.h.sum()),
        misfit=math.sqrt(fit.tau2), lambda_levels=lams[0] / unit, lambda_families=lams[1] / unit,
        lambda_dims=lams[2] / unit, prior_coefficient=g,
        prior_coefficient_se=g_se,
        screened=tuple(PairTest(names[t.pair[0]], names[t.pair[1]], t.statistic, t.df, t.log_p / math.log(10),
                                t.test) for t in model.screened[:10]),
        bonferroni_p=model.threshold,
    )


def _prior_coefficient(design: _Design, fit: _Fit, scale: float) -> tuple[float | None, float | None]:
    """(g, its standard error): KLD per unit of summed relative error; (None, None) without a prior."""
    if design.prior_col is None:
        return None, None
    c = design.prior_col
    g = float(fit.theta[c]) * scale / design.prior_norm
    return g, math.sqrt(max(float(fit.cov[c, c]), 0.0)) * scale / design.prior_norm


__all__ = ["FIT_METRICS", "FitQuality", "MIN_ROWS", "Observation", "PairDeparture", "PairTest", "Surrogate",
           "SurrogateError", "fit_surrogate", "observation", "observations_from_rows", "spearman"]

__getattr__ = former_names(__name__, {"METRICS": "cerebellum_ray.predict.surrogate:FIT_METRICS"})
