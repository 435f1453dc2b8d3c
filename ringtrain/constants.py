"""Numbers that several modules must agree on: the default bucket cap and the MPI tags.

Tags: every message stream gets its own, so a receive can never match a
message of another algorithm even if two ever ran on one communicator. They
all travel on ringtrain's private duplicate of the user's communicator
(collectives/comm.py), except the watchdog's, which has its own.
"""
BUCKET_CAP_MB = 25.0
"""The gradient reducer's default bucket cap in MB (DDP's too): big enough to amortise latency."""

POLL_SLEEP_US = 200.0
"""Microseconds the reducer's communication thread sleeps between tests of its MPI requests (0: spin in MPI);
RINGTRAIN_POLL_SLEEP_US overrides it. From measurements in benchmarks/README.md ("Polite waiting")."""

TAG_RING_REDUCE, TAG_RING_GATHER = 11, 12
TAG_RECURSIVE_DOUBLING = 21
TAG_PARAMETER_SERVER = 31
TAG_CHAIN_BROADCAST = 41
TAG_CODEC_REDUCE, TAG_CODEC_GATHER = 61, 62
TAG_PING, TAG_PONG, TAG_VERDICT = 71, 72, 73
TAG_NODE_FOLD = 81
TAG_SHARD_LAYOUT, TAG_SHARD_DATA = 91, 92
