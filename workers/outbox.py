"""Send cibot's Celery messages so that none is lost, even when Redis goes away mid-delivery.

Kombu's Redis transport hands a message to a worker in two steps: ``BRPOP`` takes it off
the queue, then the worker records it as unacked. A Redis that stops between the two
(or a worker that dies there) loses the message, and with it the job: the delivery was
acknowledged to GitHub, and nothing will ever run it.

So every message cibot sends (the edge's dispatch messages, and each step's follow-up) is
also kept in an outbox, keyed by its Celery task id, until the step it starts has finished:
``cibot:outbox`` maps the id to the message, and ``cibot:outbox:due`` says when to look
for it next. A sweep (any worker, one at a time) takes the ids that are due and looks for
each message where it should be: on its queue, or unacked by a worker (which holds retry
waits too). One found nowhere is pushed again. A step that ends drops its own id; a step
that retries keeps it. Every step is idempotent, so the rare message sent twice (caught
between the two kombu steps) does no harm.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bot.kernel.jobs import DUE, GRACE_S, OUTBOX, envelope

SWEEP_LOCK = "cibot:outbox:sweeping"
UNACKED = "unacked"  # kombu's Redis transport default ``unacked_key``
SWEEP_S = 10.0
SWEEP_BATCH = 200

# KEYS: the queue, the outbox hash, the due set. ARGV: message, task id, due time.
SEND_SCRIPT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode({queue = KEYS[1], message = ARGV[1]}))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""

# KEYS: the outbox hash, the due set, kombu's unacked hash, the sweep lock.
# ARGV: now, grace, batch, lock seconds. Returns how many messages were pushed again.
SWEEP_SCRIPT = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[4]) then return -1 end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return 0 end
local later = tonumber(ARGV[1]) + tonumber(ARGV[2])
local seen, wanted, queues = {}, {}, {}
for _, id in ipairs(due) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local entry = cjson.decode(raw)
    wanted[id] = entry
    queues[entry.queue] = true
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
local function look(text)
  for id in string.gmatch(text, '"id": "([^"]+)"') do seen[id] = true end
end
for _, value in ipairs(redis.call('HVALS', KEYS[3])) do look(value) end
for queue, _ in pairs(queues) do
  for _, value in ipairs(redis.call('LRANGE', queue, 0, -1)) do look(value) end
end
local pushed = 0
for id, entry in pairs(wanted) do
  if not seen[id] then
    redis.call('LPUSH', entry.queue, entry.message)
    pushed = pushed + 1
  end
  redis.call('ZADD', KEYS[2], later, id)
end
return pushed
"""


def send(client: Any, name: str, kwargs: dict[str, Any], queue: str) -> str:
    """Queue one task message and keep it in the outbox, in one script; return its task id."""
    task_id = str(uuid.uuid4())
    message = envelope(name, queue, kwargs, task_id=task_id)
    client.eval(SEND_SCRIPT, 3, queue, OUTBOX, DUE, message, task_id, time.time() + GRACE_S)
    return task_id


def done(client: Any, task_id: str) -> None:
    """Drop a finished step's message from the outbox."""
    pipe = client.pipeline(transaction=False)
    pipe.hdel(OUTBOX, task_id)
    pipe.zrem(DUE, task_id)
    pipe.execute()


def postpone(client: Any, task_id: str, seconds: float) -> None:
    """Look for a retrying step's message no sooner than after its wait."""
    client.zadd(DUE, {task_id: time.time() + seconds + GRACE_S}, xx=True)


def sweep(client: Any, *, now: float | None = None, grace: float = GRACE_S) -> int:
    """Push again every due message found nowhere; return how many (-1: another sweeps)."""
    at = time.time() if now is None else now
    lock_s = max(1, int(SWEEP_S) - 1)
    return int(
        client.eval(
            SWEEP_SCRIPT, 4, OUTBOX, DUE, UNACKED, SWEEP_LOCK, at, grace, SWEEP_BATCH, lock_s
        )
    )
