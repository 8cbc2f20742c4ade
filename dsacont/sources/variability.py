"""Variability of light curves: the standard metrics, a ranked candidate list, and an ESE-like dip detector.

For one source with fluxes ``f_i`` and errors ``s_i`` (i = 1..N, forced photometry, so
non-detections count with their measured flux), weights ``w_i = 1 / s_i^2`` and weighted mean
``F = sum w f / sum w``:

- ``eta = 1/(N-1) sum w_i (f_i - F)^2`` (the reduced chi-square of a constant; ~1 for a steady
  source with honest errors), and ``p_const``, the chance of a chi-square that large from a
  steady source (N-1 degrees of freedom);
- ``V = std(f) / mean(f)`` (the modulation index, sample std);
- ``max_dev_sigma``: the largest ``|f_i - F| / s_i``, signed (positive for a brightening), and its time.

A source is a ``candidate`` when ``p_const <= p_max`` (default 1e-4) and ``V >= v_min``
(default 0.05, a guard against bright steady sources whose errors miss a few per cent of flux-scale
scatter; ``frac_sys`` adds such a fraction of the flux to every error in quadrature instead).

One measurement per transit (``per_pass='best'``, the default): the drift scan sees a source once
a sidereal day, in every tile whose beam it crosses (three or four at this declination), each
reading it at a different place in the primary beam, with that place's beam-model, deconvolution
and sidelobe errors. Those errors repeat day after day in the same tile position, but they differ
between the tiles of one day, so a steady source's tiles disagree with each other by more than
their noise. Each pass (measurements closer than ``PASS_GAP_DAYS`` in time) keeps its
measurement with the smallest error, the one nearest the source's transit through the beam, and
its light curve compares like with like (``benchmarks/multiday.py`` measures both: 18 of 167
steady sources were candidates with every tile, 1 with one tile per pass). ``per_pass='all'``
keeps every measurement.

ESE-like dips (extreme scattering events: a dip over days to weeks with a symmetric profile) are
searched by fitting ``f(t) = a - b g(t)``, ``g = exp(-(t - t0)^2 / 2 w^2)`` on a grid of centres
``t0`` (the measurement span, half the median cadence apart) and widths ``w``
(``dip_width_days``, geometric): for each, ``a`` and ``b`` by weighted least squares. The best
(largest chi-square drop) with ``b > 0`` is a ``dip`` when its significance ``b / sigma_b`` is at
least ``dip_nsigma``, its depth ``b / a`` is at most 1, at least two measurements lie on each side
of ``t0`` within 3 w, its profile is symmetric (the best two-sided fit, centre and widths
``w_left``, ``w_right`` on the same grids, has ``max(w_left, w_right) / min(...) <= dip_max_asymmetry``), and it fits better
than both brightenings on the same grids: a Gaussian bump (``b < 0``) and a flare, a fast rise at
``t0`` and an exponential decay of time constant ``w`` (a flare's pre-flare level otherwise reads
as a dip below its decaying tail).
"""
from __future__ import annotations

import numpy as np

DEFAULT_P_MAX = 1e-4
DEFAULT_V_MIN = 0.05
DEFAULT_DIP_NSIGMA = 5.0
DEFAULT_DIP_WIDTH_DAYS = (0.7, 30.0)
DEFAULT_DIP_MAX_ASYMMETRY = 2.5
#: measurements of a source closer than this in time (days) belong to one pass through the beam
PASS_GAP_DAYS = 0.5
PER_PASS = ("best", "all")


