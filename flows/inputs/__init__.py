"""Inputs: listing and fingerprinting shards (``sources``), resolving what to read from
the first shard (``spec``), reading them into arrays batch by batch (``reader``), and
checking their integrity (``integrity``)."""
