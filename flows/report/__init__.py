"""Reports: the tables a run produces (``tables``) and their all-or-nothing write
(``writing``)."""