def metrics(flux, err) -> dict:
    """eta, V, max deviation (sigma) and p_const of one light curve (arrays of the same length, Jy)."""
    from scipy.stats import chi2

    f, s = np.asarray(flux, float), np.asarray(err, float)
    ok = np.isfinite(f) & np.isfinite(s) & (s > 0)
    f, s = f[ok], s[ok]
    n = len(f)
    if n < 2:
        return {"n": n, "mean_flux_jy": float(f.mean()) if n else float("nan"), "eta": float("nan"),
                "V": float("nan"), "max_dev_sigma": float("nan"), "i_max_dev": -1, "p_const": float("nan")}
    w = 1.0 / s**2
    fw = float(np.sum(w * f) / np.sum(w))
    chi = float(np.sum(w * (f - fw) ** 2))
    eta = chi / (n - 1)
    mean = float(f.mean())
    v = float(f.std(ddof=1) / mean) if mean > 0 else float("inf")
    dev = (f - fw) / s
    i = int(np.argmax(np.abs(dev)))
    return {"n": n, "mean_flux_jy": fw, "eta": eta, "V": v, "max_dev_sigma": float(dev[i]),
            "i_max_dev": int(np.flatnonzero(ok)[i]), "p_const": float(chi2.sf(chi, n - 1))}


def _wls(y, w, g):
    """Weighted least squares of ``y = a - b g`` for every model ``g`` (shape (..., N)).

    Returns ``(a, b, sigma_b, chi2)``, arrays of shape ``g.shape[:-1]`` (chi2 inf where singular).
    """
    sw, sy = w.sum(), (w * y).sum()
    sg, sgg, syg = (w * g).sum(-1), (w * g * g).sum(-1), (w * y * g).sum(-1)
    det = sw * sgg - sg * sg
    good = det > 1e-12 * sw * np.maximum(sgg, 1e-300)
    det = np.where(good, det, 1.0)
    a = (sy * sgg - syg * sg) / det
    b = -(sw * syg - sg * sy) / det
    sigma_b = np.sqrt(sw / det)
    chi = (w * (y - a[..., None] + b[..., None] * g) ** 2).sum(-1)
    return a, b, sigma_b, np.where(good, chi, np.inf)


