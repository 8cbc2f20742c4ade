"""Measurement Set metadata: the ``table`` context manager and ``read_ms_info``, on a small MS made
by ``create_ms`` (casatools, no conversion)."""
from __future__ import annotations

import numpy as np
import pytest

from dsacont.errors import BadInputError


def _small_ms(path, ntime: int = 2):
    from dsacont.io import ms_build as msio

    nbl, nchan, nspw = 6, 8, 3
    layout = msio.MSLayout(
        antenna_names=[str(i + 1) for i in range(4)],
        antenna_positions=np.full((4, 3), 6.0e6) + np.arange(12).reshape(4, 3),
        dish_diameter=4.65, spw_freqs=1.3e9 + 1e6 * np.arange(nspw * nchan, dtype=float).reshape(nspw, nchan),
        spw_widths=np.full((nspw, nchan), 1e5), spw_names=["sb02", "sb01", "sb00"], polarizations=["XX", "YY"],
        field_names=["f"], field_dirs=np.array([[1.0, 0.9]]), field_times=np.array([5e9]),
        time_range=(5e9 - 5, 5e9 + 10 * ntime - 5), nrows=ntime * nspw * nbl, interval=10.0, tile_rows=nbl)
    msio.create_ms(path, layout)
    with msio.MSWriter(path) as w:
        w.add_runs(np.full(ntime * nspw, nbl), constants=dict(INTERVAL=10.0),
                   TIME=np.repeat(5e9 + 10.0 * np.arange(ntime), nspw), DATA_DESC_ID=np.tile(np.arange(nspw), ntime))
    return layout


def test_read_ms_info(tmp_path):
    from dsacont.io.ms import read_ms_info

    ms = tmp_path / "m.ms"
    layout = _small_ms(ms)
    info = read_ms_info(ms)
    assert info.path == str(ms) and info.nrows == 36 and "DATA" in info.columns
    np.testing.assert_array_equal(info.times_s, [5e9, 5e9 + 10])
    assert info.interval_s == 10.0 and info.mid_mjd == pytest.approx((5e9 + 5) / 86400)
    assert info.start_end_mjd == pytest.approx(((5e9 - 5) / 86400, (5e9 + 15) / 86400))
    assert len(info.spw_freqs) == 3 and info.spw_names == ["sb02", "sb01", "sb00"]
    np.testing.assert_array_equal(np.stack(info.spw_freqs), layout.spw_freqs)
    np.testing.assert_array_equal(np.stack(info.spw_widths), layout.spw_widths)
    np.testing.assert_array_equal(info.ddid_spw, [0, 1, 2])
    assert [c.tolist() for c in info.corr_types] == [[9, 12]]
    assert info.field_names == ["f"] and info.field_frame == "J2000"
    np.testing.assert_allclose(info.field_dirs, [[1.0, 0.9]])
    assert info.antenna_names == ["1", "2", "3", "4"]
    np.testing.assert_allclose(info.antenna_positions, layout.antenna_positions)
    assert info.telescope_name == "OVRO_MMA"
    lay = info.ddid_layout()
    assert sorted(lay) == [0, 1, 2] and lay[1]["spw"] == 1 and lay[1]["ncorr"] == 2
    np.testing.assert_array_equal(lay[2]["freq"], layout.spw_freqs[2])


def test_read_ms_info_names_bad_input(tmp_path):
    from dsacont.io.ms import read_ms_info

    with pytest.raises(BadInputError, match="not a Measurement Set"):
        read_ms_info(tmp_path / "nothing.ms")
    (tmp_path / "junk.ms").mkdir()
    (tmp_path / "junk.ms" / "table.dat").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="junk.ms"):
        read_ms_info(tmp_path / "junk.ms")


def test_table_closes_whatever_happens(tmp_path):
    """The context manager closes the table after the block, also when the block raises; writes are
    flushed (another tool sees them)."""
    from dsacont.io.ms import table

    ms = tmp_path / "m.ms"
    _small_ms(ms)
    with table(ms, "ANTENNA", readonly=False) as tb:
        tb.putcell("STATION", 0, "PAD-X")
        held = tb
        assert held.isopened(str(ms / "ANTENNA"))
    assert not held.isopened(str(ms / "ANTENNA"))
    with table(ms, "ANTENNA") as tb:
        assert tb.getcell("STATION", 0) == "PAD-X"
    with pytest.raises(ZeroDivisionError):
        with table(ms) as tb:
            held = tb
            1 / 0
    assert not held.isopened(str(ms))
    with pytest.raises(RuntimeError):
        with table(tmp_path / "missing.ms"):
            pass


