"""Protocol plugins and the IJB-B/IJB-C protocol runner.

Modules (import what you need; nothing is imported here so the CLI stays light):
``ijb_files`` (meta readers), ``features_io`` (feature files), ``protocol`` (``ProtocolData``,
``Protocol``), ``ijb`` (IJB-B/C), ``synthetic`` (the seeded IJB-like protocol), ``scoring``
(pair scores), ``metrics`` / ``identification`` (1:1 and 1:N metrics), ``runner``
(``evaluate``), ``report`` (output files), ``cli`` (``facecoreset eval``).
"""

__all__: list[str] = []
