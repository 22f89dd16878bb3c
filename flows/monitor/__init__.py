"""Monitoring two sides: drift, a current dump against a reference, by distribution
(``drift``) and by per-sample KL on rows joined by key (``join``); compare, a candidate
model against a baseline on the same rows (``paired``), with gates on the differences
(``gates``), and a nightly run's gates against a baseline run (``baseline``)."""
