"""Redis-backed KPI state: one conditional transaction per partition per batch.

Key layout (``P`` = ``DESKPULSE_REDIS_PREFIX``, ``n`` = source partition; every key of a
partition carries the hash tag ``{pn}``, so a batch is one script on one cluster slot):

=============================  ===========================================================
``P:{pn}:meta``                hash: ``version``, ``wm`` (newest event time, ms),
                               ``wm:<topic>`` (the same per source topic),
                               ``off:<topic>`` (last applied offset), ``off:<repartition
                               topic>><n>`` (newest offset a record forwarded from here got
                               on its partition n), ``off:<topic><<n>`` (newest offset
                               of ``topic``'s partition n applied straight here by
                               ``deskpulse replay``), ``held``, ``orphaned``,
                               ``dup:<topic>``, ``late:<topic>``, ``ignored:closed``,
                               ``applied``, ``gen`` (the
                               store generation, written by the partition's first commit),
                               ``sla_running:<metric>``, ``sla_at_risk:<metric>`` (the SLA
                               instances of the partition's tickets running now, and of
                               those at risk: see "Instances now" below)
``P:{pn}:b:<start>``           hash: fine bucket (``DESKPULSE_BUCKET_SECONDS``), fields
                               ``channel␟queue␟priority␟field`` -> integer
``P:{pn}:r:<start>``           hash: the same fields rolled up per ``rollup_seconds``
``P:{pn}:B:<start>``,          hash: the fine and rolled-up fields summed over all groups,
``P:{pn}:R:<start>``           keyed ``field`` alone (reads without grouping take these)
``P:{pn}:a:<start>``,          hash: the per-agent fields, fine and rolled up, keyed
``P:{pn}:A:<start>``           ``agent_id␟field`` (``--by agent`` reads these alone;
                               :mod:`~streams.agent_kpis`), the agents' own presence steps
                               among them
``P:{pn}:bidx``                zset: bucket key suffix -> bucket end (s), for trimming
``P:{pn}:bver``                hash: bucket key suffix -> ``generation:version`` of the
                               last commit that wrote it (readers keep sums of settled
                               buckets and know them unchanged by these stamps)
``P:{pn}:tot``                 hash: the cumulative (Prometheus-native) totals
``P:{pn}:lvl``                 hash: the levels, ``channel␟queue␟priority␟bl:<status>`` (and
                               ``bl:w``) -> the running sum of those level steps: the
                               backlog and the waiting chats as of every step written;
                               ``ag:<status>`` (no group) the agents by presence status,
                               ``ag@<agent>␟ag:<status>`` each agent's own
``P:{pn}:lo:<group>``          zset: the group's tickets open now -> creation (ms)
``P:{pn}:lw:<group>``          zset: the group's chats without an outcome -> request (ms)
``P:{pn}:lx``                  zset: conversations that left those -> the instant they left;
                               a ticket whose dimensions changed also has one member
                               ``<id>␞<n>`` per earlier group it was in, scored by the
                               instant it left that group
``P:{pn}:lmoved``              zset: the commits that moved the live indexes, the last
                               :data:`MOVES_KEPT` versions: members ``version:n:from:to``
                               scored by the version, the instants ``[from, to]`` (``to``
                               empty: from on) whose reading the commit changed (a
                               reader's kept answer for an instant outside every later
                               entry still holds)
``P:{pn}:lgm``                 zset: ``t<group>`` and ``c<group>``, a group whose open
                               tickets or waiting chats (or whose conversations' entries in
                               ``lx`` and ``li``) a commit of the last :data:`MOVES_KEPT`
                               versions moved -> the last such version; the meta's
                               ``lgm:from`` and ``lgm:to`` the first and last of the
                               unbroken run of commits that logged them (a reader's kept
                               answer a later commit changed reads again only these groups)
``P:{pn}:hmoved``              zset: an entry per commit of the last
                               :data:`HASH_MOVES_KEPT` versions, scored by its version:
                               ``#<version>␞<groups>␞<groups>␞<fields>``, the groups whose
                               ``tot`` and whose ``lvl`` fields it moved and the fields it
                               created or deleted (``t``/``l`` and the name), each followed
                               by ``\x1d``; ``*`` for more than :data:`HASH_MOVES_NAMED`. A
                               reader that kept a hash at version v reads again only the
                               fields of the groups named since (:meth:`Store.read_levels`)
``P:{pn}:li``                  hash: live info of a conversation in ``lx`` (or a ticket in
                               ``lo`` that was out of the backlog before): ``opened
                               ms␟group␟out-from,out-to,...`` (a ticket dropped at its
                               maximum age keeps it with no state left)
``P:{pn}:conv``                hash: conversation id -> :class:`~streams.core.Conversation`
``P:{pn}:ids``                 zset: ``conversation id␟event id`` of the events a state
                               keeps in no field (:class:`~streams.core.OtherIds`) -> event
                               time (ms); what falls behind the retention horizon is
                               trimmed by every commit
``P:{pn}:tl:t:<ticket id>``    hash: a ticket's timeline entries (public replies and
                               status changes), event id -> ``ms,code``, kept beside its
                               state (which keeps them walked, :class:`~streams.core.Walk`,
                               and their count); read by id for repeats, whole when a
                               batch does not only append (or for breach detection);
                               deleted with the state
``P:{pn}:convexp``             zset: conversation id -> its newest event time (ms); for a
                               ticket open now at least its creation plus the open ticket
                               maximum age less the retention
``P:{pn}:held``                hash: conversation id -> events held for its opener
``P:{pn}:due``                 zset: ticket id -> when breach detection must look at it
                               next (ms): the earliest deadline or warning instant of its
                               SLA instances not claimed yet (claims live in its state)
``P:{pn}:breach_out``          hash: alert event id -> ``sla.breached``, ``sla.at_risk``
                               or ``sla.breach_retracted`` payload parked by a commit and
                               not yet acknowledged by the broker (re-sent after a crash)
``P:{pn}:sync``                string: the version last confirmed on
                               ``DESKPULSE_REDIS_MIN_REPLICAS`` replicas (written by the
                               sync point before each ``WAIT``, see "Replicas" below)
``P:partitions``               set of partition numbers that have state
``P:alerts``                   hash: ``rule␟window␟channel␟queue␟priority`` -> ``firing``
                               or ``ok``, the threshold rules' state
                               (:mod:`exporters.publish`)
``P:config``                   hash: the bucket sizes, store layout and input partition
                               count (``partitions``) the state was written with;
                               ``generation`` (random, new whenever the state starts
                               empty); ``reset_at``, ``reset_note`` once ``deskpulse state
                               reset`` accepted starting empty
=============================  ===========================================================

On a Redis Cluster a partition's keys share the slot of ``{pn}``: every script and atomic
read touches one partition (a read across partitions is one script or command per
partition, pipelined; the cluster client splits a pipeline by node). ``P:config``,
``P:partitions`` and ``P:alerts`` belong to no partition: each lives on the slot of its own
name, and only commands and scripts of that one key touch it, so nothing spans two slots.

Exactly once: :meth:`Store.load` reads ``version`` with the states; :meth:`Store.commit`
runs a Lua script that applies the batch only if ``version`` is unchanged, and records
the offsets in the same step. A batch whose reply was lost and is retried finds the
version moved and is re-folded from fresh state, where the offset fence skips what was
applied. Memory is bounded by event-time retention: buckets whose end is older than the
newest event time minus retention, and conversations with no event since then, are
deleted by the same script (a conversation deleted while still waiting for its opener
counts its held events as orphaned).

Instances now: how many SLA instances run, and how many of those are at risk, is kept as
two counts per SLA metric in each partition's meta, moved by the commit itself: each
ticket's state carries its share of them (:func:`~streams.core.instances_now`, the last
field of the state's JSON), a batch or a breach check adds the difference its fold made
(summed per commit, with the meta counters), and the expiry step takes a deleted ticket's
share back. So the counts change exactly once, in the commit that changes the state, and a
scrape reads them with the metas, O(partitions). They move on the detection clock: a
warning or a deadline passing counts only when breach detection claims it.

State loss is noticed, never papered over: the generation in ``P:config`` is copied into
each partition's meta by its first commit, and the commit script refuses (a reply of its
own, raised as :class:`~models.errors.StateLost`) when the meta carries another generation,
or none although this store knew the partition had state: a Redis restarted without
persistence or flushed would otherwise take the batch as the first of an empty partition,
past a fence that is gone. :meth:`Store.load` refuses the same, and a version lower than
one this store saw (an older snapshot); :meth:`Store.check_generation` is the cheap check
a worker runs while nothing flows.

Replicas: Redis replicates asynchronously, so a commit its master acknowledged can vanish
when the master dies and a replica takes over; the batch's Kafka offsets are committed
after Redis, so it would be lost for good. With ``min_replicas`` (``DESKPULSE_REDIS_MIN_
REPLICAS``) :meth:`Store.commit` returns only once that many replicas hold the commit:
:meth:`Store.replicated` runs a sync script (is the partition still at the commit's
version or later? then a write beside it) and ``WAIT`` on one connection to the
partition's master, retried with backoff while it falls short; a commit that the sync
script finds gone was lost with its master, and the batch is folded again. Only versions
the replicas confirmed count as seen for the rollback check.

This module owns every key and script: nothing else in deskpulse reads or writes Redis but
through a :class:`Store` (breach claims and their outbox, the alert rules' state included),
and every client comes from :func:`~streams.redis_client.connect`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Generic, TypeVar, cast

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deskpulse.models.errors import StateLost
from deskpulse.models.settings import Settings
from deskpulse.streams.core import (
    SEP,
    BatchResult,
    Conversation,
    CoreConfig,
    keep_until_ms,
    restore,
)
from deskpulse.streams.redis_client import Client, check_mode

log = logging.getLogger(__name__)

#: The level steps among a bucket's fields (``channel␟queue␟priority␟bl:<status>``).
_LEVEL_MATCH = "*\x1fbl:*"
#: The agents' presence level steps among an all-groups bucket's fields (``ag:<status>``).
PRESENCE_MATCH = "ag:*"
#: Every presence field of an all-groups bucket: the steps and their time-weighted sums.
PRESENCE_FIELDS_MATCH = "ag*"
#: Fields a bucket scan looks at per call: more than a rolled-up bucket holds, so one call
#: scans it whole.
_SCAN_COUNT = 100_000

__all__ = [
    "FIX_LOST",
    "FIX_RESTART",
    "LAYOUT",
    "PRESENCE_FIELDS_MATCH",
    "PRESENCE_MATCH",
    "PartitionMeta",
    "Store",
    "text",
]

#: Version of the key layout below; state written with another one is refused at start.
#: 2: the all-groups buckets ``B:``/``R:``. 3: a ticket's timeline and claims in its
#: state, each event id stored once (docs/architecture.md, "Conversation state"). 4: a
#: ticket's share of the instance counts at the end of its state, the counts in the meta
#: (counts kept from a partition's first commit on: older state has none to start from).
#: 7: the ids of events a state keeps in no field beside it (``ids``), not in it: a batch
#: reads and writes those of its own events alone. 8: a ticket's timeline entries beside
#: its state (``tl:<id>``), the state keeping the timeline walked (its states read layout
#: 7's too: a ticket's timeline stays in its state until its next batch moves it). 9: the
#: agents a conversation's events name in its state (``crew``), the per-agent buckets
#: ``a:``/``A:`` and levels ``ag@<agent>`` (its states read layout 8's and 7's: a
#: conversation's agents count from its next events on). 10: a ticket's dimension changes
#: and its group now in its state (after ``crew``: the scripts read the last three fields
#: from the end); a moved ticket's stretches in its earlier groups in ``lx`` and ``li``
#: (states of layouts 7 to 9 read as they are). 11: the groups each commit moved in the
#: live indexes (``lgm``, and ``lgm:from``/``lgm:to`` in the meta; a store of layout 10 is
#: taken over as it is: its groups are logged from the next commit on).
LAYOUT = "11"
#: Layouts whose state this one reads (a store of layout 7 to 10 is taken over as it is).
_READS = frozenset(("7", "8", "9", "10", LAYOUT))

#: The start of every script that reads or writes several keys of one partition, on a
#: Redis Cluster (a single Redis moves no slots). While the partition's slot is being
#: migrated (``redis-cli --cluster reshard``), some of its keys are here and some on the
#: other node already: a script would read half a partition, or fail half-way through its
#: writes (a script touching a key that moved is stopped where it stands, its earlier
#: writes kept). So it refuses with ``TRYAGAIN`` before touching any key, and the caller
#: retries until the slot has moved (the client then follows ``MOVED``). An ACL user needs
#: ``cluster|nodes`` and ``cluster|keyslot`` for it.
_STEADY = """
do
  local mine = string.match(redis.call('CLUSTER', 'NODES'), '[^\\n]*myself[^\\n]*')
  local slot = redis.call('CLUSTER', 'KEYSLOT', KEYS[1])
  if mine and string.find(mine, '[' .. slot .. '-', 1, true) then
    return redis.error_reply('TRYAGAIN slot ' .. slot .. ' of the partition is moving')
  end
end
"""

# Applies one batch if the partition's generation is the store's and its version is the one
# the batch was folded against. A meta of another generation, or none although the caller
# knew the partition had state (ARGV[7] = '1'), is refused with {-1, found generation}: the
# state under the fence is gone, and applying would skip or restart numbers silently.
# ARGV: version, watermark ms, bucket cutoff s, conversation cutoff ms, then one JSON array
# of strings (one argument instead of a million keeps the client's packing cheap) with
# sections each led by its item count: offsets (topic, offset), per-topic newest event
# times (topic, ms), meta increments (field,
# delta), buckets (suffix, end s, n, (field, delta) * n), totals (field, delta),
# conversations (id, newest ms, held count, next breach check ms, '' for none or 'k' to
# leave it as it is, state JSON as a string), the ids kept beside the states
# (conversation id␟event id, ms), the timeline entries kept beside the tickets' states
# (ticket id, count, (event id, 'ms,code') * count; a count of 0 drops them), due
# tickets looked at unchanged (id, next check ms or ''), alert payloads for the outbox
# (event id, JSON), live index moves; then the store generation, whether the partition
# must have state already, the states end to end, the bucket widths (fine, roll-up), the
# earliest instant (ms) the live index moves change ('' for none), how many versions
# ``lmoved`` keeps, the stale time of a waiting chat (ms), how many versions ``hmoved``
# keeps, the groups whose totals and whose levels the batch moves (each followed by \x1d,
# or '*') and the most groups or fields an entry of ``hmoved`` names.
# Numbers travel as strings: Lua numbers are doubles and large ones would print in
# exponent form; a state travels as a string so cjson hands its bytes over untouched.
_COMMIT = """
local base = KEYS[1]
local meta, bidx, tot = base .. 'meta', base .. 'bidx', base .. 'tot'
local conv, convexp, held = base .. 'conv', base .. 'convexp', base .. 'held'
local due, out = base .. 'due', base .. 'breach_out'
local lvl, lx, infos = base .. 'lvl', base .. 'lx', base .. 'li'
local bver, lmoved = base .. 'bver', base .. 'lmoved'
-- the groups whose live reading this commit changes, for lgm: 't<group>' (open tickets)
-- or 'c<group>' (waiting chats), each once
local touched = {}
local function touch(kind, group)
  if group then touched[kind .. group] = true end
end
-- the group a live info names (opened ms, then the group's three parts)
local function info_group(info)
  return info and string.match(info, '^[^\\31]*\\31([^\\31]*\\31[^\\31]*\\31[^\\31]*)')
end
-- a conversation's (or stint's) entries in lx and li are read under the group of its live
-- info, of the kind its id starts with: the group it is read under now
local function touch_info(member)
  touch(string.sub(member, 1, 1), info_group(redis.call('HGET', infos, member)))
end
-- the earliest instant whose live index reading this commit changes (nil: none), and
-- the stretches of instants a waiting chat it expires was seen at
local moved_from = tonumber(ARGV[11])
local moved_spans = {}
local gen = redis.call('HGET', meta, 'gen')
if gen ~= ARGV[6] and (gen or ARGV[7] == '1') then
  return {-1, gen or '', 0}
end
local current = redis.call('HGET', meta, 'version') or '0'
if current ~= ARGV[1] then
  return {0, current, 0}
end
if not gen then
  redis.call('HSET', meta, 'gen', ARGV[6])
