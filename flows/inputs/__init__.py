"""Inputs: listing and fingerprinting shards (``sources``), reading them into arrays
batch by batch (``reader``), and checking their integrity (``integrity``)."""
