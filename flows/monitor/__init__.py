"""Drift monitoring: a current dump against a reference, by distribution (``compare``)
and by per-sample KL on rows joined by key (``join``)."""