end
-- every bucket this commit writes is stamped with the generation and the version the
-- commit ends at: a reader that keeps a sum of buckets knows it by their stamps
local stamp = ARGV[6] .. ':' .. tostring(tonumber(current) + 1)
local p = cjson.decode(ARGV[5])
local i = 1
local n
-- offsets (the fence) and per-topic newest event times only ever move forward
for _, kind in ipairs({'off:', 'wm:'}) do
  n = tonumber(p[i]); i = i + 1
  for _ = 1, n do
    local field = kind .. p[i]
    if tonumber(p[i + 1]) > tonumber(redis.call('HGET', meta, field) or '-1') then
      redis.call('HSET', meta, field, p[i + 1])
    end
    i = i + 2
  end
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  redis.call('HINCRBY', meta, p[i], p[i + 1]); i = i + 2
end
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local key = base .. p[i]
  redis.call('ZADD', bidx, p[i + 1], p[i])
  redis.call('HSET', bver, p[i], stamp)
  local fields = tonumber(p[i + 2]); i = i + 3
  for _ = 1, fields do
    if redis.call('HINCRBY', key, p[i], p[i + 1]) == 0 then
      redis.call('HDEL', key, p[i])
    end
    i = i + 2
  end
end
-- the totals and levels fields this commit creates or deletes, for hmoved ('t' or 'l',
-- the name, \\29): a reader knows the fields it read, and these (a field is created when
-- its new value is the delta: a field at 0 is deleted)
local born = {}
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local value = redis.call('HINCRBY', tot, p[i], p[i + 1])
  if value == 0 then
    redis.call('HDEL', tot, p[i])
    born[#born + 1] = 't' .. p[i] .. '\\29'
  elseif value == tonumber(p[i + 1]) then
    born[#born + 1] = 't' .. p[i] .. '\\29'
  end
  i = i + 2
end
-- the running sums of the level steps (field, delta)
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local value = redis.call('HINCRBY', lvl, p[i], p[i + 1])
  if value == 0 then
    redis.call('HDEL', lvl, p[i])
    born[#born + 1] = 'l' .. p[i] .. '\\29'
  elseif value == tonumber(p[i + 1]) then
    born[#born + 1] = 'l' .. p[i] .. '\\29'
  end
  i = i + 2
end
-- the groups of the levels the expiry below steps down (each with \\29 after it)
local stepped = {}
n = tonumber(p[i]); i = i + 1
-- the states themselves follow one another in ARGV[8]; p[i + 4] is the length of each
local states, at = ARGV[8], 1
for _ = 1, n do
  local id = p[i]
  local size = tonumber(p[i + 4])
  redis.call('HSET', conv, id, string.sub(states, at, at + size - 1))
  at = at + size
  redis.call('ZADD', convexp, p[i + 1], id)
  if p[i + 2] == '0' then
    redis.call('HDEL', held, id)
  else
    redis.call('HSET', held, id, p[i + 2])
  end
  if p[i + 3] == '' then
    redis.call('ZREM', due, id)
  elseif p[i + 3] ~= 'k' then
    redis.call('ZADD', due, p[i + 3], id)
  end
  i = i + 5
end
-- the ids of events kept beside their states, by member with their event time
n = tonumber(p[i]); i = i + 1
local added = {}
for _ = 1, n do
  added[#added + 1] = p[i + 1]
  added[#added + 1] = p[i]
  i = i + 2
end
-- (unpack takes at most a few thousand values at once)
for k = 1, #added, 4000 do
  redis.call('ZADD', base .. 'ids', unpack(added, k, math.min(k + 3999, #added)))
end
-- the timeline entries kept beside their tickets' states (tl:<id>, event id -> 'ms,code'):
-- per ticket its id, its count of entries, then event id and value each; a count of 0
-- drops them (the ticket keeps its timeline whole in its state from now on)
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local key = base .. 'tl:' .. p[i]
  if p[i + 1] == '0' then redis.call('DEL', key) end
  local last = i + 1 + 2 * tonumber(p[i + 1])
  for k = i + 2, last, 8000 do
    redis.call('HSET', key, unpack(p, k, math.min(k + 7999, last)))
  end
  i = last + 1
end
-- due tickets looked at without a change of state (id, next check ms or '')
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  if p[i + 1] == '' then
    redis.call('ZREM', due, p[i])
  else
    redis.call('ZADD', due, p[i + 1], p[i])
  end
  i = i + 2
end
-- alert payloads parked until the broker acknowledges them (event id, JSON)
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', out, p[i], p[i + 1]); i = i + 2
end
-- the live indexes' moves (op, key suffix, score, member, info)
n = tonumber(p[i]); i = i + 1
for _ = 1, n do
  local op, suffix = p[i], p[i + 1]
  -- the group it moves: a group's own index, or the group of the member's live info
  -- before (and for a new info, after)
  local prefix = string.sub(suffix, 1, 3)
  if prefix == 'lo:' then
    touch('t', string.sub(suffix, 4))
  elseif prefix == 'lw:' then
    touch('c', string.sub(suffix, 4))
  else
    touch_info(p[i + 3])
  end
  if op == 'a' then
    redis.call('ZADD', base .. suffix, p[i + 2], p[i + 3])
  elseif op == 'r' then
    redis.call('ZREM', base .. suffix, p[i + 3])
  elseif op == 'i' then
    touch(string.sub(p[i + 3], 1, 1), info_group(p[i + 4]))
    redis.call('HSET', infos, p[i + 3], p[i + 4])
  else
    redis.call('HDEL', infos, p[i + 3])
  end
  i = i + 5
end
redis.call('HSET', meta, 'wm', ARGV[2])
local old = redis.call('ZRANGEBYSCORE', bidx, '-inf', ARGV[3], 'LIMIT', 0, 500)
for _, suffix in ipairs(old) do
  redis.call('DEL', base .. suffix)
  redis.call('ZREM', bidx, suffix)
  redis.call('HDEL', bver, suffix)
end
local cutoff = tonumber(ARGV[4])
-- ids of events behind the horizon: a repeat of an event that old is late, never folded
redis.call('ZREMRANGEBYSCORE', base .. 'ids', '-inf', '(' .. ARGV[4])
-- conversations that left the live indexes before the horizon are no reader's concern
local gone = redis.call('ZRANGEBYSCORE', lx, '-inf', '(' .. ARGV[4], 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do
  touch_info(id)
  redis.call('ZREM', lx, id)
  redis.call('HDEL', infos, id)
end
-- a level step down at ms in the levels and the buckets of every level (the same rule as
-- a batch's: buckets older than the horizon are gone)
local function step_down(group, field, ms)
  local name = group .. '\\31' .. field
  local value = redis.call('HINCRBY', lvl, name, -1)
  if value == 0 then redis.call('HDEL', lvl, name) end
  if value == 0 or value == -1 then born[#born + 1] = 'l' .. name .. '\\29' end
  stepped[#stepped + 1] = group .. '\\29'
  if ms < cutoff then return end
  local width, rollup = tonumber(ARGV[9]), tonumber(ARGV[10])
  local fine = math.floor(ms / 1000 / width) * width
  local coarse = fine - fine % rollup
  for _, b in ipairs({{'b:', fine, width, name}, {'r:', coarse, rollup, name},
                      {'B:', fine, width, field}, {'R:', coarse, rollup, field}}) do
    local suffix = b[1] .. string.format('%d', b[2])
    if redis.call('HINCRBY', base .. suffix, b[4], -1) == 0 then
      redis.call('HDEL', base .. suffix, b[4])
    end
    redis.call('ZADD', bidx, string.format('%d', b[2] + b[3]), suffix)
    redis.call('HSET', bver, suffix, stamp)
  end
end
local orphaned, dropped = 0, 0
-- an expired ticket's SLA instances leave the partition's instance counts: its state ends
-- in its share of them, one digit per metric (1 running, 2 running and at risk), and in
-- the thousands its live digit (1-4 open now in status new, open, pending, hold; 5 a
-- chat still waiting): LIVE_DIGITS in streams/core.py
local counted = {0, 0, 0, 0, 0, 0}
local statuses = {'n', 'o', 'p', 'h'}
local retention = tonumber(ARGV[2]) - cutoff
local expired = redis.call('ZRANGEBYSCORE', convexp, '-inf', '(' .. ARGV[4], 'WITHSCORES',
                           'LIMIT', 0, 2000)
for j = 1, #expired, 2 do
  local id = expired[j]
  local waiting = tonumber(redis.call('HGET', held, id) or '0')
  orphaned = orphaned + waiting
  redis.call('ZREM', lx, id)
  local kept_info = redis.call('HGET', infos, id)
  touch(string.sub(id, 1, 1), info_group(kept_info))
  redis.call('HDEL', infos, id)
  local state = redis.call('HGET', conv, id)
  local share = state and tonumber(string.match(string.sub(state, -10), ',(%d+)%]$'))
  if share and share > 0 then
    local live = math.floor(share / 1000)
    share = share % 1000
    for k = 1, 3 do
      local digit = share % 10
      share = (share - digit) / 10
      if digit > 0 then counted[k] = counted[k] + 1 end
      if digit == 2 then counted[k + 3] = counted[k + 3] + 1 end
    end
    if live > 0 then
      local decoded = cjson.decode(state)
      -- the group now: a ticket whose dimensions changed keeps it thirteenth, three
      -- strings (a state of layout 9 has its walk there, of layout 7 or 8 a number)
      local now = decoded[13]
      if type(now) ~= 'table' or type(now[1]) ~= 'string' then now = decoded[3] end
      local group = table.concat(now, '\\31')
      if live == 5 then
        -- a reader of an instant it was waiting at (from its request, for the stale
        -- time) sees it go
        local requested = tonumber(redis.call('ZSCORE', base .. 'lw:' .. group, id) or '0')
        moved_spans[#moved_spans + 1] = {requested, requested + tonumber(ARGV[13])}
        touch('c', group)
        redis.call('ZREM', base .. 'lw:' .. group, id)
      else
        -- an open ticket at its maximum age: it leaves the backlog at the instant its
        -- state was kept until (its score plus the retention), remembered by its live
        -- info for readers of the instants before (every earlier stretch out of the
        -- backlog is behind the horizon by then)
        local left = tonumber(expired[j + 1]) + retention
        if not moved_from or left < moved_from then moved_from = left end
        step_down(group, 'bl:' .. statuses[live], left)
        touch('t', group)
        redis.call('ZREM', base .. 'lo:' .. group, id)
        redis.call('ZADD', lx, string.format('%d', left), id)
        -- with the stretches it was out of the backlog (or in an earlier group) before
        local gaps = kept_info and string.match(
          kept_info, '^[^\\31]*\\31[^\\31]*\\31[^\\31]*\\31[^\\31]*\\31(.*)$') or ''
        redis.call('HSET', infos, id, string.format('%d', decoded[2][1]) .. '\\31' .. group
                   .. '\\31' .. gaps)
        dropped = dropped + 1
      end
    end
  end
  redis.call('HDEL', conv, id)
  redis.call('HDEL', held, id)
  redis.call('ZREM', convexp, id)
  redis.call('ZREM', due, id)
  if string.sub(id, 1, 2) == 't:' then
    redis.call('DEL', base .. 'tl:' .. id)
  end
end
if orphaned > 0 then
  redis.call('HINCRBY', meta, 'orphaned', orphaned)
  redis.call('HINCRBY', meta, 'held', -orphaned)
end
if dropped > 0 then
  redis.call('HINCRBY', meta, 'expired', dropped)
end
-- the digits' order and the fields: PLACES, RUNNING_FIELDS, AT_RISK_FIELDS in streams/core.py
for k, metric in ipairs({'first_response', 'next_response', 'resolution'}) do
  if counted[k] > 0 then
    redis.call('HINCRBY', meta, 'sla_running:' .. metric, -counted[k])
  end
  if counted[k + 3] > 0 then
    redis.call('HINCRBY', meta, 'sla_at_risk:' .. metric, -counted[k + 3])
  end
end
local version = redis.call('HINCRBY', meta, 'version', 1)
if moved_from then
  moved_spans[#moved_spans + 1] = {moved_from}
end
for k, span in ipairs(moved_spans) do
  local to = span[2] and string.format('%d', span[2]) or ''
  redis.call('ZADD', lmoved, version, version .. ':' .. k .. ':' .. string.format('%d', span[1])
             .. ':' .. to)
end
if #moved_spans > 0 then
  redis.call('ZREMRANGEBYSCORE', lmoved, '-inf', version - tonumber(ARGV[12]))
end
-- the groups moved, each scored by the last version that moved it (lgm), for the versions
-- lmoved covers; lgm:from is where an unbroken run of commits that logged them starts
-- (a commit of a deskpulse that logs none leaves it behind) and lgm:to the last of them
local lgm, logged = base .. 'lgm', {}
for member in pairs(touched) do
  logged[#logged + 1] = version
  logged[#logged + 1] = member
end
for k = 1, #logged, 4000 do
  redis.call('ZADD', lgm, unpack(logged, k, math.min(k + 3999, #logged)))
end
redis.call('ZREMRANGEBYSCORE', lgm, '-inf', version - tonumber(ARGV[12]))
if redis.call('HGET', meta, 'lgm:to') ~= current then
  redis.call('HSET', meta, 'lgm:from', version)
end
redis.call('HSET', meta, 'lgm:to', version)
-- one entry per commit, scored by its version: the groups whose totals and whose levels
-- it moved (ARGV[15], ARGV[16], each group followed by \\29, joined by the caller) and the
-- fields it created or deleted; '*' for a part of more than ARGV[17] of them (a reader
-- reads that hash whole). What is older than the versions kept goes.
local tot_part, lvl_part, born_part = ARGV[15], ARGV[16], table.concat(born)
if #born > tonumber(ARGV[17]) then
  tot_part, lvl_part, born_part = '*', '*', ''
elseif #stepped > 0 and lvl_part ~= '*' then
  lvl_part = lvl_part .. table.concat(stepped)
end
local hmoved = base .. 'hmoved'
redis.call('ZADD', hmoved, version,
           '#' .. version .. '\\30' .. tot_part .. '\\30' .. lvl_part .. '\\30' .. born_part)
redis.call('ZREMRANGEBYSCORE', hmoved, '-inf', version - tonumber(ARGV[14]))
return {1, tostring(version), orphaned}
"""


#: A partition's meta (as HGETALL's flat list) and the states of the conversations named in
#: ARGV[1] (a JSON array), nil for one with none; then, if ARGV[2] (a JSON array of
#: conversation index, event id, ...) asks, the event ids it names that are kept beside
#: their stored conversation's state, each after its conversation's index. One argument
#: for thousands of ids: the client encodes each argument of a command in Python, which
#: cost a replay more than the read itself (unpack takes at most a few thousand values at
#: once, hence the slices).
_LOAD = """
local base = KEYS[1]
local reply = {redis.call('HGETALL', base .. 'meta')}
local ids = cjson.decode(ARGV[1])
local first = #reply
for k = 1, #ids, 4000 do
  local part = redis.call('HMGET', base .. 'conv', unpack(ids, k, math.min(k + 3999, #ids)))
  for j = 1, #part do
    reply[#reply + 1] = part[j]
  end
end
local asked = cjson.decode(ARGV[2])
local members, owners, has = {}, {}, {}
for k = 1, #asked, 2 do
  local j = asked[k]
  -- only a stored state whose count of ids beside it (next to last) is not 0 has any
  if has[j] == nil then
    local state = reply[first + j]
    has[j] = state and string.match(string.sub(state, -24), ',[1-9]%d*,%d+%]$') ~= nil
  end
  if has[j] then
    members[#members + 1] = ids[j] .. '\\31' .. asked[k + 1]
    owners[#owners + 1] = k
  end
end
for k = 1, #members, 4000 do
  local scores = redis.call('ZMSCORE', base .. 'ids', unpack(members, k,
                            math.min(k + 3999, #members)))
  for m = 1, #scores do
    if scores[m] then
      local at = owners[k + m - 1]
      reply[#reply + 1] = asked[at]
      reply[#reply + 1] = asked[at + 1]
    end
  end
end
-- and those among a ticket's timeline entries kept beside its state: only a state whose
-- count of them (third from last) is not 0 has any
local kept, wanted, order = {}, {}, {}
for k = 1, #asked, 2 do
  local j = asked[k]
  if kept[j] == nil then
    local state = reply[first + j]
    kept[j] = state and string.match(string.sub(state, -48), ',[1-9]%d*,%d+,%d+%]$') ~= nil
  end
  if kept[j] then
    if not wanted[j] then
      wanted[j] = {}
      order[#order + 1] = j
    end
    wanted[j][#wanted[j] + 1] = asked[k + 1]
  end
end
for _, j in ipairs(order) do
  local names = wanted[j]
  for k = 1, #names, 4000 do
    local found = redis.call('HMGET', base .. 'tl:' .. ids[j], unpack(names, k,
                             math.min(k + 3999, #names)))
    for m = 1, #found do
      if found[m] then
        reply[#reply + 1] = j
        reply[#reply + 1] = names[k + m - 1]
      end
    end
  end
end
return reply
"""


#: The earliest creation of the tickets open, and request of the chats waiting, at each of
#: several instants, per group, in one partition (streams/query.py ``read_live`` and the
#: series). KEYS[1]: the partition's key base. ARGV: the instants (ascending ms, a JSON
#: array), the stale time (ms), the ticket groups and the chat groups each mapped to the
#: (1-based) indexes of the instants that ask for them (JSON), and per instant '1' when
#: conversations may have left the indexes since it (the partition's newest event is not
#: before it). Returns the partition's version and generation, then instant index,
#: ``t<group>`` or ``c<group>``, ms, ... flat.
#: A ticket open now was open at an instant unless it has a live info whose stretches out
#: of the backlog hold the instant; a chat in ``lw`` has no outcome at all; one that left
#: (``lx``, scored by the instant it left) was open or waiting at an instant if it opened
#: before it, left at or after it, and was not out of the backlog then. Each group's open
#: tickets are paged through once for all the instants that ask for it, and the
#: conversations that left since the first past instant are read once, each offered to the
#: instants it was open at.
#: A partition's ``tot`` or ``lvl`` hash (KEYS[1] the partition's base, ARGV[4] the hash's
#: name, ARGV[3] its part of an ``hmoved`` entry, 1 or 2, and its letter among the fields
#: created or deleted) as of the version a reader kept it at (ARGV[1], '' for none, with
#: the generation ARGV[2]): ``{version, generation, 'd', field, value, ...}`` with the fields
#: of the groups moved since (the groups' fields are named by the field names ARGV[5], a
#: JSON array, the reader knows of; one the hash does not hold is left out unless it was
#: created or deleted since: it was not there at the reader's version either) and those
#: created or deleted since (a value false: no such field), when ``hmoved`` holds an
#: entry for every version since, none of them ``*`` for the hash, and the version is
#: within ARGV[6] of the partition's; else ``{version, generation, 'f', field, value,
#: ...}``, the hash whole. One script: the fields and the version they hold at are read
#: in one step.
_HASH_SINCE = """
local base = KEYS[1]
local meta = redis.call('HMGET', base .. 'meta', 'version', 'gen')
local version, gen = tonumber(meta[1] or '0'), meta[2] or ''
local since = tonumber(ARGV[1])
local reply = {tostring(version), gen}
-- the names in s, each followed by sep (a plain character)
local function names(s, sep, into, each)
  local at = 1
  while at <= #s do
    local j = string.find(s, sep, at, true)
    each(into, string.sub(s, at, j - 1))
    at = j + 1
  end
end
if since and gen == ARGV[2] and since <= version and version - since < tonumber(ARGV[6]) then
  reply[3] = 'd'
  if since == version then return reply end
  local entries = redis.call('ZRANGEBYSCORE', base .. 'hmoved', '(' .. since, '+inf')
  -- a commit of a deskpulse that logs nothing leaves a version without its entry
  local whole = #entries ~= version - since
  local part, letter = tonumber(ARGV[3]), ARGV[3] == '1' and 't' or 'l'
  local groups, fields, logged = {}, {}, {}
  for _, entry in ipairs(entries) do
    if whole then break end
    -- '#<version>\\30<tot groups>\\30<lvl groups>\\30<fields created or deleted>'
    local parts = {}
    names(entry .. '\\30', '\\30', parts, function(t, v) t[#t + 1] = v end)
    if parts[1 + part] == '*' then
      whole = true
    else
      names(parts[1 + part], '\\29', groups, function(t, v) t[v] = true end)
      names(parts[4], '\\29', fields, function(t, v)
        if string.sub(v, 1, 1) == letter then
          t[string.sub(v, 2)] = true
          logged[string.sub(v, 2)] = true
        end
      end)
    end
  end
  if not whole then
    local known = cjson.decode(ARGV[5])
    for group in pairs(groups) do
      for _, field in ipairs(known) do
        fields[group == '' and field or group .. '\\31' .. field] = true
      end
    end
    local asked = {}
    for name in pairs(fields) do asked[#asked + 1] = name end
    for k = 1, #asked, 4000 do
      local last = math.min(k + 3999, #asked)
      local values = redis.call('HMGET', base .. ARGV[4], unpack(asked, k, last))
      for j = 1, last - k + 1 do
        -- a moved group's field the hash does not hold, neither created nor deleted
        -- since: the reader does not hold it either (most of the names asked)
        if values[j] or logged[asked[k + j - 1]] then
          reply[#reply + 1] = asked[k + j - 1]
          reply[#reply + 1] = values[j]
        end
      end
    end
    return reply
  end
end
reply[3] = 'f'
local all = redis.call('HGETALL', base .. ARGV[4])
for k = 1, #all do
  reply[#reply + 1] = all[k]
end
return reply
"""


_EARLIEST_AT = """
local base = KEYS[1]
local instants = cjson.decode(ARGV[1])
local stale_ms = tonumber(ARGV[2])
local ticket_wants, chat_wants = cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local past = cjson.decode(ARGV[5])
local infos = base .. 'li'
-- the version and generation read at, which the caller keeps the answers with, and the
-- newest event time then (an answer at an instant after it holds at any later one but
-- for the chats gone stale in between: the caller may keep it for the next instant)
local read_at = redis.call('HMGET', base .. 'meta', 'version', 'gen', 'wm')
local best = {}
local function offer(i, key, ms)
  local per = best[i]
  if not per then per = {}; best[i] = per end
  local now = per[key]
  if not now or ms < now then per[key] = ms end
end
local function parse(info)
  return string.match(info, '^([^\\31]*)\\31([^\\31]*\\31[^\\31]*\\31[^\\31]*)\\31(.*)$')
end
local function counted(gaps, at)
  local from = nil
  for number in string.gmatch(gaps or '', '[^,]+') do
    local value = tonumber(number)
    if from == nil then
      from = value
    else
      if at > from and at <= value then return false end
      from = nil
    end
  end
  return true
end
-- a group's open tickets, oldest first, once for all the instants that ask for it: each
-- instant takes the first created before it that was in the backlog at it
for group, wants in pairs(ticket_wants) do
  local pending = wants
  local key, offset = base .. 'lo:' .. group, 0
  local bound = '(' .. string.format('%d', instants[wants[#wants]])
  while #pending > 0 do
    local page = redis.call('ZRANGEBYSCORE', key, '-inf', bound, 'WITHSCORES',
                            'LIMIT', offset, 32)
    if #page == 0 then break end
    for j = 1, #page, 2 do
      local created = tonumber(page[j + 1])
      local info = redis.call('HGET', infos, page[j])
      local gaps = nil
      if info then
        local _, _, stretches = parse(info)
        gaps = stretches
      end
      local rest = {}
      for _, i in ipairs(pending) do
        local at = instants[i]
        if created < at and counted(gaps, at) then
          offer(i, 't' .. group, created)
        else
          rest[#rest + 1] = i
        end
      end
      pending = rest
      if #pending == 0 then break end
    end
    offset = offset + 32
  end
end
for group, wants in pairs(chat_wants) do
  for _, i in ipairs(wants) do
    local at = instants[i]
    local page = redis.call('ZRANGEBYSCORE', base .. 'lw:' .. group,
                            '(' .. string.format('%d', at - stale_ms),
                            '(' .. string.format('%d', at), 'WITHSCORES', 'LIMIT', 0, 1)
    if #page > 0 then offer(i, 'c' .. group, tonumber(page[2])) end
  end
end
local first_past = nil
for i, at in ipairs(instants) do
  if past[i] == '1' then first_past = at; break end
end
if first_past then
  local left = redis.call('ZRANGEBYSCORE', base .. 'lx', string.format('%d', first_past),
                          '+inf', 'WITHSCORES')
  for j = 1, #left, 2 do
    local info = redis.call('HGET', infos, left[j])
    if info then
      local opened, group, gaps = parse(info)
      opened = tonumber(opened)
      local gone = tonumber(left[j + 1])
      if opened then
        local key = string.sub(left[j], 1, 1) .. group
        -- the instants it was open at, (opened, gone]: the first after opened by bisection
        local low, high = 1, #instants + 1
        while low < high do
          local middle = math.floor((low + high) / 2)
          if instants[middle] > opened then high = middle else low = middle + 1 end
        end
        for i = low, #instants do
          local at = instants[i]
          if at > gone then break end
          if past[i] == '1' and counted(gaps, at) then offer(i, key, opened) end
        end
      end
    end
  end
end
local reply = {read_at[1] or '0', read_at[2] or '', read_at[3] or '0'}
for i, per in pairs(best) do
  for key, ms in pairs(per) do
    reply[#reply + 1] = i
    reply[#reply + 1] = key
    reply[#reply + 1] = string.format('%d', ms)
  end
end
return reply
"""


#: The replication sync point of a partition: whether its meta is still at ``ARGV[1]`` or
#: later (0: that commit was lost, as when a master died before a replica had it), and a
#: write beside it (``sync``), so a ``WAIT`` that follows on the same connection counts the
#: replicas that hold everything up to that commit.
_SYNC = """
local version = tonumber(redis.call('HGET', KEYS[1] .. 'meta', 'version') or '0')
if version < tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1] .. 'sync', ARGV[1])
return 1
"""

#: What an operator does when state was lost (the one line a worker logs ends with it).
FIX_LOST = (
    "rebuild it from the retained input topics with `deskpulse replay`, or accept starting "
    "empty with `deskpulse state reset --yes`; then restart the worker "
    "(README: runbook-deskpulsestatelost)"
)
#: ... and when the state is whole but was started anew under a running worker.
FIX_RESTART = (
    "restart the worker to take up the new state, after `deskpulse replay` if it is "
    "not rebuilt yet (README: runbook-deskpulsestatelost)"
)

#: Reads one partition's buckets with their stamps at one instant (what a transaction of
#: HMGET and HGETALLs would, which a Redis Cluster client runs a thread and an event loop
#: per command for). KEYS: the partition's ``bver`` key, then its bucket keys, one per
#: suffix of ARGV; ARGV: the bucket suffixes. Returns the stamps (a list, ``false`` for a
#: bucket without one), then each bucket's fields flat (HGETALL's reply).
_READ_STAMPED = """
local row = {}
for i = 1, #ARGV do
  row[i] = redis.call('HGET', KEYS[1], ARGV[i])
end
local reply = {row}
for i = 2, #KEYS do
  reply[i] = redis.call('HGETALL', KEYS[i])
end
return reply
"""

#: Sets the meta of a partition that has no state yet to start at given offsets (what
#: ``deskpulse state reset`` accepts): only under this generation, never over state.
_START_AT = """
local meta = KEYS[1]
local gen = redis.call('HGET', meta, 'gen')
if gen and gen ~= ARGV[1] then
  return 0
end
if redis.call('HEXISTS', meta, 'version') == 1 then
  return 0
end
redis.call('HSET', meta, 'gen', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', meta, 'off:' .. ARGV[i], ARGV[i + 1])
end
return 1
"""

#: Writes the generation into a meta a deskpulse without generations left (adoption).
# Creates the config of a new state in one step (bucket sizes, layout, generation), so a
# process stopped half-way cannot leave a config that later reads as another layout.
# KEYS: config; ARGV: bucket s, roll-up s, layout, generation. Returns the config's fields.
_CREATE_CONFIG = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'bucket_seconds', ARGV[1], 'rollup_seconds', ARGV[2],
             'layout', ARGV[3], 'generation', ARGV[4])
end
return redis.call('HGETALL', KEYS[1])
"""

_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSETNX', KEYS[1], 'gen', ARGV[1])
end
return 0
"""


def _node_of(redis: Client, key: str) -> dict[str, Any]:
    """How to send a keyless command (``WAIT``) to the node that serves ``key``: on a
    cluster the slot's master, on one Redis nothing to say."""
    if isinstance(redis, RedisCluster):
        return {"target_nodes": redis.get_node_from_key(key)}
    return {}


#: Characters SCAN's MATCH treats as a pattern.
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@dataclass(frozen=True)
class PartitionMeta:
    """What a batch is folded against: the version to check, watermark and offsets, and
    (``known``) per conversation the ids among the batch's events kept beside its state."""

    version: str
    watermark_ms: int
    offsets: dict[str, int]
    counters: dict[str, int]
    topic_watermarks: dict[str, int] = field(default_factory=dict)
    known: dict[str, set[str]] = field(default_factory=dict)


def text(value: bytes | str) -> str:
    """A Redis reply as ``str`` (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


#: fields of settled window sums a store keeps at most, over every window, grouping and
#: instant it reads (a 24 h window by channel, queue and priority over 171 groups has
#: 160,000; about 100 bytes each)
SETTLED_FIELDS_KEPT = 500_000
#: versions of a partition its ``lmoved`` log covers: an answer of :meth:`Store.earliest_at`
#: kept from an older version is read again (a live worker commits a partition a few
#: times a second at most: minutes of traffic, and a board asks every minute). At most
#: that many entries of about 30 bytes.
MOVES_KEPT = 2_000
#: versions of a partition its ``hmoved`` log covers: a reader of the totals or the levels
#: that kept them from an older version reads them whole again. A refresh comes every 5 s;
#: a live worker commits a partition a few times a second (a reader of the refresh's
#: pace is a few dozen versions behind). An entry names the groups a commit moved: a live
#: batch's few dozen, about 30 bytes each.
HASH_MOVES_KEPT = 500
#: the most groups (or fields created or deleted) an ``hmoved`` entry names: a commit that
#: moves more (a replay's batches of thousands of events) logs ``*``, and a reader reads the
#: hash whole; an entry is at most about 30 KB, the log some 15 MB per partition at worst
HASH_MOVES_NAMED = 1_000


def _moved_groups(items: Sequence[tuple[str, int]]) -> str:
    """The groups (a stored name's part before its field) of the totals or levels a commit
    moves, each followed by ``\x1d``, for ``hmoved``; ``*`` for too many."""
    groups = {name.rpartition(SEP)[0] for name, _ in items}
    if len(groups) > HASH_MOVES_NAMED:
        return "*"
    return "".join(group + "\x1d" for group in groups)


#: answers of one partition at one instant :meth:`Store.earliest_at` keeps at most (a
#: board's series of 24 points over 4 partitions is 96)
EARLIEST_KEPT = 20_000
#: and the groups they name at most, asked and found, over all answers: an answer is
#: kept under the groups asked, and a refresh over thousands of groups asks a set a little
#: different from the last one's at every pass (groups open or waiting come and go), each
#: answer some 100 bytes a group (a refresh over 6,000 groups and 4 partitions names some
#: 35,000: a few refreshes' worth is kept)
EARLIEST_GROUPS_KEPT = 200_000

#: buckets whose level steps :meth:`Store.sum_level_steps` keeps at most (a day of
#: roll-ups over 12 partitions is 288; a few hundred fields each at most)
LEVEL_BUCKETS_KEPT = 5_000

_EarliestKey = tuple[int, int, tuple[str, ...], tuple[str, ...], int]
_Earliest = tuple[str, int, dict[tuple[str, str], int]]


def _earliest_weight(key: _EarliestKey, answer: _Earliest) -> int:
    """The groups a kept answer of :meth:`Store.earliest_at` names, asked and found."""
    return len(key[2]) + len(key[3]) + len(answer[2])


def _settled(
    suffixes: Sequence[str], newest_s: int, fine_cut_s: int, rollup_s: int
) -> tuple[str, ...]:
    """The buckets of a set of bucket suffixes whose sum a reader keeps: the fine buckets
    that start before ``fine_cut_s`` (:func:`_fine_cut`), and the roll-ups that start
    before ``newest_s``, the newest roll-up a read asks for, or end by ``fine_cut_s``; the
    two newest fine buckets, and the newest roll-up unless fine buckets follow it, are
    where the traffic writes. A series' windows of one roll-up each are kept but the
    newest."""
    kept = []
    for suffix in dict.fromkeys(suffixes):
        if suffix[:2] not in _BUCKET_KINDS:
            continue  # not a time bucket (the levels)
        start = int(suffix[2:])
        if suffix[:2] in _ROLLUP_KINDS:
            settled = start < newest_s or start + rollup_s <= fine_cut_s
        else:
            settled = start < fine_cut_s
        if settled:
            kept.append((suffix[0] in "bBa", start, suffix))
    return tuple(suffix for _, _, suffix in sorted(kept))


#: the separator of a stored name as a reply without decoding holds it
_SEP_BYTES = SEP.encode()

#: the key suffix prefixes of the time buckets: fine and roll-up, by group and over all
#: (and per agent, ``a:``/``A:``)
_BUCKET_KINDS = frozenset({"b:", "r:", "B:", "R:", "a:", "A:"})
_ROLLUP_KINDS = ("r:", "R:", "A:")


def _fine_cut(sets: Sequence[Sequence[str]]) -> int:
    """The start of the second newest fine bucket any of ``sets`` names (0: fewer than
    two): the fine buckets before it are settled, the two newest are where the traffic
    writes (an event a few seconds late lands in the one before the newest)."""
    starts = sorted(
        {int(s[2:]) for suffixes in sets for s in suffixes if s[:2] in ("b:", "B:", "a:")}
    )
    return starts[-2] if len(starts) >= 2 else 0


def _span(suffixes: Sequence[str], config: CoreConfig) -> tuple[str, int]:
    """What the same window read at another time shares: its kind of buckets (by group
    or over all) and its width, first bucket's start to last bucket's end."""
    bounds = [
        (start, start + (config.rollup_seconds if s[0] in "rRA" else config.bucket_seconds))
        for s in suffixes
        if s[:2] in _BUCKET_KINDS
        for start in (int(s[2:]),)
    ]
    first = suffixes[0][0] if suffixes else ""
    kind = "grouped" if first in "br" else "agents" if first in "aA" else "all"
    return kind, (
        max(end for _, end in bounds) - min(start for start, _ in bounds)
    ) if bounds else 0


def _cheaper(
    left: Sequence[str], entered: Sequence[str], kept: Sequence[str], config: CoreConfig
) -> bool:
    """Whether moving a kept sum along by the buckets that ``left`` and ``entered`` reads
    less than reading ``kept`` afresh: fewer buckets, or fewer bucket-widths of time (a
    roll-up weighs as many fine buckets as it spans). A day's window ending on the hour
    is all roll-ups; the one ending a minute after it (or before) trades two of them for
    sixty fine buckets, a fraction of what the roll-ups hold."""
    if len(left) + len(entered) < len(kept):
        return True
    rollup = config.rollup_seconds // config.bucket_seconds

    def weight(suffixes: Sequence[str]) -> int:
        return sum(rollup if s[:2] in _ROLLUP_KINDS else 1 for s in suffixes)

    return weight(left) + weight(entered) < weight(kept)


def _newest_rollup(sets: Sequence[Sequence[str]]) -> int:
    """The start of the newest roll-up any of ``sets`` names (0: none)."""
    return max(
        (int(s[2:]) for suffixes in sets for s in suffixes if s[:2] in _ROLLUP_KINDS), default=0
    )


def _merge(
    replies: Sequence[Mapping[bytes | str, bytes | str] | None],
    unique: Sequence[str],
    sets: Sequence[Sequence[str]],
) -> list[dict[bytes | str, int]]:
    """The ``HGETALL`` replies of ``unique`` suffixes, partition after partition, summed
    per set of suffixes (raw field names: decoded once by the caller)."""
    # Sums are keyed by the raw field names: a 24 h read adds up hundreds of thousands of
    # fields but only thousands of distinct ones.
    merged: list[dict[bytes | str, int]] = [{} for _ in sets]
    # a bucket in one set is added straight into it; one shared by several is summed
    # once over the partitions, then added to each
    owners: dict[str, list[dict[bytes | str, int]]] = {suffix: [] for suffix in unique}
    for suffixes, total in zip(sets, merged, strict=True):
        for suffix in dict.fromkeys(suffixes):
            owners[suffix].append(total)
    shared: dict[str, dict[bytes | str, int]] = {}
    for i, reply in enumerate(replies):
        if not reply:
            continue
        suffix = unique[i % len(unique)]
        targets = owners[suffix]
        if not targets:
            continue
        target = targets[0] if len(targets) == 1 else shared.setdefault(suffix, {})
        get = target.get
        for name, value in reply.items():
            target[name] = get(name, 0) + int(value)
    for suffix, bucket in shared.items():
        for total in owners[suffix]:
            get = total.get
            for name, count in bucket.items():
                total[name] = get(name, 0) + count
    return merged


#: fields of the newest buckets (those a window's settled sum leaves out) a store keeps at
#: most, split by group (:meth:`Store.bucket_parts_by_group`): the two newest fine buckets
#: and roll-up of a few partitions at 200 events/s over 6,000 groups hold some 100,000
FRESH_FIELDS_KEPT = 400_000

#: a bucket of one partition: ``(partition, key suffix)``
FreshKey = tuple[int, str]
#: a bucket's fields split at their group: the part of a stored name before its last
#: separator (a ``channel␟queue␟priority`` key, an agent; none for the all-groups buckets)
#: -> the field after it -> value
FreshBucket = dict[str, dict[str, int]]


def _change_items(
    change: Mapping[str, int], entered: Sequence[tuple[FreshKey, FreshBucket]]
) -> Iterator[tuple[str, int]]:
    """A settled sum's move (:meth:`Store.take_move`) field by field: ``change``'s, then the
    entered buckets' under their stored names (interned, as read ones are)."""
    yield from change.items()
    intern = sys.intern
    for _, bucket in entered:
        for group, fields in bucket.items():
            head = group + SEP if group else ""
            for name, value in fields.items():
                yield intern(head + name), value


def _split_bucket(reply: Mapping[bytes | str, bytes | str]) -> FreshBucket:
    """An ``HGETALL`` reply of a bucket split at its groups (names decoded and interned:
    thousands of groups hold the same few hundred fields)."""
    intern = sys.intern
    groups: FreshBucket = {}
    for raw, value in reply.items():
        group, _, field = text(raw).rpartition(SEP)
        fields = groups.get(group)
        if fields is None:
            fields = groups[intern(group)] = {}
        fields[intern(field)] = int(value)
    return groups


#: a key :class:`SortedKeys` orders: a group's name, or its dimensions' values
_K = TypeVar("_K", str, tuple[str, ...])


class SortedKeys(Generic[_K]):
    """The sorted order of a set of keys, kept: asked for the same set again it is the
    same tuple, for a set that differs from the last in a few keys it is that order with
    them taken out and put in (a read asks the groups with something open, or its groups,
    each time: thousands of names, mostly the same, sorted afresh in 5 - 10 ms)."""

    __slots__ = ("_keys", "_order")

    #: past this share of keys changed, sorting the new set whole is as cheap
    REBUILD_SHARE = 0.25

    def __init__(self) -> None:
        self._keys: frozenset[_K] = frozenset()
        self._order: tuple[_K, ...] = ()

    def of(self, keys: Iterable[_K]) -> tuple[_K, ...]:
        given = keys if isinstance(keys, set | frozenset) else set(keys)
        if given == self._keys:
            return self._order
        gone, new = self._keys - given, given - self._keys
        if len(gone) + len(new) > self.REBUILD_SHARE * len(given):
            order = sorted(given)
        else:
            order = [key for key in self._order if key not in gone] if gone else list(self._order)
            for key in new:
                insort(order, key)
        self._keys, self._order = frozenset(given), tuple(order)
        return self._order


class _KeptHash:
    """A partition's ``tot`` (by group: stored group -> field -> value) or ``lvl`` (field
    -> value) as a reader last read it, at ``version`` of ``generation``."""

    __slots__ = ("fields", "generation", "groups", "version")

    def __init__(self, generation: str, version: int) -> None:
        self.generation = generation
        self.version = version
        self.fields: dict[str, int] = {}
        self.groups: dict[str, dict[str, int]] = {}

    def set(self, name: str, value: int | None, grouped: bool) -> None:
        """A field's value as read (``None``: gone from the hash)."""
        if not grouped:
            if value is None:
                self.fields.pop(name, None)
            else:
                self.fields[name] = value
            return
        stored, _, field = name.rpartition(SEP)
        group = self.groups.get(stored)
        if value is None:
            if group is not None:
                group.pop(field, None)
                if not group:
                    del self.groups[stored]
        elif group is None:
            self.groups[stored] = {sys.intern(field): value}
        else:
            group[sys.intern(field)] = value

    def has(self, name: str, grouped: bool) -> bool:
        """Whether the field was there as last read."""
        if not grouped:
            return name in self.fields
        stored, _, field = name.rpartition(SEP)
        return field in self.groups.get(stored, ())

    def names(self) -> list[str]:
        """Every field's name as stored."""
        grouped = [g + SEP + f for g, fields in self.groups.items() for f in fields]
        return grouped + list(self.fields)


@dataclass(frozen=True)
class _Moved:
    """What :meth:`Store._take_moved` applied: each partition's kept ``(generation,
    version)`` before and after, and the names of the fields that moved."""

    before: dict[int, tuple[str, int] | None]
    after: dict[int, tuple[str, int] | None]
    names: set[str]


class Store:
    """KPI state of all partitions under one key prefix."""

    def __init__(
        self,
        redis: Client,
        prefix: str,
        config: CoreConfig,
        *,
        min_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.config = config
        #: replicas a commit must reach before :meth:`commit` returns (``WAIT``)
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        #: ``WAIT`` replies that fell short of :attr:`min_replicas` so far (each retried)
        self.replication_short = 0
        steady = _STEADY if isinstance(redis, RedisCluster) else ""
        self._commit = redis.register_script(steady + _COMMIT)
        self._load = redis.register_script(steady + _LOAD)
        self._earliest_at = redis.register_script(steady + _EARLIEST_AT)
        self._hash_since = redis.register_script(steady + _HASH_SINCE)
        self._sync = redis.register_script(steady + _SYNC)
        self._read_stamped_script = redis.register_script(steady + _READ_STAMPED)
        self._start_at = redis.register_script(_START_AT)
        self._adopt = redis.register_script(_ADOPT)
        self._create_config = redis.register_script(_CREATE_CONFIG)
        #: partitions this process has listed in ``P:partitions``
        self._known_partitions: set[int] = set()
        #: the generation of the state, once :meth:`check_config` has read or made it
        self.generation: str | None = None
        #: partitions known to have state in this generation: their meta must carry it
        self._had_state: set[int] = set()
        #: the highest version seen per partition: a lower one is an older snapshot
        self._versions: dict[int, int] = {}
        #: (partitions, settled roll-ups) -> (their stamps, their summed fields), least
        #: recently read first (:meth:`sum_buckets`)
        self._settled_sums: OrderedDict[
            tuple[tuple[int, ...], tuple[str, ...]],
            tuple[tuple[bytes | None, ...], dict[str, int]],
        ] = OrderedDict()
        self._settled_fields = 0
        #: (partitions, kind, width) -> the key of the settled sum that window had when
        #: last read (:meth:`sum_buckets` moves a sliding window's sum along)
        self._sliding: dict[
            tuple[tuple[int, ...], str, int], tuple[tuple[int, ...], tuple[str, ...]]
        ] = {}
        #: (partitions, kind, width) -> the last settled sum of the agent or group buckets
        #: a slide made, the sum it moved along and by how much: the change read, and the
        #: entering buckets held split (:meth:`take_move`)
        self._moves: dict[
            tuple[tuple[int, ...], str, int],
            tuple[
                dict[str, int], dict[str, int], dict[str, int], list[tuple[FreshKey, FreshBucket]]
            ],
        ] = {}
        #: (partition, bucket key suffix) -> (its stamp, its fields split by group, how
        #: many): the newest buckets as :meth:`bucket_parts_by_group` last read them, least
        #: recently read first
        self._fresh_kept: OrderedDict[FreshKey, tuple[bytes | None, FreshBucket, int]] = (
            OrderedDict()
        )
        self._fresh_fields = 0
        #: (partition, instant ms, ticket groups, chat groups, stale ms) -> (generation,
        #: version, earliest per (kind, group)): :meth:`earliest_at`'s answers, least
        #: recently read first
        self._earliest_kept: OrderedDict[_EarliestKey, _Earliest] = OrderedDict()
        #: the groups the kept answers name, asked and found (:data:`EARLIEST_GROUPS_KEPT`)
        self._earliest_groups = 0
        #: (partition, instant ms, stale ms) -> the key of the answer last kept for it: an
        #: answer for other groups at the same instant (the groups with something open
        #: change as tickets open and close) is read again only for the groups it lacks
        self._earliest_last: dict[tuple[int, int, int], _EarliestKey] = {}
        #: (partition, stale ms) -> the key of the kept answer of the latest instant that
        #: was after every event of the partition when it was read: it holds at a later
        #: such instant too (a minute on) but for the groups moved since and the chats gone
        #: stale in between (:meth:`_earliest_holding`)
        self._earliest_present: dict[tuple[int, int], _EarliestKey] = {}
        #: the sorted orders of the ticket and chat groups :meth:`earliest_at` last asked
        self._ticket_order: SortedKeys[str] = SortedKeys()
        self._chat_order: SortedKeys[str] = SortedKeys()
        #: bucket key -> (its stamp, its level steps): :meth:`sum_level_steps`'s scans,
        #: least recently read first
        self._level_steps: OrderedDict[str, tuple[bytes, dict[bytes | str, int]]] = OrderedDict()
        #: (hash name, partition) -> the partition's ``tot`` or ``lvl`` as last read, with
        #: its version (:meth:`read_totals_by_group`, :meth:`read_levels`)
        self._hashes: dict[tuple[str, int], _KeptHash] = {}
        #: hash name -> the field names (the part after a group) read from it: a moved
        #: group's fields are read by these names
        self._hash_fields: dict[str, set[str]] = {}
        #: the last answer of :meth:`read_totals_by_group` and :meth:`read_levels`: the
        #: partitions, their kept stamps, the sums over them
        self._totals_view: (
            tuple[tuple[int, ...], dict[int, Any], dict[tuple[str, ...], dict[str, int]]] | None
        ) = None
        self._levels_view: tuple[tuple[int, ...], dict[int, Any], Counter[str]] | None = None

    @property
    def commit_script_sha(self) -> str:
        """The SHA1 the commit script runs under (``EVALSHA``): what a measurement of its
        time in Redis looks for (``SLOWLOG``)."""
        return str(self._commit.sha)

    @classmethod
    def from_settings(cls, redis: Client, settings: Settings) -> Store:
        """The store of a worker: its prefix, bucket sizes and replicas to wait for."""
        return cls(
            redis,
            settings.redis_prefix,
            CoreConfig.from_settings(settings),
            min_replicas=settings.redis_min_replicas,
            wait_timeout_ms=round(settings.redis_wait_timeout * 1000),
        )

    async def close(self) -> None:
        """Close the store's Redis client (for an owner that made the store with its own
        client and hands both over: the refresh loop's)."""
        await self.redis.aclose()

    def base(self, partition: int) -> str:
        """The key prefix of one partition, with its hash tag."""
        return f"{self.prefix}:{{p{partition}}}:"

    def key(self, name: str) -> str:
        """A key of the whole state (``P:config``, ``P:partitions``, ``P:alerts``)."""
        return f"{self.prefix}:{name}"

    async def check_config(self) -> None:
        """Refuse to mix state written with other bucket sizes (reads would be wrong), or
        by a version of deskpulse that laid the keys out differently, or a Redis that is
        (or is not) a cluster when ``DESKPULSE_REDIS_CLUSTER`` says otherwise."""
        await check_mode(self.redis)
        key = f"{self.prefix}:config"
        wanted = {
            "bucket_seconds": str(self.config.bucket_seconds),
            "rollup_seconds": str(self.config.rollup_seconds),
        }
        fields = await self._create_config(
            keys=[key],
            args=[wanted["bucket_seconds"], wanted["rollup_seconds"], LAYOUT, uuid.uuid4().hex],
        )
        stored = {text(k): text(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
        self._refuse_other_layout(stored)
        if stored.get("layout") != LAYOUT:
            # older layouts' states read as they are; from here on the store is this one's
            await self.redis.hset(key, "layout", LAYOUT)
        for name, value in wanted.items():
            if stored.get(name) != value:
                from deskpulse.models.errors import SettingsError

                raise SettingsError(
                    f"DESKPULSE_{name.upper()}",
                    f"is {value} but the state under prefix {self.prefix!r} was written with "
                    f"{stored.get(name)}; use another DESKPULSE_REDIS_PREFIX or the old value",
                )
        await self._take_generation(stored)

    async def check_partition_count(self, count: int) -> None:
        """Record the input topics' partition count in ``P:config`` the first time, and
        refuse another one later: a conversation's state lives with the partition its id
        maps to modulo the count, so with another count most conversations would start
        new states on other partitions (README, "Scaling out", has the migration)."""
        key = self.key("config")
        await self.redis.hsetnx(key, "partitions", count)
        stored = text(await self.redis.hget(key, "partitions") or b"")
        if stored != str(count):
            from deskpulse.models.errors import SettingsError

            raise SettingsError(
                "DESKPULSE_REDIS_PREFIX",
                f"the input topics have {count} partitions but the state under prefix "
                f"{self.prefix!r} was built on {stored}; a partition count cannot change "
                "under a state: replay the input topics into a new prefix with a new "
                "DESKPULSE_APP_ID (README: Scaling out)",
            )

    async def _take_generation(self, stored: dict[str, str]) -> None:
        """Read the generation of the state, making one for state that has none yet."""
        key = f"{self.prefix}:config"
        generation = stored.get("generation")
        members = {int(m) for m in await self.redis.smembers(f"{self.prefix}:partitions")}
        if generation is None:
            # new state, or state written before generations: whoever sets it first wins
            await self.redis.hsetnx(key, "generation", uuid.uuid4().hex)
            generation = text(await self.redis.hget(key, "generation") or b"")
            # a deskpulse without generations left partitions whose meta has none: adopt
            # them (not ones whose meta is gone: those are lost, and the checks say so)
            for partition in sorted(members):
                await self._adopt(keys=[self.base(partition) + "meta"], args=[generation])
        if self.generation is not None and generation != self.generation:
            raise StateLost(
                "generation_changed",
                f"the state under prefix {self.prefix!r} was started anew "
                f"(generation {generation}, this process had {self.generation})",
                FIX_RESTART,
            )
        self.generation = generation
        self._had_state |= members

    async def _ensure_open(self) -> None:
        if self.generation is None:
            await self.check_config()

    async def check_generation(self) -> None:
        """Raise :class:`StateLost` if ``P:config`` vanished or holds another generation, or
        a partition this store knew had state lost its meta. A handful of small reads,
        for a periodic check while no batch may come to notice it."""
        if self.generation is None:
            return
        parts = sorted(self._had_state)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(f"{self.prefix}:config", "generation")
            for partition in parts:
                pipe.hget(self.base(partition) + "meta", "gen")
            replies = await pipe.execute()
        found = None if replies[0] is None else text(replies[0])
        if found is None:
            raise StateLost(
                "config_missing",
                f"the state under prefix {self.prefix!r} is gone from Redis ({self.prefix}:"
                "config vanished: Redis restarted without persistence, was flushed, or the "
                "keys were deleted or evicted)",
                FIX_LOST,
            )
        if found != self.generation:
            raise StateLost(
                "generation_changed",
                f"the state under prefix {self.prefix!r} was started anew (generation "
                f"{found}, this process had {self.generation})",
                FIX_RESTART,
            )
        for partition, raw in zip(parts, replies[1:], strict=True):
            self._check_partition(partition, None if raw is None else text(raw))

    def _check_partition(
        self, partition: int, generation: str | None, had_state: bool | None = None
    ) -> None:
        """``had_state``: whether the partition was known to have state when the read
        was issued (default: now). A read issued before a concurrent first commit may be
        answered after it, and must not count as the state vanishing."""
        if self.generation is None:
            return  # not opened (a reader of state without generations): nothing to hold to
        if generation == self.generation:
            self._had_state.add(partition)
            return
        if had_state is None:
            had_state = partition in self._had_state
        if generation is None and not had_state:
            return  # no state yet: its first commit writes the generation
        if generation is None:
            raise StateLost(
                "partition_lost",
                f"partition {partition}'s state under prefix {self.prefix!r} is gone from "
                "Redis (its meta vanished: restarted without persistence, flushed, or the "
                "keys were deleted or evicted)",
                FIX_LOST,
            )
        raise StateLost(
            "generation_changed",
            f"partition {partition} under prefix {self.prefix!r} holds state of generation "
            f"{generation}, not {self.generation} (the state was started anew meanwhile)",
            FIX_RESTART,
        )

    async def check_readable(self) -> None:
        """For readers (``deskpulse kpis``): refuse state of another layout, and state that
        is gone (no ``P:config``: never written, or lost) or partly gone (a partition of
        another generation or without one); write nothing."""
        await check_mode(self.redis)
        stored = {
            text(k): text(v) for k, v in (await self.redis.hgetall(f"{self.prefix}:config")).items()
        }
        if not stored:
            raise StateLost(
                "config_missing",
                f"there is no deskpulse state under prefix {self.prefix!r} in Redis (no "
                "worker or replay has written it, or Redis lost it: restarted without "
                "persistence, flushed)",
                "check DESKPULSE_REDIS_URL and DESKPULSE_REDIS_PREFIX; if the state was lost, "
                + FIX_LOST,
            )
        self._refuse_other_layout(stored)
        generation = stored.get("generation")
        if generation is None:
            return  # written before generations; the next worker adopts it
        self.generation = generation
        self._had_state = {int(m) for m in await self.redis.smembers(f"{self.prefix}:partitions")}
        await self.check_generation()

    def _refuse_other_layout(self, stored: dict[str, str]) -> None:
        if stored.get("layout") not in _READS:
            from deskpulse.models.errors import SettingsError

            raise SettingsError(
                "DESKPULSE_REDIS_PREFIX",
                f"the state under prefix {self.prefix!r} was written by an older deskpulse "
                f"(store layout {stored.get('layout', '1')}, this one is {LAYOUT}); replay "
                "the input topics into a new prefix (deskpulse replay)",
            )

    async def load(
        self,
        partition: int,
        conversation_ids: Iterable[str],
        event_ids: Iterable[tuple[str, str]] = (),
    ) -> tuple[PartitionMeta, dict[str, Conversation | None]]:
        """Read a partition's meta and the given conversations in one round trip, and of the
        ``(conversation id, event id)`` pairs of ``event_ids`` (a batch's events) those kept
        beside their conversation's state (``meta.known``: what :func:`~streams.core.
        fold_batch` takes to find repeats; an event id is looked up by itself, whatever the
        length of the conversation's history).

        Raises :class:`StateLost` when the meta is not the state this store knows: of
        another generation, gone although the partition had state, or at a lower version
        than seen before (an older snapshot).
        """
        ids = list(dict.fromkeys(conversation_ids))
        base = self.base(partition)
        # Judged against what was known when the read was issued: reads outside the
        # partition's lock (breach clocks, health) run beside commits on other connections,
        # and one issued before a commit may be answered after it with the older version.
        floor = self._versions.get(partition, 0)
        had_state = partition in self._had_state
        places = {conv_id: place for place, conv_id in enumerate(ids, 1)}
        asked: list[int | str] = []
        for conv_id, event_id in event_ids:
            place = places.get(conv_id)
            if place is not None:
                asked += (place, event_id)
        reply = await self._load(keys=[base], args=[orjson.dumps(ids), orjson.dumps(asked)])
        flat_meta = reply[0]
        raw_meta = {text(flat_meta[k]): text(flat_meta[k + 1]) for k in range(0, len(flat_meta), 2)}
        self._check_partition(partition, raw_meta.get("gen"), had_state)
        version = int(raw_meta.get("version", "0"))
        if version < floor:
            raise StateLost(
                "rolled_back",
                f"partition {partition}'s state under prefix {self.prefix!r} went back from "
                f"version {floor} to {version} (Redis restarted from an older snapshot, or "
                "lost its last writes)",
                FIX_LOST,
            )
        if not self.min_replicas:
            # with replicas to wait for, only a version they hold is one a failover keeps
            self._versions[partition] = max(version, self._versions.get(partition, 0))
        if "gen" in raw_meta and partition not in self._known_partitions:
            await self._list_partition(partition)
        offsets = {k[4:]: int(v) for k, v in raw_meta.items() if k.startswith("off:")}
        topic_watermarks = {k[3:]: int(v) for k, v in raw_meta.items() if k.startswith("wm:")}
        counters = {
            k: int(v)
            for k, v in raw_meta.items()
            if k not in ("version", "wm", "gen")
            and k[:4] != "off:"
            and k[:3] != "wm:"
            and k[:4] != "lgm:"
        }
        meta = PartitionMeta(
            version=raw_meta.get("version", "0"),
            watermark_ms=int(raw_meta.get("wm", "0")),
            offsets=offsets,
            counters=counters,
            topic_watermarks=topic_watermarks,
        )
        states: dict[str, Conversation | None] = {}
        for conv_id, raw in zip(ids, islice(reply, 1, len(ids) + 1), strict=True):
            states[conv_id] = None if raw is None else Conversation.loads(raw)
        found = reply[len(ids) + 1 :]
        for k in range(0, len(found), 2):
            conv_id = ids[int(found[k]) - 1]
            meta.known.setdefault(conv_id, set()).add(text(found[k + 1]))
        return meta, states

    async def load_timelines(
        self,
        partition: int,
        states: Mapping[str, Conversation | None],
        conversation_ids: Iterable[str],
        version: str | None = None,
    ) -> bool:
        """Put the timelines kept beside the named tickets' states back in them, whole
        (:func:`~streams.core.restore`): what a batch that does not only append to them
        needs (:func:`~streams.core.timelines_needed`), and breach detection. One read of
        each ticket's entries, pipelined, after :meth:`load`.

        ``version``: the partition's version that :meth:`load` read. Another writer may
        commit the partition between the two reads (the breach check beside a batch, a
        replay process applying a misrouted record to a partition of another), and the
        entries read would then not be the states' (a torn read). The partition's version,
        read after the entries on the same connection, tells: when it is no longer
        ``version``, nothing is restored and the answer is False (load again; the commit's
        version check would refuse the batch anyway). Without ``version``, the caller
        holds the only writer."""
        wanted = [
            c
            for c in conversation_ids
            if (state := states.get(c)) is not None and state.walk is not None
        ]
        if not wanted:
            return True
        base = self.base(partition)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conv_id in wanted:
                pipe.hgetall(base + "tl:" + conv_id)
            if version is not None:
                # after the entries: unchanged, no commit came between them and the load
                pipe.hget(base + "meta", "version")
            replies = await pipe.execute()
        if version is not None:
            now = replies.pop()
            if text(now or b"0") != version:
                return False
        for conv_id, found in zip(wanted, replies, strict=True):
            entries: dict[str, tuple[int, str]] = {}
            for event_id, value in found.items():
                at_ms, _, code = text(value).partition(",")
                entries[text(event_id)] = (int(at_ms), code)
            state = states[conv_id]
            assert state is not None
            restore(state, entries)
        return True

    async def _list_partition(self, partition: int) -> None:
        # after the partition's state exists, never before: a partition listed without
        # state would read as one whose state was lost
        await self.redis.sadd(f"{self.prefix}:partitions", partition)
        self._known_partitions.add(partition)

    async def commit(self, partition: int, expected_version: str, result: BatchResult) -> bool:
        """Apply a folded batch atomically; ``False`` if the partition moved meanwhile.

        Raises :class:`StateLost` (and writes nothing) when the partition's state is not
        this store's generation, or is gone although this store knew it had state.
        """
        await self._ensure_open()
        cfg = self.config
        flat: list[str] = [str(len(result.offsets))]
        for topic, offset in result.offsets.items():
            flat += [topic, str(offset)]
        flat.append(str(len(result.topic_watermarks)))
        for topic, newest_ms in result.topic_watermarks.items():
            flat += [topic, str(newest_ms)]
        counters = {k: v for k, v in result.counters.items() if v}
        if result.applied:
            counters["applied"] = result.applied
        flat.append(str(len(counters)))
        for name, delta in counters.items():
            flat += [name, str(delta)]
        flat.append(str(len(result.buckets)))
        for (level, start), fields in result.buckets.items():
            width = cfg.bucket_seconds if level in "bBa" else cfg.rollup_seconds
            nonzero = [(k, v) for k, v in fields.items() if v]
            flat += [f"{level}:{start}", str(start + width), str(len(nonzero))]
            for name, delta in nonzero:
                flat += [name, str(delta)]
        totals = [(k, v) for k, v in result.totals.items() if v]
        flat.append(str(len(totals)))
        for name, delta in totals:
            flat += [name, str(delta)]
        levels = [(k, v) for k, v in result.levels.items() if v]
        flat.append(str(len(levels)))
        for name, delta in levels:
            flat += [name, str(delta)]
        flat.append(str(len(result.states)))
        deadlines = result.deadlines
        # the states go beside the JSON, end to end: inside it, each would be escaped
        states: list[bytes] = []
        for conv_id, state in result.states.items():
            if conv_id in deadlines:
                deadline = deadlines[conv_id]
                due = "" if deadline is None else str(deadline)
            else:
                due = "k"  # nothing the schedule reads moved: the due entry stays
            stored = state.dumps()
            states.append(stored)
            flat += [
                conv_id,
                str(keep_until_ms(state, cfg)),
                str(result.held.get(conv_id, 0)),
                due,
                str(len(stored)),
            ]
        flat.append(str(sum(map(len, result.others.values()))))
        for conv_id, added in result.others.items():
            prefix = conv_id + SEP
            for event_id, at_ms in added.items():
                flat += [prefix + event_id, str(at_ms)]
        flat.append(str(len(result.timelines)))
        for conv_id, entries in result.timelines.items():
            flat += [conv_id, str(len(entries))]
            for event_id, (at_ms, code) in entries.items():
                flat += [event_id, f"{at_ms},{code}"]
        others = [(c, d) for c, d in result.deadlines.items() if c not in result.states]
        flat.append(str(len(others)))
        for conv_id, deadline in others:
            flat += [conv_id, "" if deadline is None else str(deadline)]
        flat.append(str(len(result.outbox)))
        for event_id, payload in result.outbox.items():
            flat += [event_id, payload]
        flat.append(str(len(result.index)))
        for op, suffix, score, member, info in result.index:
            flat += [op, suffix, str(score), member, info]
        args: list[Any] = [
            expected_version,
            result.watermark_ms,
            result.watermark_ms // 1000 - cfg.retention_seconds,
            result.watermark_ms - cfg.retention_seconds * 1000,
            orjson.dumps(flat),
            self.generation,
            "1" if partition in self._had_state else "0",
            b"".join(states),
            cfg.bucket_seconds,
            cfg.rollup_seconds,
            "" if result.index_from_ms is None else result.index_from_ms,
            MOVES_KEPT,
            cfg.chat_stale_after_s * 1000,
            HASH_MOVES_KEPT,
            _moved_groups(totals),
            _moved_groups(levels),
            HASH_MOVES_NAMED,
        ]
        reply = await self._commit(keys=[self.base(partition)], args=args)
        status = int(reply[0])
        if status == -1:
            self._check_partition(partition, text(reply[1]) or None)
            raise AssertionError("the commit script refused a generation it should accept")
        if status != 1:
            return False
        version = int(text(reply[1]))
        if self.min_replicas and not await self.replicated(partition, version):
            return False  # lost with its master before a replica had it: fold it again
        self._had_state.add(partition)
        self._versions[partition] = max(version, self._versions.get(partition, 0))
        if partition not in self._known_partitions:
            await self._list_partition(partition)
        return True

    async def replicated(self, partition: int, version: int) -> bool:
        """Return once :attr:`min_replicas` replicas hold the partition at ``version``
        (``True``), or ``False`` if the partition is no longer at it or later: the
        commit was lost (its master died before a replica had it, and one took over).

        Each attempt is the sync script and ``WAIT`` on one connection to the partition's
        master; a ``WAIT`` that falls short, or a connection, cluster or failover error,
        is retried with backoff (logged, and counted in :attr:`replication_short`), so
        nothing is acknowledged that a failover may take back. Only cancellation stops it.
        """
        base = self.base(partition)
        delay_s = 0.05
        attempt = 0
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    await self._sync(keys=[base], args=[version], client=cast(Any, pipe))
                    target = _node_of(self.redis, base)
                    pipe.execute_command("WAIT", self.min_replicas, self.wait_timeout_ms, **target)
                    held, acked = await pipe.execute()
            except NoScriptError:
                await self.redis.script_load(self._sync.script)
                continue
            except (
                RedisConnectionError,
                RedisTimeoutError,
                RedisClusterException,
                OSError,
                ResponseError,  # CLUSTERDOWN, TRYAGAIN, READONLY, LOADING
            ) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if not int(held):
                    return False
                # the WAIT went where the script went unless the slot moved meanwhile
                if int(acked) >= self.min_replicas and _node_of(self.redis, base) == target:
                    return True
                problem = f"{int(acked)} of {self.min_replicas} replicas acknowledged"
            attempt += 1
            self.replication_short += 1
            log.warning(
                "partition %d at version %d is not on %d replicas yet (attempt %d, "
                "retrying in %.2fs): %s",
                partition,
                version,
                self.min_replicas,
                attempt,
                delay_s,
                problem,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(2.0, delay_s * 2)

    async def clear(self) -> int:
        """Delete every key of this prefix (SCAN + UNLINK); how many.

        Only keys laid out as this store lays them out (``P:{pn}:...`` and ``P:<name>``),
        so a prefix that starts like this one (``P:staging``) keeps its keys.
        """
        pattern = self.prefix.translate(_GLOB) + ":*"
        start = len(self.prefix) + 1
        deleted = 0
        batch: list[bytes | str] = []
        async for raw in self.redis.scan_iter(match=pattern, count=1000):
            rest = text(raw)[start:]
            if rest.startswith("{p") or ":" not in rest:
                batch.append(raw)
            if len(batch) >= 1000:
                deleted += await self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.redis.unlink(*batch)
        self.generation = None
        self._had_state.clear()
        self._versions.clear()
        self._known_partitions.clear()
        return int(deleted)

    async def start_at(self, partition: int, offsets: dict[str, int]) -> bool:
        """Make a partition without state start after ``offsets`` (topic -> last offset
        taken as applied), in this generation; ``False`` if it has state already."""
        await self._ensure_open()
        args: list[Any] = [self.generation]
        for topic, offset in offsets.items():
            args += [topic, str(offset)]
        done = bool(await self._start_at(keys=[self.base(partition) + "meta"], args=args))
        if done:
            self._had_state.add(partition)
            await self._list_partition(partition)
        return done

    async def has_state(self) -> bool:
        """Whether any state is under the prefix (a ``P:config`` or ``P:partitions``)."""
        return bool(await self.redis.exists(self.key("config"), self.key("partitions")))

    async def record_reset(self, *, reset_at: str, note: str) -> None:
        """Record in ``P:config`` that an operator accepted starting empty, and why."""
        await self.redis.hset(
            self.key("config"), mapping={"reset_at": reset_at, "reset_note": note}
        )

    # --- breach claims (streams/breaches.py decides; the claim is atomic here) -------------

    async def due_tickets(self, partition: int, clock_ms: int, *, limit: int) -> list[str]:
        """Up to ``limit`` ticket conversation ids of ``due`` whose deadline is at or
        before ``clock_ms``, earliest first."""
        due = await self.redis.zrangebyscore(
            self.base(partition) + "due", "-inf", clock_ms, start=0, num=limit
        )
        return [d.decode() if isinstance(d, bytes) else str(d) for d in due]

    async def breach_outbox(self, partition: int) -> dict[str, bytes | str]:
        """Alert payloads not yet acknowledged by the broker: event id -> JSON."""
        pending = await self.redis.hgetall(self.base(partition) + "breach_out")
        return {text(k): v for k, v in pending.items()}

    async def drop_from_outbox(self, partition: int, event_ids: Iterable[str]) -> None:
        """Forget published alert payloads (the broker acknowledged them)."""
        ids = list(event_ids)
        if ids:
            await self.redis.hdel(self.base(partition) + "breach_out", *ids)

    # --- the alert rules' state (exporters/publish.py) ----------------------------------

    async def alert_states(self) -> dict[str, str]:
        """``P:alerts``: ``rule␟window␟channel␟queue␟priority`` -> ``firing`` or ``ok``."""
        stored = await self.redis.hgetall(self.key("alerts"))
        return {text(k): text(v) for k, v in stored.items()}

    async def save_alert_states(self, states: Mapping[str, str]) -> None:
        """Record rule transitions in ``P:alerts``, all in one step."""
        if states:
            fields: dict[Any, Any] = dict(states)
            await self.redis.hset(self.key("alerts"), mapping=fields)

    async def _pipelined_script(
        self, script: AsyncScript, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline (a cluster's pipeline
        sends each node its own); the replies in order. A node that does not know the
        script (a replica promoted since it was loaded) has it loaded and the calls rerun:
        they only read."""
        if not calls:
            return []

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    # (a cluster's pipeline is no RedisCluster, yet the script takes it)
                    await script(keys=keys, args=args, client=cast(Any, pipe))
                return list(await pipe.execute())

        try:
            return await run()
        except NoScriptError:
            await self.redis.script_load(script.script)
            return await run()

    async def partitions(self) -> list[int]:
        """Partitions that have state."""
        members = await self.redis.smembers(f"{self.prefix}:partitions")
        return sorted(int(m) for m in members)

    async def sum_buckets(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]]
    ) -> list[Counter[str]]:
        """Per set of bucket key suffixes, its fields summed over the buckets and partitions
        (:meth:`sum_bucket_parts`, the two parts added)."""
        out: list[Counter[str]] = []
        for kept_sum, rest in await self.sum_bucket_parts(partitions, sets):
            if kept_sum is not None:
                self.take_move(kept_sum)  # summed anew here: no one moves a split along
            total: Counter[str] = Counter(kept_sum) if kept_sum else Counter()
            get = total.get
            for name, value in rest.items():
                total[name] = get(name, 0) + value
            out.append(total)
        return out

    async def sum_bucket_parts(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]]
    ) -> list[tuple[Mapping[str, int] | None, dict[str, int]]]:
        """Per set of bucket key suffixes, its fields summed over the buckets and partitions,
        in two parts: the sum of its settled buckets (``None``: none) and the sum of the rest
        (:meth:`_settled_parts`), the rest read now."""
        kept_sums, fresh_sets, _ = await self._settled_parts(partitions, sets, stamp_fresh=False)
        fresh = await self._sum_fresh(partitions, fresh_sets)
        return list(zip(kept_sums, fresh, strict=True))

    async def bucket_parts_by_group(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]]
    ) -> list[tuple[Mapping[str, int] | None, list[tuple[FreshKey, FreshBucket]]]]:
        """:meth:`sum_bucket_parts` with the rest left apart, bucket by bucket: per set, the
        settled sum and each of its other buckets (``(partition, suffix)`` and its fields
        split at their group, ``group -> field -> value``), partitions in the order given.

        A bucket is kept with its stamp, read with the settled buckets' in one ``HMGET``,
        and is the very object kept (never to be changed by the caller) while its stamp
        holds: a reader keeps what it derived from it and derives again only from the
        buckets a commit wrote since. The newest buckets of a window ending now are read
        whole at every read otherwise, though a refresh finds most unchanged (at 6,000
        groups, a quarter of a grouped day's read was reading and splitting them again)."""
        kept_sums, fresh_sets, stamps = await self._settled_parts(
            partitions, sets, stamp_fresh=True
        )
        wanted = list(
            dict.fromkeys((p, s) for p in partitions for suffixes in fresh_sets for s in suffixes)
        )
        found = self._fresh_kept
        have: dict[FreshKey, FreshBucket] = {}
        missing = []
        for key in wanted:
            held = found.get(key)
            if held is not None and held[0] == stamps[key]:
                found.move_to_end(key)
                have[key] = held[1]
            else:
                missing.append(key)
        if missing:
            # read after the stamps: a commit in between leaves a newer stamp than the one
            # kept, and the next read reads the bucket again
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition, suffix in missing:
                    pipe.hgetall(self.base(partition) + suffix)
                replies = await pipe.execute()
            for key, reply in zip(missing, replies, strict=True):
                have[key] = _split_bucket(reply)
                self._keep_fresh(key, stamps[key], have[key])
        return [
            (kept, [((p, s), have[(p, s)]) for p in partitions for s in dict.fromkeys(suffixes)])
            for kept, suffixes in zip(kept_sums, fresh_sets, strict=True)
        ]

    def _keep_fresh(self, key: FreshKey, stamp: bytes | None, bucket: FreshBucket) -> None:
        """Keep a bucket read by :meth:`bucket_parts_by_group` with its stamp; the least
        recently read go while more than :data:`FRESH_FIELDS_KEPT` fields are kept."""
        kept = self._fresh_kept
        if key in kept:
            self._fresh_fields -= kept.pop(key)[2]
        size = sum(len(fields) for fields in bucket.values())
        kept[key] = (stamp, bucket, size)
        self._fresh_fields += size
        while self._fresh_fields > FRESH_FIELDS_KEPT and len(kept) > 1:
            self._fresh_fields -= kept.popitem(last=False)[1][2]

    async def _settled_parts(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]], *, stamp_fresh: bool
    ) -> tuple[list[Mapping[str, int] | None], list[list[str]], dict[FreshKey, bytes | None]]:
        """Per set of bucket key suffixes, the sum of its settled buckets over the partitions
        (``None``: none), and its other buckets' suffixes; with ``stamp_fresh``, the stamps
        of those others too (``(partition, suffix)`` -> stamp, read with the settled ones').

        The settled part is the very sum this store keeps (never to be changed by the
        caller): read again while its buckets' stamps hold, it is the same object, so a
        caller may keep what it derived from it (the grouped reads do) and derive again
        only from the rest.

        Each bucket is read once however many sets name it (the 5m window's buckets are
        inside the 15m window's), in one pipeline. The sums are done here, not in a Redis
        script: Lua adds them slower than this and would hold Redis (and every commit)
        meanwhile.

        A set's settled buckets (all but the newest roll-up and the two newest fine
        buckets of the read, which the traffic is still writing) are summed once and kept
        with their stamps (``bver``): a later read of the same set compares the stamps and
        reads only the rest. A commit that writes a settled bucket (a late event, a
        retraction) or a trim that deletes one changes its stamp, and the sum is read
        afresh. A window ending now slides a bucket a minute: its kept sum moves along by
        the buckets that left and entered while the stamps of the others hold. A 24 h read
        by group thus reads a few buckets instead of a day of them, and a refresh of the
        current hour's minutes reads the minute that entered, not the whole hour again.
        """
        newest_s = _newest_rollup(sets)
        fine_cut_s = _fine_cut(sets)
        rollup_s = self.config.rollup_seconds
        settled = [_settled(suffixes, newest_s, fine_cut_s, rollup_s) for suffixes in sets]
        fresh_sets = [
            [s for s in suffixes if s not in kept]
            for suffixes, kept in zip(sets, map(set, settled), strict=True)
        ]
        parts = tuple(partitions)
        kept_by = self._settled_sums
        # a set read before as it is, or else the same window read a minute or more ago
        # (a window ending now slides: a fine bucket enters, one leaves), whose sum moves
        # by the buckets that left and entered while the stamps of the rest hold
        earlier: dict[int, tuple[str, ...]] = {}
        # what was kept of each, taken now: a read running beside this one (the read
        # process answers several at once) may move it along or let it go meanwhile
        earlier_kept: dict[int, tuple[tuple[bytes | None, ...], dict[str, int]]] = {}
        for i, kept in enumerate(settled):
            if kept and (parts, kept) not in kept_by:
                last = self._sliding.get((parts, *_span(sets[i], self.config)))
                if last is not None and last in kept_by:
                    earlier[i] = last[1]
                    earlier_kept[i] = kept_by[last]
        stamped = list(
            dict.fromkeys(
                [s for kept in settled for s in kept]
                + [s for last_kept in earlier.values() for s in last_kept]
                + ([s for fresh in fresh_sets for s in fresh] if stamp_fresh else [])
            )
        )
        stamps = await self._stamps(partitions, stamped)
        position = {suffix: i for i, suffix in enumerate(stamped)}

        def stamps_of(kept: Sequence[str]) -> tuple[bytes | None, ...]:
            return tuple(row[position[s]] for row in stamps for s in kept)

        kept_sums: list[dict[str, int] | None] = []
        missing: list[int] = []
        slides: dict[int, tuple[list[str], list[str]]] = {}
        #: the sums the slides move along, as they were before any is moved (two sets alike
        #: in one read move the same sum; keeping the first may let the other's go)
        slid_from: dict[int, dict[str, int]] = {}
        for i, kept in enumerate(settled):
            if not kept:
                kept_sums.append(None)
                continue
            cached = kept_by.get((parts, kept))
            if cached is not None and cached[0] == stamps_of(kept):
                kept_by.move_to_end((parts, kept))
                kept_sums.append(cached[1])
                continue
            kept_sums.append(None)
            last_kept = earlier.get(i)
            if last_kept is not None:
                # every bucket of the last sum unchanged (none trimmed): it moves along
                old_stamps, slid_from[i] = earlier_kept[i]
                held = dict(
                    zip(
                        [(n, s) for n in range(len(parts)) for s in last_kept],
                        old_stamps,
                        strict=True,
                    )
                )
                now_kept, was_kept = set(kept), set(last_kept)
                left = [s for s in last_kept if s not in now_kept]
                entered = [s for s in kept if s not in was_kept]
                # every bucket of the last sum as it was: its stamp the same, or still none
                # (a bucket is stamped by every commit that writes it and its stamp deleted
                # with it: one never written is empty then and now, and a trim changes a
                # stamp to none). A window past the newest event, a quiet minute, slides too.
                if _cheaper(left, entered, kept, self.config) and all(
                    held[(n, s)] == row[position[s]]
                    for n, row in enumerate(stamps)
                    for s in last_kept
                ):
                    slides[i] = (left, entered)
                    continue
            missing.append(i)
        if slides:
            # an entering bucket held split by group with the stamp read now (the newest
            # of the last read, settled since) is not read again: the sum moves along by
            # its split, which a grouped reader holds projected already
            split = self._held_split(partitions, stamps, position, slides) if stamp_fresh else {}
            moved = await self._sum_fresh(
                partitions,
                [
                    bucket
                    for i in slides
                    for bucket in (slides[i][0], [s for s in slides[i][1] if s not in split])
                ],
            )
            # a bucket that leaves is taken out as read now: read between two equal stamps
            # it is what the sum holds (an entering one read after its stamp is checked by
            # the next read; one that left is never looked at again)
            leaving = list(dict.fromkeys(s for i in slides for s in slides[i][0]))
            if leaving:
                again = await self._stamps(partitions, leaving)
                changed = {
                    suffix
                    for row, now_row in zip(stamps, again, strict=True)
                    for suffix, stamp in zip(leaving, now_row, strict=True)
                    if stamp != row[position[suffix]]
                }
                for i in [i for i in slides if changed.intersection(slides[i][0])]:
                    missing.append(i)
            for n, i in enumerate(slides):
                if i in missing:
                    continue
                gone_sum, new_sum = moved[2 * n], moved[2 * n + 1]
                change = dict(new_sum)
                get = change.get
                for name, value in gone_sum.items():
                    change[name] = get(name, 0) - value
                entered_split = [part for s in slides[i][1] for part in split.get(s, ())]
                slid = dict(slid_from[i])
                get = slid.get
                for name, value in _change_items(change, entered_split):
                    total = get(name, 0) + value
                    if total:
                        slid[name] = total
                    else:
                        slid.pop(name, None)
                kept_sums[i] = slid
                self._forget_settled((parts, earlier[i]))  # moved along: no one asks it
                self._keep_settled(parts, settled[i], stamps_of(settled[i]), slid)
                span = _span(sets[i], self.config)
                if span[0] != "all":
                    self._moves[(parts, *span)] = (slid, slid_from[i], change, entered_split)
        if missing:
            read = await self._read_settled(parts, [settled[i] for i in missing])
            for i in missing:
                kept_sums[i] = read[settled[i]]
        for i, kept in enumerate(settled):
            if kept:
                self._sliding[(parts, *_span(sets[i], self.config))] = (parts, kept)
        fresh_stamps = (
            {
                (p, s): row[position[s]]
                for p, row in zip(partitions, stamps, strict=True)
                for fresh in fresh_sets
                for s in fresh
            }
            if stamp_fresh
            else {}
        )
        return list(kept_sums), fresh_sets, fresh_stamps

    def take_move(
        self, kept: Mapping[str, int]
    ) -> tuple[dict[str, int], dict[str, int], list[tuple[FreshKey, FreshBucket]]] | None:
        """``(earlier, change, entered)`` when :meth:`sum_bucket_parts` or
        :meth:`bucket_parts_by_group` made the settled sum ``kept`` by moving ``earlier``
        (the very sum it handed out before) along: ``kept`` is ``earlier`` plus ``change``
        (field -> amount) plus the buckets ``entered`` (the very split buckets
        :meth:`bucket_parts_by_group` handed out as the newest, settled since; none from
        :meth:`sum_bucket_parts`), a field that ends at zero left out of ``kept``. ``None``
        otherwise. Handed out once: a reader that derived something from ``earlier`` moves
        that along instead of deriving it from ``kept`` again (the reads by agent project a
        day's sum per agent, the grouped reads per group)."""
        for key, (slid, earlier, change, entered) in self._moves.items():
            if slid is kept:
                del self._moves[key]
                return earlier, change, entered
        return None

    def _held_split(
        self,
        partitions: Sequence[int],
        stamps: Sequence[tuple[bytes | None, ...]],
        position: Mapping[str, int],
        slides: Mapping[int, tuple[list[str], list[str]]],
    ) -> dict[str, list[tuple[FreshKey, FreshBucket]]]:
        """The buckets entering ``slides`` held split (:meth:`bucket_parts_by_group`) in
        every partition with the stamps read now (``stamps``, a row per partition, a
        bucket's at ``position``): suffix -> its split per partition."""
        found = self._fresh_kept
        out: dict[str, list[tuple[FreshKey, FreshBucket]]] = {}
        for suffix in dict.fromkeys(s for i in slides for s in slides[i][1]):
            parts = []
            for partition, row in zip(partitions, stamps, strict=True):
                held = found.get((partition, suffix))
                if held is None or held[0] != row[position[suffix]]:
                    break
                parts.append(((partition, suffix), held[1]))
            else:
                out[suffix] = parts
        return out

    async def _read_settled(
        self, parts: tuple[int, ...], sets: Sequence[tuple[str, ...]]
    ) -> dict[tuple[str, ...], dict[str, int]]:
        """Sum the settled buckets of ``sets`` with their stamps, each partition's read at
        one instant (:meth:`_read_stamped`; partitions need not be: each stamp is its
        partition's own), and keep them: the least recently read go while more than
        :data:`SETTLED_FIELDS_KEPT` fields are kept in all."""
        unique = list(dict.fromkeys(s for kept in sets for s in kept))
        stamps, contents = await self._read_stamped(parts, unique)
        position = {suffix: i for i, suffix in enumerate(unique)}
        sums = _merge(contents, unique, [list(kept) for kept in sets])
        read: dict[tuple[str, ...], dict[str, int]] = {}
        for kept, total in zip(sets, sums, strict=True):
            read[kept] = decoded = {sys.intern(text(name)): value for name, value in total.items()}
            wanted = tuple(row[position[s]] for row in stamps for s in kept)
            self._keep_settled(parts, kept, wanted, decoded)
        return read

    def _forget_settled(self, key: tuple[tuple[int, ...], tuple[str, ...]]) -> None:
        if key in self._settled_sums:
            self._settled_fields -= len(self._settled_sums.pop(key)[1])

    def _keep_settled(
        self,
        parts: tuple[int, ...],
        kept: tuple[str, ...],
        stamps: tuple[bytes | None, ...],
        total: dict[str, int],
    ) -> None:
        """Keep the sum of the settled buckets ``kept`` of ``parts`` with their stamps;
        the least recently read go while more than :data:`SETTLED_FIELDS_KEPT` fields are
        kept in all."""
        kept_sums = self._settled_sums
        key = (parts, kept)
        self._forget_settled(key)
        if len(total) > SETTLED_FIELDS_KEPT:
            return  # read, not kept
        kept_sums[key] = (stamps, total)
        self._settled_fields += len(total)
        while self._settled_fields > SETTLED_FIELDS_KEPT:
            _, (_, dropped) = kept_sums.popitem(last=False)
            self._settled_fields -= len(dropped)

    async def _stamps(
        self, partitions: Sequence[int], suffixes: Sequence[str]
    ) -> list[tuple[bytes | None, ...]]:
        """Per partition, the stamps (``bver``) of the buckets ``suffixes``, in one
        pipeline (none read when there are none)."""
        if not suffixes:
            return [() for _ in partitions]
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.hmget(self.base(partition) + "bver", list(suffixes))
            return [tuple(row) for row in await pipe.execute()]

    async def _read_stamped(
        self, parts: Sequence[int], unique: Sequence[str]
    ) -> tuple[list[Any], list[Any]]:
        """The stamps (``bver``) and contents of the buckets ``unique`` of ``parts``: per
        partition its stamps, then per partition each bucket. One script per partition
        (stamps and contents of one instant, on one slot), all in one pipeline."""
        calls = []
        for partition in parts:
            base = self.base(partition)
            calls.append(([base + "bver", *(base + suffix for suffix in unique)], list(unique)))
        replies = await self._pipelined_script(self._read_stamped_script, calls)
        stamps = [reply[0] for reply in replies]
        contents = []
        for reply in replies:
            for flat in reply[1:]:
                fields = iter(flat)
                contents.append(dict(zip(fields, fields, strict=True)))
        return stamps, contents

    async def _sum_fresh(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]]
    ) -> list[dict[str, int]]:
        """Per set of bucket key suffixes, its fields summed, read now in one pipeline."""
        unique = list(dict.fromkeys(suffix for suffixes in sets for suffix in suffixes))
        if not unique:
            return [{} for _ in sets]
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                base = self.base(partition)
                for suffix in unique:
                    pipe.hgetall(base + suffix)
            replies = await pipe.execute()
        # interned: the windows a refresh reads (and the settled sums kept) share each name
        return [
            {sys.intern(text(name)): value for name, value in m.items()}
            for m in _merge(replies, unique, sets)
        ]

    async def sum_level_steps(
        self, partitions: Sequence[int], sets: Sequence[Sequence[str]], *, match: str = _LEVEL_MATCH
    ) -> list[Counter[str]]:
        """:meth:`sum_buckets` of the level steps alone (``dimkey + SEP + bl:*``): Redis
        picks them out of each bucket (``HSCAN MATCH``), so a bucket's other fields, most
        of it, never cross the wire. Pipelined; a bucket too big for one scan is scanned on.
        Each bucket's steps are kept with its stamp (``bver``) and scanned again only once
        a commit or a trim changed it: a board's series asks the same hours every minute.
        ``match``: the agents' presence steps (:data:`PRESENCE_MATCH`) in the all-groups
        buckets instead.
        """
        unique = list(dict.fromkeys(suffix for suffixes in sets for suffix in suffixes))
        keys = [self.base(p) + suffix for p in partitions for suffix in unique]
        # kept per key and pattern: the same bucket's steps of another pattern are others
        kept_keys = keys if match == _LEVEL_MATCH else [match + "\x00" + key for key in keys]
        # per key: a scan of several calls may return a field more than once (Redis
        # promises every field at least once), so each key's fields are set, not added
        scanned: list[dict[bytes | str, int]] = [{} for _ in keys]
        # a bucket's steps kept from an earlier read hold while its stamp is the same (read
        # before the scan: a commit in between leaves a newer stamp, and the next read
        # scans again)
        stamps = [stamp for row in await self._stamps(partitions, unique) for stamp in row]
        kept = self._level_steps
        cursors = {}
        for i, (key, stamp) in enumerate(zip(kept_keys, stamps, strict=True)):
            held = kept.get(key)
            if held is not None and stamp is not None and held[0] == stamp:
                scanned[i] = held[1]
                kept.move_to_end(key)
            else:
                cursors[i] = 0
        to_keep = [i for i in cursors if stamps[i] is not None]
        while cursors:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i, cursor in cursors.items():
                    pipe.hscan(keys[i], cursor, match=match, count=_SCAN_COUNT)
                replies = await pipe.execute()
            following: dict[int, int] = {}
            for i, (cursor, fields) in zip(cursors, replies, strict=True):
                mine = scanned[i]
                for name, value in fields.items():
                    mine[name] = int(value)
                if int(cursor):
                    following[i] = int(cursor)
            cursors = following
        for i in to_keep:
            stamp = stamps[i]
            assert stamp is not None
            kept[kept_keys[i]] = (stamp, scanned[i])
            kept.move_to_end(kept_keys[i])
        while len(kept) > LEVEL_BUCKETS_KEPT:
            kept.popitem(last=False)
        found: dict[str, Counter[bytes | str]] = {suffix: Counter() for suffix in unique}
        for i, fields in enumerate(scanned):
            found[unique[i % len(unique)]].update(fields)
        decoded = {s: Counter({text(n): v for n, v in c.items()}) for s, c in found.items()}
        out: list[Counter[str]] = []
        for suffixes in sets:
            total: Counter[str] = Counter()
            for suffix in dict.fromkeys(suffixes):
                total.update(decoded[suffix])
            out.append(total)
        return out

    async def read_levels(self, partitions: Sequence[int]) -> Counter[str]:
        """The running sums of the level steps (``dimkey + SEP + bl:*``), over partitions:
        the backlog and the waiting chats as of every step written so far.

        Incremental as :meth:`read_totals_by_group` is: each partition's ``lvl`` is kept
        with its version, and only the fields moved since are read again and summed anew
        (a refresh reads the levels at two instants or more: the second costs one script
        per partition that finds nothing moved)."""
        replies = await self._hashes_since("lvl", partitions)
        # from here on no await: the kept hashes and the sums move together
        moved = self._take_moved("lvl", partitions, replies)
        view = self._levels_view
        if view is None or view[0] != tuple(partitions) or view[1] != moved.before:
            levels: Counter[str] = Counter()
            for partition in partitions:
                kept = self._hashes.get(("lvl", partition))
                if kept is not None:
                    get = levels.get
                    for name, value in kept.fields.items():
                        levels[name] = get(name, 0) + value
        else:
            levels = view[2]
            parts = [self._hashes.get(("lvl", p)) for p in partitions]
            for name in moved.names:
                found = [kept.fields[name] for kept in parts if kept and name in kept.fields]
                if found:
                    levels[name] = sum(found)
                else:
                    levels.pop(name, None)
        self._levels_view = (tuple(partitions), moved.after, levels)
        return Counter(levels)

    async def earliest(
        self,
        partitions: Sequence[int],
        *,
        at_ms: int,
        stale_ms: int,
        ticket_groups: Sequence[str],
        chat_groups: Sequence[str],
        newest_ms: Mapping[int, int],
    ) -> dict[tuple[str, str], int]:
        """Per ``(kind, group key)`` — ``t`` tickets, ``c`` chats — the earliest creation of
        the tickets open, and request of the chats waiting, at ``at_ms`` over the partitions
        (only for the groups named; a group with none is left out). One script per
        partition, in one pipeline; a partition whose newest event is before the instant
        reads the first entry of each group's index, any other the conversations that left
        the indexes since too."""
        (found,) = await self.earliest_at(
            partitions,
            [(at_ms, ticket_groups, chat_groups)],
            stale_ms=stale_ms,
            newest_ms=newest_ms,
        )
        return found

    async def earliest_at(
        self,
        partitions: Sequence[int],
        instants: Sequence[tuple[int, Sequence[str], Sequence[str]]],
        *,
        stale_ms: int,
        newest_ms: Mapping[int, int],
    ) -> list[dict[tuple[str, str], int]]:
        """:meth:`earliest` for several ``(at_ms, ticket_groups, chat_groups)`` at once (a
        series of windows reads the live indexes at each of its ends): one script per
        partition, in one pipeline, which reads the conversations that left the indexes
        since the earliest past instant once for all of them.

        The answer of a partition at an instant is kept with the version it was read at,
        and holds while no later commit moved the live indexes at or before the instant
        (``lmoved``): a board's series asks the same past instants every minute, and only
        a late event makes one of them read again. Those still holding are checked in one
        pipeline first; the script reads the rest.
        """
        # (the groups sorted: they come in the order of the level steps read, which varies;
        # one tuple per instant for every partition, of names interned: the answers kept
        # name the same groups refresh after refresh; the orders kept, as the groups with
        # something open are mostly the same from one read to the next)
        intern = sys.intern
        sorted_groups = [
            (
                at_ms,
                self._ticket_order.of(set(map(intern, tickets))),
                self._chat_order.of(set(map(intern, chats))),
            )
            for at_ms, tickets, chats in instants
        ]
        keys = [
            [(p, at_ms, tickets, chats, stale_ms) for at_ms, tickets, chats in sorted_groups]
            for p in partitions
        ]
        found, partial = await self._earliest_holding(
            [key for row in keys for key in row], newest_ms
        )
        rows = dict(zip(partitions, keys, strict=True))
        # an answer keeps the groups asked alone (the script also names a group not asked
        # whose conversation left the indexes since the instant): answers for other
        # groups at the same instant are merged from them
        # (made for an instant only once an answer for it is read: kept answers that hold,
        # the common case, need none)
        asked_sets: dict[int, set[tuple[str, str]]] = {}

        def asked_at(i: int) -> set[tuple[str, str]]:
            groups = asked_sets.get(i)
            if groups is None:
                _, tickets, chats = sorted_groups[i]
                groups = asked_sets[i] = {*(("t", g) for g in tickets), *(("c", g) for g in chats)}
            return groups

        instant_of = {key: i for row in keys for i, key in enumerate(row)}
        # each partition's instants still to read whole, ascending (as the script takes them)
        wanted = {
            p: sorted(
                (i for i, key in enumerate(row) if key not in found and key not in partial),
                key=lambda i: instants[i][0],
            )
            for p, row in zip(partitions, keys, strict=True)
        }
        kept = self._earliest_kept

        last = self._earliest_last
        present = self._earliest_present

        def keep(key: _EarliestKey, answer: _Earliest, newest_then_ms: int) -> None:
            found[key] = answer[2]
            if key in kept:
                self._earliest_groups -= _earliest_weight(key, kept[key])
            kept[key] = answer
            self._earliest_groups += _earliest_weight(key, answer)
            kept.move_to_end(key)
            last[(key[0], key[1], key[4])] = key
            # read after every event of the partition (the script's newest event time, at
            # or after the version the answer is stamped with): the present
            if newest_then_ms < key[1]:
                held = present.get((key[0], key[4]))
                if held is None or held[1] <= key[1]:
                    present[(key[0], key[4])] = key

        while any(wanted.values()) or partial:
            asked = [(p, indexes) for p, indexes in wanted.items() if indexes]
            # the partitions mostly ask the same instants: their groups encoded once
            wants: dict[tuple[int, ...], tuple[bytes, bytes]] = {}
            calls = [
                self._earliest_call(
                    partition, [instants[i] for i in indexes], stale_ms, newest_ms, wants
                )
                for partition, indexes in asked
            ]
            # a kept answer some later commits invalidated, whose moved groups are known:
            # the script asks only the groups it asked among those, per partition at once
            refined: dict[int, list[tuple[_EarliestKey, tuple[int, list[str], list[str]]]]] = {}
            for key, (_, _, _, moved) in partial.items():
                refined.setdefault(key[0], []).append(
                    (
                        key,
                        (
                            key[1],
                            [g for g in key[2] if ("t", g) in moved],
                            [g for g in key[3] if ("c", g) in moved],
                        ),
                    )
                )
            refine_wants: dict[tuple[int, ...], tuple[bytes, bytes]] = {}
            refine_asked = []
            for partition, entries in refined.items():
                entries.sort(key=lambda entry: entry[0][1])
                refine_asked.append((partition, entries))
                calls.append(
                    self._earliest_call(
                        partition, [ask for _, ask in entries], stale_ms, newest_ms, refine_wants
                    )
                )
            replies = await self._pipelined_script(self._earliest_at, calls)
            wanted = {}
            for (partition, indexes), reply in zip(asked, replies, strict=False):
                version, generation, newest_then = int(reply[0]), text(reply[1]), int(reply[2])
                for i, best in zip(indexes, self._earliest_reply(reply, len(indexes)), strict=True):
                    of_key = asked_at(i)
                    best = {name: ms for name, ms in best.items() if name in of_key}
                    keep(rows[partition][i], (generation, version, best), newest_then)
            for (partition, entries), reply in zip(
                refine_asked, replies[len(asked) :], strict=True
            ):
                generation, newest_then = text(reply[1]), int(reply[2])
                for (key, _), fresh in zip(
                    entries, self._earliest_reply(reply, len(entries)), strict=True
                ):
                    was_generation, version, best, moved = partial[key]
                    if generation != was_generation:
                        # the state started anew since: read whole
                        wanted.setdefault(partition, []).append(rows[partition].index(key))
                        continue
                    of_key = asked_at(instant_of[key])
                    merged = {
                        name: ms
                        for name, ms in best.items()
                        if name not in moved and name in of_key
                    }
                    merged.update(
                        (name, ms) for name, ms in fresh.items() if name in moved and name in of_key
                    )
                    # stamped with the version the holding check read: the moves logged
                    # after it are looked at again
                    keep(key, (generation, version, merged), newest_then)
            for indexes in wanted.values():
                indexes.sort(key=lambda i: instants[i][0])
            partial = {}
        while len(kept) > EARLIEST_KEPT or (
            len(kept) > 1 and self._earliest_groups > EARLIEST_GROUPS_KEPT
        ):
            gone, answer = kept.popitem(last=False)
            self._earliest_groups -= _earliest_weight(gone, answer)
            if last.get((gone[0], gone[1], gone[4])) == gone:
                del last[(gone[0], gone[1], gone[4])]
            if present.get((gone[0], gone[4])) == gone:
                del present[(gone[0], gone[4])]
        out: list[dict[tuple[str, str], int]] = [{} for _ in instants]
        for row in keys:
            for i, key in enumerate(row):
                best = out[i]
                for group, ms in found[key].items():
                    if group not in best or ms < best[group]:
                        best[group] = ms
        return out

    @staticmethod
    def _earliest_reply(reply: Sequence[Any], count: int) -> list[dict[tuple[str, str], int]]:
        """A reply of :data:`_EARLIEST_AT` for ``count`` instants: per instant its answer."""
        intern = sys.intern
        per: list[dict[tuple[str, str], int]] = [{} for _ in range(count)]
        for k in range(3, len(reply), 3):
            name = text(reply[k + 1])
            per[int(reply[k]) - 1][(name[0], intern(name[1:]))] = int(reply[k + 2])
        return per

    async def _earliest_holding(
        self, keys: Sequence[_EarliestKey], newest_ms: Mapping[int, int]
    ) -> tuple[
        dict[_EarliestKey, dict[tuple[str, str], int]],
        dict[_EarliestKey, tuple[str, int, dict[tuple[str, str], int], set[tuple[str, str]]]],
    ]:
        """The kept answers among ``keys`` that still hold: read at this generation, no
        more than :data:`MOVES_KEPT` versions ago, and no commit since changed the live
        indexes' reading at their instant. And those a commit since changed, whose moved
        groups are known (``lgm``, logged by every commit since): per answer its
        generation, the version read here (the meta's, read before the groups: it stamps
        the answer made of them), the answer kept and the ``(kind, group)`` moved since,
        which alone are read again.

        An instant after every event of its partition (``newest_ms``), asked for the first
        time, takes the answer kept at an earlier such instant (the last minute's present)
        that way too: a group's open ticket found first is the first of its index whatever
        the instant after every event, and a waiting chat the first requested within the
        stale time before it, so the groups moved since and those whose chat found went
        stale in between are read again, the rest taken as they are."""
        kept = self._earliest_kept
        candidates = {key: kept[key] for key in keys if key in kept}
        # an instant asked for other groups than the answer kept for it (a group's first
        # ticket opened, or its last closed, since): that answer, but for the groups it
        # did not ask, read now, and those it asked that are not asked now, left out
        regrouped: dict[_EarliestKey, set[tuple[str, str]]] = {}
        # the partitions ask an instant for the very same tuples: each made a set once
        as_sets: dict[int, set[str]] = {}

        def as_set(groups: tuple[str, ...]) -> set[str]:
            made = as_sets.get(id(groups))
            if made is None:
                made = as_sets[id(groups)] = set(groups)
            return made

        #: the instants that take an answer kept at an earlier instant (see above)
        across: set[_EarliestKey] = set()
        for key in keys:
            near = None if key in kept else self._earliest_last.get((key[0], key[1], key[4]))
            if near is None and key not in kept and newest_ms.get(key[0], 0) < key[1]:
                earlier = self._earliest_present.get((key[0], key[4]))
                if earlier is not None and earlier[1] <= key[1] and earlier in kept:
                    near = earlier
                    across.add(key)
            if near is not None and near in kept:
                candidates[key] = kept[near]
                regrouped[key] = {
                    *(("t", g) for g in as_set(key[2]).symmetric_difference(near[2])),
                    *(("c", g) for g in as_set(key[3]).symmetric_difference(near[3])),
                }
                if key in across:
                    # the chats found that went stale between the two instants
                    stale_before = key[1] - key[4]
                    regrouped[key].update(
                        name
                        for name, ms in kept[near][2].items()
                        if name[0] == "c" and ms <= stale_before
                    )
        if not candidates:
            return {}, {}
        since: dict[int, int] = {}
        for (partition, *_), (_, version, _) in candidates.items():
            since[partition] = min(version, since.get(partition, version))
        parts = sorted(since)
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in parts:
                base = self.base(partition)
                pipe.hmget(base + "meta", ["version", "gen", "lgm:from", "lgm:to"])
                pipe.zrangebyscore(base + "lmoved", f"({since[partition]}", "+inf")
                pipe.zrangebyscore(base + "lgm", f"({since[partition]}", "+inf", withscores=True)
            replies = await pipe.execute()
        now: dict[
            int, tuple[int, str, list[tuple[int, int, int | None]], int, list[tuple[str, int]]]
        ] = {}
        for n, partition in enumerate(parts):
            (version, generation, lgm_from, lgm_to), moves, groups = replies[3 * n : 3 * n + 3]
            entries = []
            for member in moves:
                at_version, _, start, end = text(member).split(":")
                entries.append((int(at_version), int(start), int(end) if end else None))
            current = int(version or 0)
            # the groups are logged from lgm:from on, if the last commit logged them too
            # (a commit of a deskpulse that logs none breaks the run): none before
            logged_from = (
                int(lgm_from)
                if lgm_from is not None and lgm_to is not None and int(lgm_to) == current
                else current + 1
            )
            moved = [(text(member), int(score)) for member, score in groups]
            now[partition] = (current, text(generation or b""), entries, logged_from, moved)
        holding: dict[_EarliestKey, dict[tuple[str, str], int]] = {}
        partial: dict[
            _EarliestKey, tuple[str, int, dict[tuple[str, str], int], set[tuple[str, str]]]
        ] = {}
        for key, (generation, version, best) in candidates.items():
            current, current_generation, entries, logged_from, moved = now[key[0]]
            at_ms = key[1]
            if generation != current_generation or current - version >= MOVES_KEPT:
                continue
            other_groups = regrouped.get(key)
            # (another instant's answer reads again every group moved since, however the
            # moves lie against either instant)
            if key not in across and not any(
                start <= at_ms and (end is None or at_ms <= end)
                for at_version, start, end in entries
                if at_version > version
            ):
                if other_groups is None:
                    holding[key] = best
                    kept.move_to_end(key)
                else:  # nothing moved at the instant: the groups asked anew alone
                    partial[key] = (generation, version, best, other_groups)
            elif logged_from <= version + 1:
                names = {member for member, at_version in moved if at_version > version}
                if "*" not in names:
                    partial[key] = (
                        generation,
                        current,
                        best,
                        {(name[0], sys.intern(name[1:])) for name in names}
                        | (other_groups or set()),
                    )
        return holding, partial

    def _earliest_call(
        self,
        partition: int,
        instants: Sequence[tuple[int, Sequence[str], Sequence[str]]],
        stale_ms: int,
        newest_ms: Mapping[int, int],
        wants: dict[tuple[int, ...], tuple[bytes, bytes]],
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of :data:`_EARLIEST_AT` for one partition's ``instants``
        (ascending); ``wants`` keeps the groups of each list of instants encoded (the
        instants are told apart by their ms and the tuples of groups they ask, which
        :meth:`earliest_at` makes once for every partition)."""
        key = tuple(
            x for at_ms, tickets, chats in instants for x in (at_ms, id(tickets), id(chats))
        )
        encoded = wants.get(key)
        if encoded is None:
            ticket_wants: dict[str, list[int]] = {}
            chat_wants: dict[str, list[int]] = {}
            for n, (_, tickets, chats) in enumerate(instants, 1):
                for group in tickets:
                    ticket_wants.setdefault(group, []).append(n)
                for group in chats:
                    chat_wants.setdefault(group, []).append(n)
            encoded = wants[key] = (orjson.dumps(ticket_wants), orjson.dumps(chat_wants))
        newest = newest_ms.get(partition, 0)
        return [self.base(partition)], [
            orjson.dumps([at_ms for at_ms, _, _ in instants]),
            stale_ms,
            *encoded,
            orjson.dumps(["1" if newest >= at_ms else "0" for at_ms, _, _ in instants]),
        ]

    async def sla_candidates(
        self,
        partitions: Sequence[int],
        ticket_groups: Sequence[str],
        *,
        limit: int,
        per_group: int,
    ) -> list[tuple[int, str, float | None, bytes | str]]:
        """Tickets that may be at risk or breached now, with their states: per partition the
        ``limit`` of ``due`` with the soonest instants (a warned ticket waits there for its
        deadline) and the ``per_group`` oldest open tickets of each of ``ticket_groups``
        (a ticket whose every instance breached has nothing left in ``due``). Two pipelines,
        O(partitions x (limit + groups x per_group)) whatever the number of open tickets.

        ``(partition, ticket conversation id, due instant ms or None, state JSON)``, each
        ticket once; a ticket whose state is gone is left out."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                base = self.base(partition)
                pipe.zrange(base + "due", 0, limit - 1, withscores=True)
                for group in ticket_groups:
                    pipe.zrange(base + "lo:" + group, 0, per_group - 1)
            replies = await pipe.execute()
        wanted: dict[tuple[int, str], float | None] = {}
        per = 1 + len(ticket_groups)
        for n, partition in enumerate(partitions):
            due, *opens = replies[n * per : (n + 1) * per]
            for member, score in due:
                wanted[(partition, text(member))] = float(score)
            for members in opens:
                for member in members:
                    wanted.setdefault((partition, text(member)), None)
        if not wanted:
            return []
        keys = list(wanted)
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, conversation_id in keys:
                pipe.hget(self.base(partition) + "conv", conversation_id)
            states = await pipe.execute()
        return [
            (partition, conversation_id, wanted[(partition, conversation_id)], state)
            for (partition, conversation_id), state in zip(keys, states, strict=True)
            if state is not None
        ]

    async def read_meta(self) -> dict[int, dict[str, str]]:
        """Every partition's meta hash (for health metrics)."""
        parts = await self.partitions()
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in parts:
                pipe.hgetall(self.base(partition) + "meta")
            replies = await pipe.execute()
        return {
            p: {text(k): text(v) for k, v in r.items()} for p, r in zip(parts, replies, strict=True)
        }

    async def read_totals(self) -> Counter[str]:
        """The cumulative totals summed over partitions."""
        (totals,) = await self.sum_buckets(await self.partitions(), [["tot"]])
        return totals

    async def read_totals_by_group(self) -> dict[tuple[str, ...], dict[str, int]]:
        """:meth:`read_totals` per ``(channel, queue, priority)``.

        Incremental: the store keeps each partition's totals with the version it read them
        at, and reads again only the fields the commits since moved (``hmoved``); whole,
        on its first read, after a generation change, or once the log no longer covers the
        versions since (:data:`HASH_MOVES_KEPT`). A group no field of which moved is the
        same dict as in the last answer (read only: a caller may keep it and tell it
        unchanged by identity); a moved one is summed again over the partitions into a new
        dict. 6,000 groups hold 153,000 fields: read and split whole, a third of a refresh's
        1.2 s of CPU (benchmark section 11); a refresh 5 s after the last reads the few
        hundred groups 1,000 events moved.
        """
        partitions = await self.partitions()
        replies = await self._hashes_since("tot", partitions)
        # from here on no await: the kept hashes and the sums move together
        moved = self._take_moved("tot", partitions, replies)
        view = self._totals_view
        if view is None or view[0] != tuple(partitions) or view[1] != moved.before:
            groups: dict[tuple[str, ...], dict[str, int]] = {}
            for partition in partitions:
                for stored, fields in self._kept_groups(partition).items():
                    key = tuple(stored.split(SEP))
                    target = groups.get(key)
                    if target is None:
                        groups[key] = dict(fields)
                    else:
                        for name, value in fields.items():
                            target[name] = target.get(name, 0) + value
        else:
            groups = view[2]
            for stored in {name.rpartition(SEP)[0] for name in moved.names}:
                summed: dict[str, int] | None = None
                for partition in partitions:
                    part = self._kept_groups(partition).get(stored)
                    if part:
                        if summed is None:
                            summed = dict(part)
                        else:
                            for name, value in part.items():
                                summed[name] = summed.get(name, 0) + value
                key = tuple(stored.split(SEP))
                if summed is None:
                    groups.pop(key, None)
                else:
                    groups[key] = summed
        self._totals_view = (tuple(partitions), moved.after, groups)
        return dict(groups)

    def _kept_groups(self, partition: int) -> dict[str, dict[str, int]]:
        kept = self._hashes.get(("tot", partition))
        return {} if kept is None else kept.groups

    async def _hashes_since(self, name: str, partitions: Sequence[int]) -> list[Any]:
        """:data:`_HASH_SINCE` of hash ``name`` per partition, since the version kept."""
        calls = []
        known = orjson.dumps(sorted(self._hash_fields.setdefault(name, set())))
        part = "1" if name == "tot" else "2"
        for partition in partitions:
            kept = self._hashes.get((name, partition))
            since, generation = ("", "") if kept is None else (kept.version, kept.generation)
            calls.append(
                ([self.base(partition)], [since, generation, part, name, known, HASH_MOVES_KEPT])
            )
        return await self._pipelined_script(self._hash_since, calls)

    def _take_moved(self, name: str, partitions: Sequence[int], replies: Sequence[Any]) -> _Moved:
        """Apply :meth:`_hashes_since`'s replies to the kept hashes: the stamps of the kept
        partitions before and after, and the names of the fields that moved (those of a
        partition read whole: every one it had or has). A reply older than what a read
        beside it kept already is left out (the kept hash is newer)."""
        before = {p: self._hash_stamp(name, p) for p in partitions}
        names: set[str] = set()
        grouped = name == "tot"
        for partition, reply in zip(partitions, replies, strict=True):
            version, generation, whole = int(reply[0]), text(reply[1]), text(reply[2]) == "f"
            kept = self._hashes.get((name, partition))
            if kept is not None and kept.generation == generation and version <= kept.version:
                continue
            if not whole and (kept is None or kept.generation != generation):
                continue  # a delta against a hash a read beside this one replaced
            if whole or kept is None:
                if kept is not None:
                    names.update(kept.names())
                kept = self._hashes[(name, partition)] = _KeptHash(generation, version)
            kept.version = version
            intern = sys.intern
            known = self._hash_fields.setdefault(name, set())
            for k in range(3, len(reply), 2):
                field = intern(text(reply[k]))
                raw = reply[k + 1]
                if raw is None:
                    if not kept.has(field, grouped):
                        continue  # a field of a moved group that it does not have
                    kept.set(field, None, grouped)
                else:
                    kept.set(field, int(raw), grouped)
                    known.add(field.rpartition(SEP)[2])
                names.add(field)
        after = {p: self._hash_stamp(name, p) for p in partitions}
        return _Moved(before, after, names)

    def _hash_stamp(self, name: str, partition: int) -> tuple[str, int] | None:
        kept = self._hashes.get((name, partition))
        return None if kept is None else (kept.generation, kept.version)
