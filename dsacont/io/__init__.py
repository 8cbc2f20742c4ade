"""File formats, each read and written in one place: UVH5 subband files (``uvh5``, with
``groups`` for finding them and ``h5index`` for their chunk tables), Measurement Sets (``ms``)."""
