"""Light curves: forced photometry of sources over a series of images, as a pandas DataFrame.

The images are either a list of FITS files or the tiles/mosaics recorded in a products database
(:func:`products_images` opens ``products.sqlite3`` READ-ONLY, by the path it is given: the
service stays its only writer). From a products database, the forced photometry the pipeline
stored (table ``photometry``: every tile and mosaic measured at the reference positions inside it,
:func:`dsacont.sources.photometry.reference_photometry`) is read instead of the images wherever it
covers the source (:func:`stored_photometry`): a source within ``db_match_arcsec`` of a stored
position takes its stored rows on every image measured, and only the images never measured are
opened; a position the pipeline never measured is measured on the images, as before. A light
curve over a long run is then one indexed query. Sources are given by name (a VLA calibrator, e.g. ``0834+555``;
a source of the shipped NVSS subset, e.g. ``J083454.8+553420``), by position (``"RA,DEC"`` in
degrees, or sexagesimal ``"08:34:54.9,+55:34:21"``), or as ``SkySource``s.

Notebook use::

    >>> from dsacont.sources import light_curve
    >>> lc = light_curve("0834+555", products="/data/dsa110-contimg/state/products.sqlite3")
    >>> lc[["mjd", "flux_jy", "flux_err_jy", "detected"]]
"""
from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError
from dsacont.sources.photometry import DEFAULT_DETECT_NSIGMA, DEFAULT_UL_NSIGMA, forced_photometry

KINDS = ("images", "mosaics", "all")
#: a requested position takes the stored photometry of a reference source within this distance
DB_MATCH_ARCSEC = 10.0
_DB_KINDS = {"images": ("tile",), "mosaics": ("mosaic",), "all": ("tile", "mosaic")}
_DF_KIND = {"tile": "image", "mosaic": "mosaic"}
_COLUMNS = ["name", "ra_deg", "dec_deg", "image", "mjd", "flux_jy", "flux_err_jy", "snr", "detected",
            "upper_limit_jy", "x", "y", "covered", "local_rms_jy", "kind"]


def resolve_source(spec):
    """A source to follow: ``(name, ra_deg, dec_deg)``.

    Parameters
    ----------
    spec : str, (float, float), (str, float, float) or SkySource
        ``"RA,DEC"`` (degrees or sexagesimal hours/degrees), a VLA calibrator name, a name in the
        shipped NVSS subset, a (ra, dec) pair in degrees, a (name, ra, dec) triple, or an object
        with ``name``, ``ra_deg``, ``dec_deg``.

    Raises
    ------
    ValueError
        The name is in neither catalogue and is not a position.
    """
    if hasattr(spec, "ra_deg"):
        return str(spec.name), float(spec.ra_deg), float(spec.dec_deg)
    if isinstance(spec, (tuple, list)) and len(spec) == 3:
        return str(spec[0]), float(spec[1]), float(spec[2])
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return f"{float(spec[0]):.5f},{float(spec[1]):+.5f}", float(spec[0]), float(spec[1])
    text = str(spec).strip()
    if "," in text:
        a, b = (s.strip() for s in text.split(",", 1))
        try:
            return text, float(a) % 360.0, float(b)
        except ValueError:
            from astropy.coordinates import SkyCoord

            c = SkyCoord(a, b, unit=("hourangle", "deg"))
            return text, float(c.ra.deg), float(c.dec.deg)
    from dsacont.calibrators import get_calibrator

    try:
        cal = get_calibrator(text)
        return cal.name, cal.ra_deg, cal.dec_deg
    except (KeyError, ValueError, LookupError):
        pass
    from dsacont.calibration.skymodel import nvss_catalogue

    key = text.upper().removeprefix("NVSS").strip()
    for s in nvss_catalogue():
        if s.name.upper() == key or s.name.upper() == "J" + key.lstrip("J"):
            return s.name, s.ra_deg, s.dec_deg
    raise ValueError(f"unknown source {text!r}: not 'RA,DEC', a VLA calibrator or a name in the shipped NVSS subset")


