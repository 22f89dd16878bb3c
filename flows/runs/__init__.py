"""Each command's steps, free of Prefect: ``adhoc`` (xent eval), ``drift`` and
``nightly``. The Prefect flows in :mod:`flows.pipelines` run the same steps as tasks."""
