"""The cluster: a client to use, waiting on futures with a stall watchdog, and the
tree reduction. Only the engine submits work to Dask, through these helpers."""

from __future__ import annotations

import logging
import os
import queue
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from distributed import Client, LocalCluster

from xent_kernels.mergeable import merge_states

from ..config import EvalConfig
from ..errors import InfrastructureError, XentError, infrastructure_cause
from ..phases import phase
from ..runtime import send_cluster_logs_to_file

STALL_TIMEOUT = EvalConfig.model_fields["stall_timeout"].default


def map_all(client: Client, function: Callable, *iterables, stall_timeout: float = STALL_TIMEOUT,
            on_done: Callable[[int], None] | None = None, **kwargs) -> list:
    """``[function(*args, **kwargs) for args in zip(*iterables)]`` on the cluster, in order;
    `on_done(i)` as item i finishes. The first error cancels the rest and is raised."""
    futures = client.map(function, *iterables, pure=False, **kwargs)
    wait_all(futures, _by_index(futures, on_done), stall_timeout)
    return [future.result() for future in futures]


def map_reduce(client: Client, function: Callable, *iterables, split_every: int, stall_timeout: float = STALL_TIMEOUT,
               on_done: Callable[[int], None] | None = None, **kwargs):
    """The merge of ``function(*args, **kwargs)`` for args in zip(*iterables): states that
    speak :mod:`xent_kernels.mergeable`, merged on the cluster in a tree of fan-in
    `split_every`; only the merged state reaches the client."""
    futures = client.map(function, *iterables, pure=False, **kwargs)
    total = tree_reduce(client, futures, split_every)
    wait_all(futures, _by_index(futures, on_done), stall_timeout)
    wait_all([total], lambda future: None, stall_timeout)
    return total.result()


def _by_index(futures: list, on_done: Callable[[int], None] | None) -> Callable[[object], None]:
    """A ``wait_all`` callback calling `on_done` with the finished future's position."""
    index = {future.key: i for i, future in enumerate(futures)}
    return (lambda future: None) if on_done is None else (lambda future: on_done(index[future.key]))


def _merge(*states):
    """``merge_states``, timed as the merge phase (flows.phases)."""
    with phase("merge"):
        return merge_states(*states)


def tree_reduce(client: Client, futures: list, split_every: int) -> object:
    """One future for the merge of the states of `futures` (at least one), in a tree of
    fan-in `split_every`: each node is ``merge_states``, the combine step of every state type."""
    level = futures
    while len(level) > 1:
        level = [client.submit(_merge, *level[i : i + split_every], pure=False)
                 for i in range(0, len(level), split_every)]
    return level[0]



def wait_all(futures: list, on_done: Callable[[object], None], stall_timeout: float = STALL_TIMEOUT) -> None:
    """Wait for `futures`, calling `on_done(future)` as each finishes; the first
    error cancels the rest and is raised here.

    A cluster whose workers are all paused at their memory limit, or gone, never
    fails a task: it waits. When none of `futures` finishes for `stall_timeout`
    seconds, the rest are cancelled and an InfrastructureError names the cause.
    """
    finished: queue.SimpleQueue = queue.SimpleQueue()
    try:
        for future in futures:
            future.add_done_callback(finished.put)
        for _ in futures:
            try:
                future = finished.get(timeout=stall_timeout)
            except queue.Empty:
                raise InfrastructureError(_stall_message(futures[0].client, stall_timeout)) from None
            if future.status == "error":
                future.result()
            on_done(future)
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _stall_message(client: Client, seconds: float) -> str:
    """Why the cluster made no progress, in one line, with the setting to change."""
    head = f"the Dask cluster at {client.scheduler.address} made no progress for {seconds:g} s"
    try:
        workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    except Exception as error:  # noqa: BLE001 - the scheduler itself may be the cause
        return f"{head} and its scheduler does not answer ({error}); check the scheduler, or raise stall_timeout"
    if not workers:
        return f"{head}: it has no workers (they exited or were lost); start workers and check their logs"
    paused = [w for w in workers if w.get("status") == "paused"]
    if paused:
        memory = ", ".join(
            f"{w.get('name')} {w.get('metrics', {}).get('memory', 0) / 2**20:.0f} MiB of "
            f"{w.get('memory_limit', 0) / 2**20:.0f} MiB"
            for w in paused
        )
        return (
            f"{head}: {len(paused)} of {len(workers)} workers paused at their memory limit ({memory}); "
            "raise the workers' --memory-limit, lower batch_logits, or raise stall_timeout"
        )
    return (
        f"{head} with no worker paused ({len(workers)} running): a task is blocked or slower than stall_timeout; "
        "check the workers' logs, lower task_rows, or raise stall_timeout"
    )

# --------------------------------------------------------------------------- the cluster


@contextmanager
def dask_client(address: str | None = None, *, n_workers: int | None = None) -> Iterator[Client]:
    """A client for `address` (or $DASK_SCHEDULER_ADDRESS), else a LocalCluster sized to this machine.

    The local cluster runs its workers as threads of this process: the kernels and
    pyarrow release the GIL, and there is no worker start-up or data transfer to pay.
    """
    # distributed logs every connection at INFO, and a worker logs each failed task
    # with its traceback: all of it goes to the cluster log; the error reaches the
    # user once, from the client.
    log = send_cluster_logs_to_file()
    logging.getLogger("distributed").setLevel(logging.INFO)
    if logging.getLogger().getEffectiveLevel() < logging.WARNING:  # --verbose
        print(f"cluster log: {log}", file=sys.stderr)
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise InfrastructureError(
                f"cannot reach the Dask scheduler at {address}: {error} (check the address and that the scheduler runs)",
                transient=True,
            ) from None
        with client, _cluster_failures_named(address):
            yield client
        return
    threads = n_workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=":0", silence_logs=False
    ) as cluster, Client(cluster) as client, _cluster_failures_named(cluster.scheduler_address):
        yield client


# Errors by which distributed says the cluster itself failed, whatever the data.
_LOST_SCHEDULER = ("CommClosedError", "StreamClosedError", "FutureCancelledError", "CancelledError")


@contextmanager
def _cluster_failures_named(address: str) -> Iterator[None]:
    """Turn the cluster's own failures (scheduler lost, workers dying) into an
    InfrastructureError naming the scheduler; other errors pass unchanged."""
    try:
        yield
    except XentError:
        raise
    except Exception as error:
        name = type(error).__name__
        if name in _LOST_SCHEDULER:
            raise InfrastructureError(f"lost the Dask scheduler at {address} ({name}: {error})", transient=True) from error
        if name == "KilledWorker":
            cause = infrastructure_cause(error)[0]
            raise InfrastructureError(f"Dask cluster at {address}: {cause}; {error}") from error
        raise