def _main_columns(path):
    from dsacont.io.ms import table

    with table(path) as tb:
        return {c: tb.getcol(c) for c in ("DATA", "FLAG", "WEIGHT", "SIGMA")}


def test_tile_files_write_every_cell_as_putcol_does(tmp_path):
    """ms_build.TileFiles: bytes written straight into the tiles read back through casatools getcol
    identically to what putcol would have stored, for every cell of DATA/FLAG/WEIGHT/SIGMA, for
    row ranges that start and end inside tiles; and the probe check accepts this layout."""
    from dsacont.io import ms_build as msio
    from dsacont.io.kernels import pack_bits_le

    nbl, nchan, npol, nspw, ntime = 6, 8, 2, 3, 2
    layout = msio.MSLayout(
        antenna_names=[str(i + 1) for i in range(4)], antenna_positions=np.full((4, 3), 6.0e6) + np.arange(12).reshape(4, 3),
        dish_diameter=4.65, spw_freqs=1.3e9 + 1e6 * np.arange(nspw * nchan, dtype=float).reshape(nspw, nchan),
        spw_widths=np.full((nspw, nchan), 1e5), spw_names=["a", "b", "c"], polarizations=["XX", "YY"],
        field_names=["f"], field_dirs=np.array([[1.0, 0.9]]), field_times=np.array([5e9]),
        time_range=(5e9, 5e9 + 20), nrows=ntime * nspw * nbl, interval=10.0, tile_rows=nbl)
    ms = tmp_path / "t.ms"
    msio.create_ms(ms, layout)
    nrows = ntime * nspw * nbl
    with msio.MSWriter(ms) as w:
        w.add_runs(np.full(ntime * nspw, nbl), constants=dict(INTERVAL=10.0),
                   TIME=np.repeat(5e9 + 10.0 * np.arange(ntime), nspw), DATA_DESC_ID=np.tile(np.arange(nspw), ntime))
        lay = w.tile_layout()
    tiles = msio.TileFiles.open(lay)
    assert tiles is not None
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((nrows, nchan, npol)) + 1j * rng.standard_normal((nrows, nchan, npol))).astype(np.complex64)
    flag = rng.random((nrows, nchan, npol)) < 0.3
    wt = rng.random((nrows, npol)).astype(np.float32)
    with tiles:
        for a, b in ((0, 4), (4, 11), (11, nrows)):  # across tile boundaries
            packed = pack_bits_le(flag[a:b].reshape(-1), np.empty(flag[a:b].size // 8, np.uint8))
            tiles.write(a, DATA=data[a:b], FLAG=packed if a else flag[a:b], WEIGHT=wt[a:b], SIGMA=2 * wt[a:b])
    cols = _main_columns(ms)
    np.testing.assert_array_equal(cols["DATA"].T, data)
    np.testing.assert_array_equal(cols["FLAG"].T, flag)
    np.testing.assert_array_equal(cols["WEIGHT"].T, wt)
    np.testing.assert_array_equal(cols["SIGMA"].T, 2 * wt)
    # a layout it does not know (tiles of 4 rows: runs of 6 rows would straddle them) is refused
    ms2 = tmp_path / "t2.ms"
    layout.tile_rows = 4
    msio.create_ms(ms2, layout)
    with msio.MSWriter(ms2) as w:
        w.add_runs([nrows - 2])
        assert w.tile_layout() is None  # 34 rows are not whole tiles of 4


def test_average_channels_is_the_flag_weighted_mean_of_the_chosen_column(tmp_path):
    """average_channels (for imaging): the copy's DATA is the mean of the unflagged
    samples of the column asked for (CORRECTED_DATA here, made unlike DATA), a bin flagged
    throughout stays flagged, frequencies are the bins' centres and widths their spans; the source
    MS is untouched and an existing destination is refused."""
    from dsacont.io.ms import ensure_column, read_ms_info, table
    from dsacont.io.ms_average import average_channels

    src, dst = tmp_path / "m.ms", tmp_path / "avg.ms"
    layout = _small_ms(src)
    ensure_column(str(src), "CORRECTED_DATA")
    rng = np.random.default_rng(3)
    with table(src, readonly=False) as tb:
        n = tb.nrows()
        shape = (2, 8, n)
        data = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
        corrected = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
        flag = rng.random(shape) < 0.3
        flag[:, 2:4, 5] = True  # one bin flagged throughout
        tb.putcol("DATA", data)
        tb.putcol("CORRECTED_DATA", corrected)
        tb.putcol("FLAG", flag)
        tb.putcol("WEIGHT", np.ones((2, n), np.float32))
        a1, a2 = np.triu_indices(4, 1)
        tb.putcol("ANTENNA1", np.tile(a1, n // 6).astype(np.int32))
        tb.putcol("ANTENNA2", np.tile(a2, n // 6).astype(np.int32))
        keys = [tuple(k) for k in zip(tb.getcol("TIME"), tb.getcol("DATA_DESC_ID"), tb.getcol("ANTENNA1"),
                                      tb.getcol("ANTENNA2"))]
    average_channels(src, dst, 2, datacolumn="corrected")
    with table(dst) as tb:
        assert "CORRECTED_DATA" not in tb.colnames() and tb.nrows() == n
        out = {tuple(k): i for i, k in enumerate(zip(tb.getcol("TIME"), tb.getcol("DATA_DESC_ID"),
                                                     tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")))}
        order = [out[k] for k in keys]  # mstransform may write the rows in its own order
        got, got_flag = tb.getcol("DATA")[:, :, order], tb.getcol("FLAG")[:, :, order]
    good = ~flag
    num = (corrected * good).reshape(2, 4, 2, n).sum(axis=2)
    cnt = good.reshape(2, 4, 2, n).sum(axis=2)
    want_flag = cnt == 0
    np.testing.assert_array_equal(got_flag, want_flag)
    np.testing.assert_allclose(got[~want_flag], (num / np.maximum(cnt, 1))[~want_flag], rtol=1e-5, atol=1e-6)
    info = read_ms_info(dst)
    np.testing.assert_allclose(np.stack(info.spw_freqs), layout.spw_freqs.reshape(3, 4, 2).mean(axis=2))
    # a bin spans its first channel's lower edge to its last one's upper edge (these test channels are
    # 0.1 MHz wide, 1 MHz apart: 1.1 MHz; contiguous channels, as dsacont writes, give the sum)
    edges = layout.spw_freqs.reshape(3, 4, 2)
    width = layout.spw_widths.reshape(3, 4, 2)
    np.testing.assert_allclose(np.stack(info.spw_widths),
                               edges[..., 1] + width[..., 1] / 2 - (edges[..., 0] - width[..., 0] / 2))
    with table(src) as tb:  # the source is as it was
        np.testing.assert_array_equal(tb.getcol("CORRECTED_DATA"), corrected)
        assert tb.getcol("DATA").shape == (2, 8, n)
    with pytest.raises(FileExistsError):
        average_channels(src, dst, 2)


def test_column_runs_read_and_write_the_rows_of_one_ddid(tmp_path):
    """ddid_runs / get_runs / put_runs (the bulk access of the fast solves and dsacont's apply): the
    rows of each DATA_DESC_ID, read as contiguous runs or as one-row runs (an MS whose SPWs
    interleave row by row, read through ``selectrows``), are what a ``DATA_DESC_ID==d`` query
    returns, in the same order; writes land on those rows and no others, by either path."""
    from dsacont.io.ms import _fragmented, ddid_runs, get_runs, put_runs, run_rows, table

    ms = tmp_path / "m.ms"
    _small_ms(ms, ntime=4)  # 24 rows per SPW, in 4 runs of 6
    rng = np.random.default_rng(5)
    with table(ms, readonly=False) as tb:
        n = tb.nrows()
        data = (rng.normal(size=(2, 8, n)) + 1j * rng.normal(size=(2, 8, n))).astype(np.complex64)
        tb.putcol("DATA", data)
        ddid = np.asarray(tb.getcol("DATA_DESC_ID"))
        runs_of = ddid_runs(tb)
        assert sorted(runs_of) == [0, 1, 2] and all(len(r) == 4 for r in runs_of.values())
        for d, runs in runs_of.items():
            rows = run_rows(runs)
            np.testing.assert_array_equal(rows, np.flatnonzero(ddid == d))
            sub = tb.query(f"DATA_DESC_ID=={d}")
            want = sub.getcol("DATA")
            sub.close()
            singles = [(int(r), 1) for r in rows]
            assert not _fragmented(runs) and _fragmented(singles)
            for how in (runs, singles):
                got = get_runs(tb, "DATA", how, (2, 8), np.complex64)
                assert got.flags.f_contiguous
                np.testing.assert_array_equal(got, want)
        # writes: SPW 1 by runs, SPW 2 by one-row runs; SPW 0 untouched
        put_runs(tb, "DATA", -data[..., ddid == 1], runs_of[1])
        put_runs(tb, "DATA", 2 * data[..., ddid == 2], [(int(r), 1) for r in run_rows(runs_of[2])])
        after = tb.getcol("DATA")
    np.testing.assert_array_equal(after[..., ddid == 0], data[..., ddid == 0])
    np.testing.assert_array_equal(after[..., ddid == 1], -data[..., ddid == 1])
    np.testing.assert_array_equal(after[..., ddid == 2], 2 * data[..., ddid == 2])


def test_columns_are_read_straight_from_their_files_as_casatools_reads_them(tmp_path):
    """tile_file / get_runs: the bulk columns of a dsacont MS and a CORRECTED_DATA column added by
    ensure_column (a TiledShapeStMan with ~1 MiB tiles: 6 rows of its 72 do not fill the last
    one) are read from their storage files, right after casatools wrote them in the same open
    table (the write is flushed first), equal to getcol bit for bit; a column without such a
    layout (TIME), a reference table and a column of another shape go through casatools."""
    from dsacont.io.ms import ddid_runs, ensure_column, get_runs, table, tile_file

    ms = tmp_path / "m.ms"
    _small_ms(ms, ntime=4)
    ensure_column(str(ms), "CORRECTED_DATA")
    rng = np.random.default_rng(11)
    with table(ms, readonly=False) as tb:
        n = tb.nrows()
        cols = {"DATA": (rng.normal(size=(2, 8, n)) + 1j * rng.normal(size=(2, 8, n))).astype(np.complex64),
                "CORRECTED_DATA": (rng.normal(size=(2, 8, n)) + 1j * rng.normal(size=(2, 8, n))).astype(np.complex64),
                "FLAG": rng.random((2, 8, n)) < 0.3, "WEIGHT": rng.random((2, n)).astype(np.float32)}
        for c, v in cols.items():
            tb.putcol(c, v)
        for c, v in cols.items():
            tf = tile_file(tb, c)
            assert tf is not None and tf["nrows"] == n, c
            for d, runs in ddid_runs(tb).items():
                got = get_runs(tb, c, runs, v.shape[:-1], v.dtype)
                assert got.flags.f_contiguous and got.dtype == v.dtype
                np.testing.assert_array_equal(got, np.concatenate([v[..., a:a + k] for a, k in runs], axis=-1))
        assert tile_file(tb, "CORRECTED_DATA")["tile_rows"] > n  # one partly filled tile
        assert tile_file(tb, "TIME") is None and tile_file(tb, "NO_SUCH_COLUMN") is None
        sub = tb.query("DATA_DESC_ID==1")
        try:
            assert tile_file(sub, "DATA") is None
            np.testing.assert_array_equal(get_runs(sub, "DATA", [(0, sub.nrows())], (2, 8), np.complex64),
                                          sub.getcol("DATA"))
        finally:
            sub.close()
        # another dtype than the file's: the values converted
        np.testing.assert_array_equal(get_runs(tb, "FLAG", [(0, 6)], (2, 8), np.uint8), cols["FLAG"][..., :6])


def test_average_channel_bins_leaves_flagged_channels_out():
    """The kernel of the imaging copy against a direct numpy average: flagged channels carry no
    weight; a bin flagged throughout is flagged and holds the mean of all its samples (as CASA's
    mstransform writes it)."""
    from dsacont.io.kernels import average_channel_bins

    rng = np.random.default_rng(2)
    data = (rng.normal(size=(7, 12, 2)) + 1j * rng.normal(size=(7, 12, 2))).astype(np.complex64)
    flag = rng.random((7, 12, 2)) < 0.3
    flag[3, 0:3, 1] = True  # one whole bin of 3
    out, fout, nmean, smean = average_channel_bins(data, flag, 3)
    w = (~flag).reshape(7, 4, 3, 2)
    n = w.sum(axis=2)
    want = np.where(n > 0, (data.reshape(7, 4, 3, 2) * w).sum(axis=2) / np.maximum(n, 1),
                    data.reshape(7, 4, 3, 2).mean(axis=2))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fout, n == 0)
    # the WEIGHT factor: unflagged samples per bin over the bins with any
    nbins = np.maximum((n > 0).sum(axis=1), 1)
    np.testing.assert_allclose(nmean, n.sum(axis=1) / nbins)
    np.testing.assert_allclose(smean, np.where(n > 0, 1 / np.sqrt(np.maximum(n, 1)), 0).sum(axis=1) / nbins)
    assert fout[3, 0, 1] and out[3, 0, 1] == pytest.approx(data[3, 0:3, 1].mean()) and not fout[3, 0, 0]