def find_dip(mjd, flux, err, *, width_days=DEFAULT_DIP_WIDTH_DAYS, nsigma: float = DEFAULT_DIP_NSIGMA,
             max_asymmetry: float = DEFAULT_DIP_MAX_ASYMMETRY) -> dict:
    """Search one light curve for an ESE-like (symmetric, Gaussian-shaped) dip.

    Parameters
    ----------
    mjd, flux, err : arrays, shape (N,)
        Times (MJD), fluxes and errors (Jy).
    width_days : (float, float)
        Range of the dip's Gaussian sigma ``w``, days (also limited to the span of the data).
    nsigma : float
        Least significance ``b / sigma_b`` of a dip.
    max_asymmetry : float
        Largest ratio of the two-sided fit's widths.

    Returns
    -------
    dict
        ``dip`` (bool), ``t0_mjd``, ``width_days``, ``depth`` (b/a), ``sigma`` (b/sigma_b),
        ``asymmetry`` (w_left/w_right), ``delta_chi2`` (constant minus dip model).
    """
    t, f, s = (np.asarray(a, float) for a in (mjd, flux, err))
    ok = np.isfinite(t) & np.isfinite(f) & np.isfinite(s) & (s > 0)
    t, f, s = t[ok], f[ok], s[ok]
    none = {"dip": False, "t0_mjd": float("nan"), "width_days": float("nan"), "depth": float("nan"),
            "sigma": float("nan"), "asymmetry": float("nan"), "delta_chi2": 0.0}
    if len(t) < 5:
        return none
    w = 1.0 / s**2
    chi0 = float((w * (f - (w * f).sum() / w.sum()) ** 2).sum())
    span = t.max() - t.min()
    cadence = float(np.median(np.diff(np.sort(t)))) if len(t) > 1 else 1.0
    wmin, wmax = max(width_days[0], 0.5 * cadence), min(width_days[1], span / 2.0)
    if wmax <= wmin:
        return none
    widths = np.geomspace(wmin, wmax, 12)
    centres = np.arange(t.min(), t.max() + 1e-9, max(cadence / 2.0, 1e-3))
    g = np.exp(-0.5 * ((t[None, None, :] - centres[:, None, None]) / widths[None, :, None]) ** 2)
    a_, b_, sb_, chi_all = _wls(f, w, g)
    chi_ = np.where(b_ > 0, chi_all, np.inf)
    # the brightening alternatives a dip must beat: a Gaussian bump, and a flare (fast rise, exponential decay)
    chi_bump = float(np.min(np.where(b_ < 0, chi_all, np.inf)))
    dt = t[None, None, :] - centres[:, None, None]
    fred = np.where(dt >= 0, np.exp(-np.clip(dt, 0, None) / widths[None, :, None]), 0.0)
    _, bf, _, chi_f = _wls(f, w, fred)
    chi_flare = float(np.min(np.where(bf < 0, chi_f, np.inf)))
    k = np.unravel_index(int(np.argmin(chi_)), chi_.shape)
    if not np.isfinite(chi_[k]):
        return none
    c, wd, a, b, chi, sb = centres[k[0]], widths[k[1]], a_[k], b_[k], chi_[k], sb_[k]
    near = np.abs(t - c) <= 3 * wd
    sides_ok = (near & (t < c)).sum() >= 2 and (near & (t > c)).sum() >= 2
    # symmetry: the best two-sided fit (centre, left width, right width)
    d2 = t[None, None, None, :] - centres[:, None, None, None]
    wl, wr = widths[None, :, None, None], widths[None, None, :, None]
    g2 = np.exp(-0.5 * (d2 / np.where(d2 < 0, wl, wr)) ** 2)
    _, b2, _, chi2_ = _wls(f, w, g2)
    chi2_ = np.where(b2 > 0, chi2_, np.inf)
    k2 = np.unravel_index(int(np.argmin(chi2_)), chi2_.shape)
    asym = float(widths[k2[1]] / widths[k2[2]]) if np.isfinite(chi2_[k2]) else float("nan")
    depth = b / a if a > 0 else float("inf")
    sig = b / sb
    is_dip = bool(sig >= nsigma and 0 < depth <= 1.0 and sides_ok and np.isfinite(asym)
                  and max(asym, 1 / asym) <= max_asymmetry and chi < min(chi_bump, chi_flare))
    return {"dip": is_dip, "t0_mjd": float(c), "width_days": float(wd), "depth": float(depth), "sigma": float(sig),
            "asymmetry": float(asym), "delta_chi2": float(chi0 - chi)}


def one_per_pass(lc, *, gap_days: float = PASS_GAP_DAYS):
    """The measurement with the smallest error of each pass of each source (see the module docstring).

    Parameters
    ----------
    lc : pandas.DataFrame
        :func:`dsacont.sources.light_curves`'s table (``name``, ``mjd``, ``flux_err_jy``; rows not
        ``covered`` are dropped first). With a ``kind`` column (tiles and mosaics together), each
        kind keeps its own.
    gap_days : float
        A gap longer than this (days) between a source's successive measurements starts a new pass.

    Returns
    -------
    pandas.DataFrame
        The chosen rows, sorted by name and time, with a ``pass`` column (0, 1, ... per source).
    """
    if "covered" in lc:
        lc = lc[lc["covered"]]
    keys = ["name", "kind"] if "kind" in lc else ["name"]
    lc = lc.sort_values([*keys, "mjd"], kind="stable").copy()
    lc["pass"] = lc.groupby(keys, sort=False)["mjd"].transform(lambda t: (t.diff() > gap_days).cumsum())
    best = lc.loc[lc.groupby([*keys, "pass"], sort=False)["flux_err_jy"].idxmin()]
    return best.sort_values(["name", "mjd"], kind="stable")


