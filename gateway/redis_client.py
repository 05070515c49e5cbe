"""Redis connections for the services that move stream entries, and their consumer-group reads.

redis-py packs commands with hiredis when it is installed, and hiredis copies every argument into
one buffer at a cost that grows faster than the size: measured here, 7 µs for a 60 KB value but
1 ms for 600 KB and 13 ms for 6 MB, which is what one gateway batch (5,000 messages of 10 records)
weighs. The pure-Python packer sends a value over its buffer cutoff as a separate chunk, uncopied,
in about 4 µs whatever its size. Replies are still parsed by hiredis.
"""

from __future__ import annotations

import logging
import time

import redis
from redis.connection import Encoder, PythonRespSerializer

log = logging.getLogger(__name__)

BUFFER_CUTOFF = 6000  # redis-py's own default: smaller values are joined into the command buffer


def stream_client(url: str) -> redis.Redis:
    encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)
    return redis.Redis.from_url(url, command_packer=PythonRespSerializer(BUFFER_CUTOFF, encoder.encode))


Entries = list[tuple[bytes, dict[bytes, bytes]]]


class GroupReader:
    """One consumer's reads of a stream through its consumer group, so that no entry is lost to a
    crash: first the entries this consumer name read before and never acknowledged (a restarted
    worker takes its own back at once), then, checked every `claim_check_s` at most, entries another
    consumer has left pending for `claim_idle_ms` (it died, and may never come back), then new ones.
    """

    def __init__(
        self, client: redis.Redis, stream: str, group: str, consumer: str, *, count: int, block_ms: int,
        claim_idle_ms: int, claim_check_s: float,
    ) -> None:  # fmt: skip
        self._redis = client
        self._stream = stream
        self._group = group
        self.consumer = consumer
        self._count = count
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._claim_check_s = min(claim_check_s, claim_idle_ms / 3000)  # a short idle time is checked often
        self._own_pending = True
        self._claim_due = 0.0
        self.claimed = 0  # entries taken over from other consumers

    def ensure_group(self) -> bool:
        """Create the group (and the stream) unless it exists; True, so a retry loop can tell done."""
        try:
            self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return True

    def read(self) -> Entries:
        if self._own_pending:
            mine = self._redis.xreadgroup(self._group, self.consumer, {self._stream: "0"}, count=self._count)
            if mine and mine[0][1]:
                return mine[0][1]
            self._own_pending = False
        if time.monotonic() >= self._claim_due:
            _next, claimed, *_ = self._redis.xautoclaim(
                self._stream, self._group, self.consumer, self._claim_idle_ms, "0-0", count=self._count
            )
            if claimed:
                self.claimed += len(claimed)
                log.info("%s took over %d entries idle for %d ms", self.consumer, len(claimed), self._claim_idle_ms)
                return claimed
            self._claim_due = time.monotonic() + self._claim_check_s
        reply = self._redis.xreadgroup(
            self._group, self.consumer, {self._stream: ">"}, count=self._count, block=self._block_ms
        )
        return reply[0][1] if reply else []
