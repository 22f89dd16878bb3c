"""Each command's steps, free of Prefect: ``adhoc`` (xent eval), ``two_sided`` (xent
drift and xent compare) and ``nightly``. The Prefect flows in :mod:`flows.pipelines`
run the same steps as tasks."""
