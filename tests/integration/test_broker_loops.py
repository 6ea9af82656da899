"""The tests' broker consumers stop when asked, whatever they are doing then.

A consumer that would not stop hung the destinations end-to-end test at its
teardown: redis-py writes each command under ``asyncio.wait_for``, and on
Python 3.11 a cancellation that arrives as that write completes is swallowed.
"""

from __future__ import annotations

import asyncio
import random

from tests.brokers import Loops, redis_client, unique


async def test_a_loop_reading_redis_stops_at_any_moment() -> None:
    moments = random.Random(14)
    async with redis_client() as (client, keys):
        stream = unique("loop")
        keys.append(stream)
        for _ in range(100):
            loops = Loops()
            loops.repeat(lambda: client.xread({stream: "0-0"}, count=16, block=1))
            await asyncio.sleep(moments.uniform(0, 0.01))
            await loops.stop(timeout=2)