def _checked(db_path, kind: str) -> str:
    """The products database's absolute path, after checking ``kind`` and that the file exists."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    db_path = os.path.abspath(os.fspath(db_path))
    if not os.path.exists(db_path):
        raise BadInputError(db_path, "products database does not exist")
    return db_path


def _connect_ro(db_path: str) -> sqlite3.Connection:
    """A read-only connection to a (WAL) SQLite file.

    SQLite's ``mode=ro`` still needs the ``-shm`` file beside the database (it creates it, and the
    ``-wal``, when the directory is writable; they are SQLite's usual companions and the service
    makes them too). In a directory we cannot write, the file is opened ``immutable`` instead
    (no locks: a snapshot that may miss commits not yet checkpointed).
    """
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.OperationalError:
        import logging

        logging.getLogger(__name__).warning("%s: cannot open read-only with locks (read-only directory?); "
                                            "reading it as an immutable snapshot", db_path)
        return sqlite3.connect(f"file:{db_path}?immutable=1", uri=True)


def products_images(db_path, *, kind: str = "images", start=None, end=None) -> list[dict]:
    """The images and/or mosaics recorded in a products database, oldest first (read-only).

    Parameters
    ----------
    db_path : str or path-like
        ``products.sqlite3`` (opened read-only; never written).
    kind : {'images', 'mosaics', 'all'}
        Tiles (their PB-corrected FITS), mosaics, or both.
    start, end : ISO string, datetime, astropy Time or MJD float, optional
        Keep products whose mid-time is within [start, end].

    Returns
    -------
    list of dict
        ``{"path", "mjd", "kind"}`` for each recorded product whose file exists.
    """
    from dsacont.db import to_mjd

    db_path = _checked(db_path, kind)
    lo, hi = to_mjd(start), to_mjd(end)
    out = []
    con = _connect_ro(db_path)
    try:
        for table in (("images", "mosaics") if kind == "all" else (kind,)):
            try:
                rows = con.execute(f"SELECT path, mid_mjd FROM {table} ORDER BY mid_mjd").fetchall()
            except sqlite3.DatabaseError as exc:
                raise BadInputError(db_path, f"not a dsacont products database ({exc})") from exc
            for path, mjd in rows:
                if mjd is not None and ((lo is not None and mjd < lo) or (hi is not None and mjd > hi)):
                    continue
                if os.path.exists(path):
                    out.append({"path": path, "mjd": mjd, "kind": table[:-1]})
    finally:
        con.close()
    return sorted(out, key=lambda r: (r["mjd"] is None, r["mjd"] or 0.0))


def stored_photometry(db_path, sources, *, kind: str = "images", start=None, end=None,
                      match_arcsec: float = DB_MATCH_ARCSEC):
    """The forced photometry stored in a products database for the given sources (read-only).

    Parameters
    ----------
    db_path : str or path-like
        ``products.sqlite3`` (opened read-only; never written).
    sources : sequence
        Source specifications (:func:`resolve_source`).
    kind : {'images', 'mosaics', 'all'}
        Tiles, mosaics or both.
    start, end : optional
        Keep images whose mid-time is within [start, end] (ISO, datetime, Time or MJD).
    match_arcsec : float
        A source takes the stored rows of the nearest stored position within this distance, per image.

    Returns
    -------
    (dict, pandas.DataFrame)
        The images measured (``{path: {"mjd", "kind"}}``, ``kind`` 'image' or 'mosaic'; empty when
        the database has no photometry), and the stored rows of the sources, named and placed as
        requested, with :func:`dsacont.sources.forced_photometry`'s columns and ``kind``
        (``detected`` and ``upper_limit_jy`` as stored).
    """
    import pandas as pd

    from dsacont.db import to_mjd

    db_path = _checked(db_path, kind)
    lo, hi = to_mjd(start), to_mjd(end)
    kinds = _DB_KINDS[kind]
    when, targs = "", []
    if lo is not None:
        when += " AND (mjd IS NULL OR mjd >= ?)"
        targs.append(lo)
    if hi is not None:
        when += " AND (mjd IS NULL OR mjd <= ?)"
        targs.append(hi)
    qk = ", ".join("?" * len(kinds))
    measured, frames = {}, []
    con = _connect_ro(db_path)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'photometry_images'").fetchone() \
                is None:
            return {}, pd.DataFrame(columns=_COLUMNS)
        for path, mjd, k in con.execute(f"SELECT image_path, mjd, kind FROM photometry_images WHERE kind IN ({qk})"
                                        + when, list(kinds) + targs):
            measured[path] = {"mjd": mjd, "kind": _DF_KIND[k]}
        if not measured:
            return {}, pd.DataFrame(columns=_COLUMNS)
        rad = match_arcsec / 3600.0
        for spec in sources:
            name, ra, dec = resolve_source(spec)
            rows = con.execute(
                "SELECT image_path, kind, ra_deg, dec_deg, mjd, flux_jy, flux_err_jy, local_rms_jy, detected, "
                f"upper_limit_jy, x, y FROM photometry WHERE dec_deg BETWEEN ? AND ? AND kind IN ({qk})" + when,
                [dec - rad, dec + rad] + list(kinds) + targs).fetchall()
            if not rows:
                continue
            df = pd.DataFrame(rows, columns=["image", "kind", "sra", "sdec", "mjd", "flux_jy", "flux_err_jy",
                                             "local_rms_jy", "detected", "upper_limit_jy", "x", "y"])
            d1, d2 = np.radians(dec), np.radians(df["sdec"].to_numpy(float))
            dra = np.radians(df["sra"].to_numpy(float) - ra)
            sep = np.degrees(2 * np.arcsin(np.sqrt(np.sin((d2 - d1) / 2) ** 2
                                                   + np.cos(d1) * np.cos(d2) * np.sin(dra / 2) ** 2)))
            df = df[sep <= rad].assign(sep=sep[sep <= rad])
            if df.empty:
                continue
            df = df.sort_values("sep", kind="stable").drop_duplicates("image")
            df = df.assign(name=name, ra_deg=ra, dec_deg=dec, covered=True, detected=df["detected"].astype(bool),
                           kind=df["kind"].map(_DF_KIND),
                           upper_limit_jy=pd.to_numeric(df["upper_limit_jy"], errors="coerce"),
                           local_rms_jy=pd.to_numeric(df["local_rms_jy"], errors="coerce"))
            with np.errstate(divide="ignore", invalid="ignore"):
                df["snr"] = df["flux_jy"] / df["flux_err_jy"]
            frames.append(df[_COLUMNS])
    finally:
        con.close()
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_COLUMNS)
    return measured, out


def _image_list(images, products, kind, start, end):
    if (images is None) == (products is None):
        raise ValueError("give either images (FITS paths) or products (a products database path)")
    if products is not None:
        return products_images(products, kind=kind, start=start, end=end)
    return [{"path": os.fspath(p), "mjd": None, "kind": "image"} for p in images]


def light_curves(sources, images=None, *, products=None, kind: str = "images", start=None, end=None, noise=None,
                 detect_nsigma: float = DEFAULT_DETECT_NSIGMA, ul_nsigma: float = DEFAULT_UL_NSIGMA,
                 covered_only: bool = True, use_stored: bool = True, db_match_arcsec: float = DB_MATCH_ARCSEC):
    """Forced photometry of several sources on every image: one long DataFrame.

    Parameters
    ----------
    sources : sequence
        Source specifications (:func:`resolve_source`), e.g. SkySources from a reference catalogue.
    images : sequence of paths, optional
        FITS images (tiles' ``.pbcor.fits`` or mosaics). Exactly one of ``images``/``products``.
    products : path, optional
        A products database: its recorded ``kind`` of products between ``start`` and ``end``; the
        forced photometry stored in it is used where it covers a source (see the module docstring).
    kind : {'images', 'mosaics', 'all'}
        With ``products``: tiles, mosaics or both.
    start, end : optional
        With ``products``: the time range (ISO, datetime, Time or MJD).
    noise : path or float, optional
        Noise for every image (default: each image's own, see ``noise_for_image``). Given, every
        image is measured anew (the stored photometry used each image's own noise).
    detect_nsigma, ul_nsigma : float
        Detection threshold and upper-limit multiplier (:func:`forced_photometry`).
    covered_only : bool
        Drop the rows of sources outside an image (or on blanked pixels).
    use_stored : bool
        With ``products``: read the stored forced photometry where it covers a source (False:
        measure every image anew).
    db_match_arcsec : float
        A source takes the stored photometry of a position within this distance (arcsec).

    Returns
    -------
    pandas.DataFrame
        :func:`forced_photometry`'s columns plus ``kind`` ('image' or 'mosaic'), sorted by
        ``name`` then ``mjd``.
    """
    import pandas as pd

    resolved = [resolve_source(s) for s in sources]
    names = [r[0] for r in resolved]
    ra = np.array([r[1] for r in resolved], float)
    dec = np.array([r[2] for r in resolved], float)
    frames = []
    measured, stored = {}, None
    if products is not None and use_stored and noise is None:
        measured, stored = stored_photometry(products, resolved, kind=kind, start=start, end=end,
                                             match_arcsec=db_match_arcsec)
    from_db = set(stored["name"]) if stored is not None and len(stored) else set()
    if from_db:
        st = stored.copy()
        with np.errstate(invalid="ignore"):
            st["detected"] = (st["snr"] >= detect_nsigma).to_numpy(bool)
        st["upper_limit_jy"] = np.where(st["detected"], np.nan,
                                        np.maximum(st["flux_jy"], 0.0) + ul_nsigma * st["flux_err_jy"])
        frames.append(st)
        if not covered_only:  # the stored sources on measured images that do not cover them
            have = set(zip(st["name"], st["image"]))
            miss = [(n, r, d, path, m) for n, r, d in resolved if n in from_db
                    for path, m in measured.items() if (n, path) not in have]
            if miss:
                frames.append(pd.DataFrame({
                    "name": [x[0] for x in miss], "ra_deg": [x[1] for x in miss], "dec_deg": [x[2] for x in miss],
                    "image": [x[3] for x in miss], "mjd": [x[4]["mjd"] for x in miss], "flux_jy": np.nan,
                    "flux_err_jy": np.nan, "snr": np.nan, "detected": False, "upper_limit_jy": np.nan,
                    "x": np.nan, "y": np.nan, "covered": False, "local_rms_jy": np.nan,
                    "kind": [x[4]["kind"] for x in miss]})[_COLUMNS])
    fresh = np.array([n not in from_db for n in names], bool)
    for item in _image_list(images, products, kind, start, end):
        sel = np.ones(len(names), bool) if item["path"] not in measured else fresh
        if not sel.any():
            continue
        df = forced_photometry(item["path"], ra[sel], dec[sel], names=[n for n, k in zip(names, sel) if k],
                               noise=noise, detect_nsigma=detect_nsigma, ul_nsigma=ul_nsigma, mjd=item["mjd"])
        df["kind"] = item["kind"]
        frames.append(df[df["covered"]] if covered_only else df)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["name", "mjd"], kind="stable").reset_index(drop=True)


def light_curve(source, images=None, **kwargs):
    """The light curve of one source (see :func:`light_curves` for the arguments): a DataFrame by time."""
    return light_curves([source], images, **kwargs)


def plot_light_curve(df, path, *, title: str | None = None) -> Path:
    """Plot a light curve (detections with error bars, upper limits as down-pointing triangles) to a PNG.

    Parameters
    ----------
    df : pandas.DataFrame
        One source's rows of :func:`light_curve` (``mjd``, ``flux_jy``, ``flux_err_jy``,
        ``detected``, ``upper_limit_jy``).
    path : str or path-like
        The PNG (written atomically).
    title : str, optional
        Default: the source's name.

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dsacont.io.atomic import atomic_path

    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    det = df[df["detected"]]
    ul = df[~df["detected"]]
    t0 = math.floor(float(df["mjd"].min())) if len(df) else 0.0
    ax.errorbar(det["mjd"] - t0, 1e3 * det["flux_jy"], yerr=1e3 * det["flux_err_jy"], fmt="o", ms=4, capsize=2,
                label="detected")
    if len(ul):
        ax.plot(ul["mjd"] - t0, 1e3 * ul["upper_limit_jy"], "v", color="0.5", label="upper limit")
    if len(det):
        ax.axhline(1e3 * float(np.median(det["flux_jy"])), color="0.7", lw=0.8, ls="--")
    ax.set_xlabel(f"MJD - {t0:.0f}")
    ax.set_ylabel("flux density (mJy)")
    ax.set_title(title or (str(df["name"].iloc[0]) if len(df) else "light curve"))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def to_dataset(lc):
    """A light-curve table as an xarray Dataset over (source, image), for notebooks.

    Parameters
    ----------
    lc : pandas.DataFrame
        :func:`light_curves`'s table.

    Returns
    -------
    xarray.Dataset
        Dimensions ``source`` (coordinates ``ra_deg``, ``dec_deg``) and ``image`` (coordinates
        ``mjd``, ``kind``; sorted by time); variables ``flux_jy``, ``flux_err_jy``, ``snr``,
        ``upper_limit_jy`` (float64, NaN where a source was not measured on an image) and
        ``detected`` (bool, False there).
    """
    import xarray as xr

    images = lc.drop_duplicates("image").sort_values("mjd", kind="stable")
    sources = lc.drop_duplicates("name")
    data = {}
    for v in ("flux_jy", "flux_err_jy", "snr", "upper_limit_jy", "detected"):
        piv = lc.pivot(index="name", columns="image", values=v).reindex(index=sources["name"], columns=images["image"])
        arr = piv.to_numpy(dtype=float)
        data[v] = (("source", "image"), np.nan_to_num(arr, nan=0.0).astype(bool) if v == "detected" else arr)
    coords = {"source": sources["name"].to_numpy(), "ra_deg": ("source", sources["ra_deg"].to_numpy(float)),
              "dec_deg": ("source", sources["dec_deg"].to_numpy(float)), "image": images["image"].to_numpy(),
              "mjd": ("image", images["mjd"].to_numpy(float))}
    if "kind" in images:
        coords["kind"] = ("image", images["kind"].to_numpy())
    return xr.Dataset(data, coords=coords)