def rank_variables(lc, *, p_max: float = DEFAULT_P_MAX, v_min: float = DEFAULT_V_MIN, frac_sys: float = 0.0,
                dip_nsigma: float = DEFAULT_DIP_NSIGMA, dip_width_days=DEFAULT_DIP_WIDTH_DAYS,
                dip_max_asymmetry: float = DEFAULT_DIP_MAX_ASYMMETRY, min_points: int = 3, per_pass: str = "best"):
    """Variability metrics of every source of a light-curve table, ranked.

    Parameters
    ----------
    lc : pandas.DataFrame
        :func:`dsacont.sources.light_curves`'s table (``name``, ``ra_deg``, ``dec_deg``, ``mjd``,
        ``flux_jy``, ``flux_err_jy``, ``detected``, ``covered``).
    p_max, v_min : float
        A ``candidate`` has ``p_const <= p_max`` and ``V >= v_min``.
    frac_sys : float
        Fraction of each flux added in quadrature to its error (flux-scale scatter), >= 0.
    dip_nsigma, dip_width_days, dip_max_asymmetry
        The dip search (:func:`find_dip`).
    min_points : int
        Sources with fewer covered measurements (after ``per_pass``) are left out.
    per_pass : {'best', 'all'}
        'best': one measurement per pass through the beam (:func:`one_per_pass`); 'all': every one.

    Returns
    -------
    pandas.DataFrame, one row per source, most significant first
        ``name``, ``ra_deg``, ``dec_deg``, ``n``, ``n_detected``, ``mean_flux_jy`` (weighted),
        ``eta``, ``V``, ``max_dev_sigma``, ``max_dev_mjd``, ``p_const``, ``candidate``, ``dip``,
        ``dip_t0_mjd``, ``dip_width_days``, ``dip_depth``, ``dip_sigma``, ``dip_asymmetry``,
        ``kind`` ('dip', 'brightening', 'fading', 'variable' for candidates, else '').
    """
    import pandas as pd

    if per_pass not in PER_PASS:
        raise ValueError(f"per_pass must be one of {PER_PASS}, not {per_pass!r}")
    rows = []
    if "covered" in lc:
        lc = lc[lc["covered"]]
    if per_pass == "best" and len(lc):
        lc = one_per_pass(lc)
    for name, g in lc.groupby("name", sort=False):
        g = g.sort_values("mjd")
        if len(g) < min_points:
            continue
        f = g["flux_jy"].to_numpy(float)
        e = np.hypot(g["flux_err_jy"].to_numpy(float), frac_sys * np.abs(f))
        m = metrics(f, e)
        d = find_dip(g["mjd"].to_numpy(float), f, e, width_days=dip_width_days, nsigma=dip_nsigma,
                     max_asymmetry=dip_max_asymmetry)
        cand = bool(m["p_const"] <= p_max and m["V"] >= v_min)
        kind = ""
        if d["dip"] and cand:
            kind = "dip"
        elif cand:
            kind = "brightening" if m["max_dev_sigma"] > 0 else "fading"
        rows.append({"name": name, "ra_deg": float(g["ra_deg"].iloc[0]), "dec_deg": float(g["dec_deg"].iloc[0]),
                     "n": m["n"], "n_detected": int(g["detected"].sum()) if "detected" in g else m["n"],
                     "mean_flux_jy": m["mean_flux_jy"], "eta": m["eta"], "V": m["V"],
                     "max_dev_sigma": m["max_dev_sigma"],
                     "max_dev_mjd": float(g["mjd"].iloc[m["i_max_dev"]]) if m["i_max_dev"] >= 0 else float("nan"),
                     "p_const": m["p_const"], "candidate": cand, "dip": bool(d["dip"] and cand),
                     "dip_t0_mjd": d["t0_mjd"], "dip_width_days": d["width_days"], "dip_depth": d["depth"],
                     "dip_sigma": d["sigma"], "dip_asymmetry": d["asymmetry"], "kind": kind})
    cols = ["name", "ra_deg", "dec_deg", "n", "n_detected", "mean_flux_jy", "eta", "V", "max_dev_sigma", "max_dev_mjd",
            "p_const", "candidate", "dip", "dip_t0_mjd", "dip_width_days", "dip_depth", "dip_sigma", "dip_asymmetry",
            "kind"]
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    out = out.sort_values(["candidate", "eta"], ascending=[False, False], kind="stable")
    return out.reset_index(drop=True)
