"""The Lua script that changes the cluster's shared state in Redis.

One script, loaded once per Redis server and called with ``EVALSHA`` and an
operation name, so that every change a node makes is atomic: counts,
presence members, signed-in users, the nodes interested in a channel or a
user, the delayed departures of webhooks, each node's own share of all of it
(taken out again when the node dies), and the pipes: groups' members,
sessions' queues (one Redis stream each), what was sent and acked, bounds and
drops. It needs Redis 6.2 or later (exclusive ``XRANGE`` bounds). It is data here: the core
decides which operation to call with which arguments
(:mod:`pipe_proto.cluster.node`), and the adapter only sends it.

The key layout and message shapes are described in ``docs/cluster.md``.
"""

from __future__ import annotations

import hashlib

__all__ = ["SCRIPT", "SCRIPT_SHA1"]

#: The script's source.
SCRIPT = r"""
-- The cluster's shared state, changed atomically (docs/cluster.md).
--
-- ARGV[1] is the operation, ARGV[2] the key prefix, ARGV[3] the calling
-- node's id; the rest depends on the operation. A node's own share of every
-- count lives in the hash P:node:{id} (fields "s|app|channel",
-- "m|app|channel|user", "u|app|user", "w|app|user", "c|app", "k|app|socket"),
-- so that a dead node's share can be taken out again. Answers a node must see
-- in order with the events other nodes cause go to its inbox (P:n:{id}) as
-- "r TOKEN\nJSON", after those events.
if redis.replicate_commands then redis.replicate_commands() end

-- (A local, so that "multi" can give each of its calls its own arguments.)
local ARGV = ARGV
local op, P, node = ARGV[1], ARGV[2], ARGV[3]
local transitions = {}
local ops = {}

-- ================================================================= common

local function akey(app, name) return P .. ':a:' .. app .. ':' .. name end
local function nkey(n) return P .. ':node:' .. n end
local function inbox(n) return P .. ':n:' .. n end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Answers to the calling node held back while "multi" runs, to go as one
-- bundle ("b"); nil when not holding.
local held = nil

local function flush_held()
  if held and #held > 0 then
    redis.call('PUBLISH', inbox(node), #held == 1 and held[1] or 'b\n' .. table.concat(held, '\n'))
    held = {}
  end
end

-- Every message goes through here: one for the calling node first sends the
-- answers held back, so that its inbox gets everything in order.
local function publish(n, msg)
  if n == node then flush_held() end
  redis.call('PUBLISH', inbox(n), msg)
end

-- Publish msg to the inbox of every node in set, except skip.
local function send(set, msg, skip)
  local sent = 0
  for _, n in ipairs(redis.call('SMEMBERS', set)) do
    if n ~= skip then
      publish(n, msg)
      sent = sent + 1
    end
  end
  return sent
end

-- Publish msg to every live node.
local function broadcast(msg)
  for _, n in ipairs(redis.call('ZRANGE', P .. ':nodes', 0, -1)) do
    publish(n, msg)
  end
end

local function reply(token, json)
  local msg = 'r ' .. token .. '\n' .. json
  if held and not string.find(json, '\n', 1, true) then
    held[#held + 1] = msg
  else
    publish(node, msg)
  end
end

local function transitions_json()
  local parts = {}
  for i, t in ipairs(transitions) do
    local quoted = {}
    for j, v in ipairs(t) do quoted[j] = cjson.encode(v) end
    parts[i] = '[' .. table.concat(quoted, ',') .. ']'
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

local function set_of(list)
  local s = {}
  for word in string.gmatch(list or '', '%S+') do s[word] = true end
  return s
end

-- The node's own count of field moves by delta; its interest set follows.
local function own(n, field, delta, interest)
  local v = redis.call('HINCRBY', nkey(n), field, delta)
  if v <= 0 then
    redis.call('HDEL', nkey(n), field)
    if interest then redis.call('SREM', interest, n) end
  elseif v == delta and interest then
    redis.call('SADD', interest, n)
  end
  return v
end

-- ============================================================== channels

-- A departure whose webhook waits (a quick return cancels both).
local function depart(app, field)
  local token = node .. '|' .. now_ms()
  redis.call('HSET', akey(app, 'delay'), field, token)
  return token
end

local function arrive(app, field)
  return redis.call('HDEL', akey(app, 'delay'), field) == 1
end

local function subscriptions(n, app, ch, delta, counted)
  local interest = akey(app, 'cn:' .. ch)
  own(n, 's|' .. app .. '|' .. ch, delta, interest)
  local total = redis.call('HINCRBY', akey(app, 'ch'), ch, delta)
  if total <= 0 then
    redis.call('HDEL', akey(app, 'ch'), ch)
    redis.call('HDEL', akey(app, 'miss'), ch)
    if total - delta > 0 then
      transitions[#transitions + 1] = {'vacated', app, ch, depart(app, 'v|' .. ch)}
    end
  elseif total == delta then
    transitions[#transitions + 1] = {arrive(app, 'v|' .. ch) and 'reoccupied' or 'occupied', app, ch}
  end
  if counted == '1' and total > 0 and string.sub(ch, 1, 9) ~= 'presence-' then
    send(interest, 'n ' .. app .. ' ' .. ch .. '\n{"event":"pusher_internal:subscription_count","channel":"'
      .. ch .. '","data":"{\\"subscription_count\\":' .. total .. '}"}')
  end
  return total
end

local function member(n, app, ch, user, delta, info, removed, added)
  own(n, 'm|' .. app .. '|' .. ch .. '|' .. user, delta, nil)
  local counts, infos, frames = akey(app, 'pm:' .. ch), akey(app, 'pi:' .. ch), akey(app, 'pr:' .. ch)
  local total = redis.call('HINCRBY', counts, user, delta)
  local frame = nil
  if total <= 0 then
    redis.call('HDEL', counts, user)
    frame = redis.call('HGET', frames, user)
    redis.call('HDEL', infos, user)
    redis.call('HDEL', frames, user)
    if total - delta > 0 then
      transitions[#transitions + 1] = {'removed', app, ch, user, depart(app, 'r|' .. ch .. '|' .. user)}
    else
      frame = nil
    end
  elseif total == delta then
    redis.call('HSET', infos, user, info)
    redis.call('HSET', frames, user, removed)
    frame = added
    transitions[#transitions + 1] = {arrive(app, 'r|' .. ch .. '|' .. user) and 'readded' or 'added', app, ch, user}
  end
  if frame then
    send(akey(app, 'cn:' .. ch), 'm ' .. app .. ' ' .. ch .. '\n' .. frame)
  end
end

local function user_in(n, app, uid, delta)
  own(n, 'u|' .. app .. '|' .. uid, delta, akey(app, 'un:' .. uid))
  local total = redis.call('HINCRBY', akey(app, 'users'), uid, delta)
  if total <= 0 then
    redis.call('HDEL', akey(app, 'users'), uid)
    if total - delta > 0 then
      send(akey(app, 'wn:' .. uid), 'w ' .. app .. ' ' .. uid .. ' offline')
    end
  elseif total == delta then
    send(akey(app, 'wn:' .. uid), 'w ' .. app .. ' ' .. uid .. ' online')
  end
end

local function watch(n, app, uid, delta)
  own(n, 'w|' .. app .. '|' .. uid, delta, akey(app, 'wn:' .. uid))
end

local function connections(n, app, delta)
  own(n, 'c|' .. app, delta, nil)
  local total = redis.call('INCRBY', akey(app, 'conns'), delta)
  if total <= 0 then redis.call('DEL', akey(app, 'conns')) end
  return total
end

-- Apply delta to one field of a node's share (resync, reaping).
local function change(n, field, delta, info, removed, added, counted)
  local kind, app, rest = string.match(field, '^(%a)|([^|]*)|?(.*)$')
  if kind == 's' then
    subscriptions(n, app, rest, delta, counted[app] and '1' or '0')
  elseif kind == 'm' then
    local ch, user = string.match(rest, '^([^|]*)|(.*)$')
    member(n, app, ch, user, delta, info, removed, added)
  elseif kind == 'u' then
    user_in(n, app, rest, delta)
  elseif kind == 'w' then
    watch(n, app, rest, delta)
  elseif kind == 'c' then
    connections(n, app, delta)
  elseif kind == 'k' then
    own(n, field, delta, nil)
    if delta < 0 and n ~= node then
      -- A socket of a dead node: its pipes hear it closed, from this node.
      transitions[#transitions + 1] = {'lost', app, rest}
    end
  end
end

-- ================================================================= pipes
--
-- A pipe group's members are sessions, listed for the whole cluster in the
-- hash P:a:{app}:pg (session -> {"g": group, "v": version, "t": types, "n":
-- node holding its pipe or "", "p": that pipe}); every change to it is
-- announced to every node ("pm"). A 1.0 session's events wait in its stream
-- P:a:{app}:pq:{session}, unacked ones included; its hash P:a:{app}:ps:{session}
-- marks how far it was acked (acked_id, acked_seq), sent since its pipe came
-- (sent_id, sent_seq) and ever sent (high_id, high_seq); the stream holds
-- only what follows the acked point, so acked_id (and sent_id when nothing
-- was sent since) may be any id at or before it: compare marks by seq.
-- Entries between acked and high are in flight and have the seqs
-- acked_seq + 1 ... in order; entries after high are unsent, and only those
-- are ever dropped. A group's counters are P:a:{app}:pgs:{group}; its buffer
-- (events no member takes) the stream P:a:{app}:pb:{group}. Sessions in
-- their resume grace are in the sorted set P:a:{app}:pgrace by the time it
-- ends.

local OVERHEAD = 320 -- bytes counted per event besides its text (pipes.EVENT_OVERHEAD)
local SCAN = 32 -- unsent events looked at per queue when choosing what to drop
local CONTROL = {channel_existence = true, presence = true}

local function score(key, sid)
  return tonumber(string.sub(redis.sha1hex(key .. '\0' .. sid), 1, 13), 16)
end

local function pipe_members(app)
  local raw = redis.call('HGETALL', akey(app, 'pg'))
  local all = {}
  for i = 1, #raw, 2 do all[raw[i]] = cjson.decode(raw[i + 1]) end
  return all
end

local function has_type(m, t)
  return string.find(' ' .. m.t .. ' ', ' ' .. t .. ' ', 1, true) ~= nil
end

local function sorted_sessions(all, group)
  local sids = {}
  for sid, m in pairs(all) do
    if m.g == group then sids[#sids + 1] = sid end
  end
  table.sort(sids)
  return sids
end

local function owner(all, group, t, key)
  local best, best_score = nil, -1
  for sid, m in pairs(all) do
    if m.g == group and has_type(m, t) then
      local s = score(key, sid)
      if s > best_score then best, best_score = sid, s end
    end
  end
  return best
end

local function announce(app, sid, m)
  broadcast('pm ' .. app .. ' ' .. sid .. '\n' .. (m and cjson.encode(m) or ''))
end

local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

local function id_le(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as <= bs)
end

local function entry_size(f)
  return #f.d + OVERHEAD
end

local function notify(app, sid, m)
  if m and m.n ~= '' then
    publish(m.n, 'pn ' .. app .. ' ' .. sid)
  end
end

local function gkey(app, group) return akey(app, 'pgs:' .. group) end
local function qkey(app, sid) return akey(app, 'pq:' .. sid) end
local function skey(app, sid) return akey(app, 'ps:' .. sid) end

-- A session's credit: how many events (and bytes) its node said its pipe
-- has room for, less those in flight that the node had not seen when it
-- asked (their seqs after "seen", the last the node had). While it lasts,
-- new events go to the node at once ("pe") instead of waiting for a read.
local function grant(sk, s, room, room_bytes, seen)
  local transit = tonumber(s.sent_seq) - math.max(seen, tonumber(s.acked_seq))
  if transit < 0 then transit = 0 end
  redis.call('HSET', sk, 'credit', math.max(0, room - transit), 'credit_bytes', math.max(0, room_bytes))
end

-- The session's marks when an event for it may be pushed: it has credit,
-- nothing waits to be replayed, read or reported.
local function pushable(app, sid)
  local s = fields_of(redis.call('HGETALL', skey(app, sid)))
  if tonumber(s.credit or '0') <= 0 or s.sent_seq ~= s.high_seq or tonumber(s.unreported or '0') > 0 then
    return false
  end
  local last = redis.call('XREVRANGE', qkey(app, sid), '+', '-', 'COUNT', 1)[1]
  if last and last[1] ~= s.high_id then return false end
  s.credit, s.credit_bytes = tonumber(s.credit), tonumber(s.credit_bytes)
  s.high_seq, s.lines, s.last_id = tonumber(s.high_seq), {}, nil
  return s
end

-- Add an entry (fields f) to session sid's queue, or the group's buffer.
-- With told, the session's node is told later (told[sid] set), not now.
local function enqueue(app, all, group, sid, f, told)
  local flat = {}
  for _, name in ipairs({'t', 'k', 'n', 'd', 'b', 'r'}) do
    flat[#flat + 1] = name
    flat[#flat + 1] = f[name]
  end
  redis.call('XADD', sid and qkey(app, sid) or akey(app, 'pb:' .. group), '*', unpack(flat))
  redis.call('HINCRBY', gkey(app, group), 'pending', 1)
  redis.call('HINCRBY', gkey(app, group), 'pending_bytes', entry_size(f))
  if not sid then
    redis.call('SADD', akey(app, 'pgroups'), group)
  elseif told then
    told[sid] = true
  else
    notify(app, sid, all[sid])
  end
end

-- Tell count drops (of events of type t) to a connected member: the session
-- that lost the event if connected, else the first connected member taking
-- t, else the first connected member; with none, the next to connect.
local function report(app, all, group, count, lost, t)
  local target = nil
  if lost and all[lost] and all[lost].n ~= '' then target = lost end
  if not target then
    local first = nil
    for _, sid in ipairs(sorted_sessions(all, group)) do
      local m = all[sid]
      if m.n ~= '' and m.v ~= '0.2' then
        first = first or sid
        if not target and (t == nil and m.t ~= '' or t ~= nil and has_type(m, t)) then target = sid end
      end
    end
    target = target or first
  end
  if target then
    redis.call('HINCRBY', skey(app, target), 'unreported', count)
    notify(app, target, all[target])
  else
    redis.call('HINCRBY', gkey(app, group), 'unreported', count)
  end
end

-- Drop the oldest unsent control notification of the group, else its
-- oldest unsent event (looking at the first SCAN unsent of each queue).
local function drop_one(app, all, group)
  local queues = {{akey(app, 'pb:' .. group), '-', nil}}
  for _, sid in ipairs(sorted_sessions(all, group)) do
    if all[sid].v ~= '0.2' then
      local high = redis.call('HGET', skey(app, sid), 'high_id') or '0-0'
      queues[#queues + 1] = {qkey(app, sid), '(' .. high, sid}
    end
  end
  local control, any = nil, nil
  for _, q in ipairs(queues) do
    local entries = redis.call('XRANGE', q[1], q[2], '+', 'COUNT', SCAN)
    local seen_any = false
    for _, e in ipairs(entries) do
      local f = fields_of(e[2])
      if f.n ~= 'gap' then
        local candidate = {q, e[1], f, tonumber(f.b)}
        if not seen_any then
          seen_any = true
          if not any or candidate[4] < any[4] then any = candidate end
        end
        if CONTROL[f.t] then
          if not control or candidate[4] < control[4] then control = candidate end
          break
        end
      end
    end
  end
  local victim = control or any
  if not victim then return false end
  redis.call('XDEL', victim[1][1], victim[2])
  local gs = gkey(app, group)
  redis.call('HINCRBY', gs, 'pending', -1)
  redis.call('HINCRBY', gs, 'pending_bytes', -entry_size(victim[3]))
  redis.call('HINCRBY', gs, 'dropped', 1)
  report(app, all, group, 1, victim[1][3], victim[3].t)
  return true
end

local function bound(app, all, group, max_events, max_bytes)
  local gs = gkey(app, group)
  while tonumber(redis.call('HGET', gs, 'pending') or '0') > max_events
      or tonumber(redis.call('HGET', gs, 'pending_bytes') or '0') > max_bytes do
    if not drop_one(app, all, group) then break end
  end
end

-- Move the group's buffer to the members that now take its events.
local function drain(app, all, group)
  local buffer = akey(app, 'pb:' .. group)
  for _, e in ipairs(redis.call('XRANGE', buffer, '-', '+')) do
    local f = fields_of(e[2])
    local sid = owner(all, group, f.t, f.k)
    if sid then
      redis.call('XDEL', buffer, e[1])
      -- Unsent before and after: the group's pending counts do not change.
      redis.call('HINCRBY', gkey(app, group), 'pending', -1)
      redis.call('HINCRBY', gkey(app, group), 'pending_bytes', -entry_size(f))
      enqueue(app, all, group, sid, f)
    end
  end
end

local function forget_group_if_idle(app, all, group)
  if #sorted_sessions(all, group) == 0 and redis.call('XLEN', akey(app, 'pb:' .. group)) == 0
      and tonumber(redis.call('HGET', gkey(app, group), 'unreported') or '0') == 0 then
    redis.call('DEL', gkey(app, group), akey(app, 'pb:' .. group))
    redis.call('SREM', akey(app, 'pgroups'), group)
  end
end

-- Acknowledge up to seq: in-flight entries up to it are done. They are the
-- stream's first ones (it holds what follows the acked point, in flight
-- first, in seq order), so they are trimmed without being read; acked_id
-- stays an id at or before the acked point, which is all its readers need
-- (an exclusive start that now finds the stream's head).
local function acknowledge(app, sid, seq)
  local sk, q = skey(app, sid), qkey(app, sid)
  local s = fields_of(redis.call('HGETALL', sk))
  if not s.acked_seq then return 0, s end  -- the session ended meanwhile
  local acked = tonumber(s.acked_seq)
  seq = math.min(seq, tonumber(s.high_seq))
  if seq <= acked then return 0, s end
  local length = redis.call('XLEN', q)
  local done = math.min(seq - acked, length)
  redis.call('XTRIM', q, 'MAXLEN', length - done)
  s.acked_seq = acked + done
  redis.call('HSET', sk, 'acked_seq', s.acked_seq)
  -- A resumed pipe re-reads what is in flight: never from before the acked point.
  if tonumber(s.sent_seq) < s.acked_seq then
    s.sent_id, s.sent_seq = s.acked_id, s.acked_seq
    redis.call('HSET', sk, 'sent_id', s.sent_id, 'sent_seq', s.sent_seq)
  end
  -- (Done, and the session's marks as they are now.)
  return done, s
end

-- End a session for good: its events move to the members that take them now.
local function end_session(app, all, sid, left, limits)
  local m = all[sid]
  if not m then return end
  local group = m.g
  all[sid] = nil
  redis.call('HDEL', akey(app, 'pg'), sid)
  redis.call('ZREM', akey(app, 'pgrace'), sid)
  announce(app, sid, nil)
  local gs = gkey(app, group)
  local routed_at = tonumber(redis.call('HGET', gs, 'routed_at') or '0')
  redis.call('HSET', gs, 'routed_at', now_ms())
  if m.v ~= '0.2' then
    local s = fields_of(redis.call('HGETALL', skey(app, sid)))
    local unreported = tonumber(s.unreported or '0')
    local high = s.high_id or '0-0'
    for _, e in ipairs(redis.call('XRANGE', qkey(app, sid), '(' .. (s.acked_id or '0-0'), '+')) do
      local f = fields_of(e[2])
      local sent = id_le(e[1], high)
      if f.n == 'gap' then
        -- An unacked gap report: those drops are still unreported.
        unreported = unreported + tonumber(f.c or '0')
      else
        if not sent then
          redis.call('HINCRBY', gs, 'pending', -1)
          redis.call('HINCRBY', gs, 'pending_bytes', -entry_size(f))
        end
        -- Marked if it may have been processed there, if the member did not
        -- leave cleanly, or if keys moved since it was produced (its new
        -- owner may hold newer events of its key: order is for unmarked ones).
        if f.r ~= '1' and (sent or left ~= '1' or tonumber(f.b) <= routed_at) then
          f.r = '1'
          redis.call('HINCRBY', gs, 'redelivered', 1)
        end
        enqueue(app, all, group, owner(all, group, f.t, f.k), f)
      end
    end
    redis.call('DEL', qkey(app, sid), skey(app, sid))
    if unreported > 0 then report(app, all, group, unreported, nil, nil) end
    bound(app, all, group, limits[1], limits[2])
  end
  forget_group_if_idle(app, all, group)
end

local function expire(app, limits, ttl)
  local all = pipe_members(app)
  local now = now_ms()
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', akey(app, 'pgrace'), '-inf', now)) do
    end_session(app, all, sid, '0', limits)
  end
  for _, group in ipairs(redis.call('SMEMBERS', akey(app, 'pgroups'))) do
    local buffer = akey(app, 'pb:' .. group)
    for _, e in ipairs(redis.call('XRANGE', buffer, '-', '+')) do
      local f = fields_of(e[2])
      if tonumber(f.b) + ttl > now then break end
      redis.call('XDEL', buffer, e[1])
      local gs = gkey(app, group)
      redis.call('HINCRBY', gs, 'pending', -1)
      redis.call('HINCRBY', gs, 'pending_bytes', -entry_size(f))
      redis.call('HINCRBY', gs, 'dropped', 1)
      report(app, all, group, 1, nil, f.t)
    end
    forget_group_if_idle(app, all, group)
  end
end

-- A member's pipe went away (or its node died): it waits for its resume.
local function detach(app, all, sid, grace)
  local m = all[sid]
  if m.v == '0.2' then
    end_session(app, all, sid, '1', {math.huge, math.huge})
    return
  end
  m.n, m.p = '', ''
  redis.call('HSET', akey(app, 'pg'), sid, cjson.encode(m))
  redis.call('HSET', skey(app, sid), 'credit', 0)
  redis.call('ZADD', akey(app, 'pgrace'), now_ms() + grace, sid)
  announce(app, sid, m)
end

-- ================================================================ channel ops

function ops.join()
  local app, ch, token, counted, cached = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local user = ARGV[9]
  if user then
    local counts = akey(app, 'pm:' .. ch)
    if redis.call('HEXISTS', counts, user) == 0 and redis.call('HLEN', counts) >= tonumber(ARGV[13]) then
      reply(token, '{"refused":true}')
      return 0
    end
  end
  local total = subscriptions(node, app, ch, 1, counted)
  local members = 'null'
  if user then
    member(node, app, ch, user, 1, ARGV[10], ARGV[11], ARGV[12])
    members = '[' .. table.concat(redis.call('HVALS', akey(app, 'pi:' .. ch)), ',') .. ']'
  end
  local cache, miss = 'null', 'false'
  if cached == '1' then
    local value = redis.call('GET', akey(app, 'cache:' .. ch))
    if value then
      cache = value
    elseif redis.call('HSETNX', akey(app, 'miss'), ch, 1) == 1 then
      miss = 'true'
    end
  end
  reply(token, '{"count":' .. total .. ',"members":' .. members .. ',"cache":' .. cache .. ',"miss":' .. miss
    .. ',"transitions":' .. transitions_json() .. '}')
  return 1
end

function ops.leave()
  local app, ch, counted, user = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  if user then member(node, app, ch, user, -1) end
  local total = subscriptions(node, app, ch, -1, counted)
  return '{"count":' .. math.max(total, 0) .. ',"transitions":' .. transitions_json() .. '}'
end

function ops.members()
  return redis.call('HVALS', akey(ARGV[4], 'pi:' .. ARGV[5]))
end

function ops.signin()
  local app, uid, token = ARGV[4], ARGV[5], ARGV[6]
  user_in(node, app, uid, 1)
  local online = {}
  for i = 7, #ARGV do
    watch(node, app, ARGV[i], 1)
    if redis.call('HEXISTS', akey(app, 'users'), ARGV[i]) == 1 then online[#online + 1] = ARGV[i] end
  end
  reply(token, cjson.encode({online = online}))
  return 1
end

function ops.signout()
  local app, uid = ARGV[4], ARGV[5]
  for i = 6, #ARGV do watch(node, app, ARGV[i], -1) end
  user_in(node, app, uid, -1)
  return 1
end

function ops.conn()
  local app, delta, limit, token = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  if delta > 0 and limit > 0 and tonumber(redis.call('GET', akey(app, 'conns')) or '0') >= limit then
    reply(token, '{"refused":true}')
    return 0
  end
  connections(node, app, delta)
  if token then reply(token, '{"refused":false}') end
  return 1
end

-- A socket pipes know of: its node's share lists it, so a dead node's
-- sockets can be told closed.
function ops.sock()
  own(node, 'k|' .. ARGV[4] .. '|' .. ARGV[5], tonumber(ARGV[6]), nil)
  return 1
end

-- ARGV: app, channel, excluded socket or "-", frame, cache ttl (ms, 0: not
-- cached), cached JSON, and a reply token or "-". With a token, each node
-- reached answers how many sockets it sent to; returns how many nodes.
function ops.pub()
  local app, ch, exclude, frame, ttl, token = ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[10]
  if ttl > 0 then
    redis.call('SET', akey(app, 'cache:' .. ch), ARGV[9], 'PX', ttl)
    redis.call('HDEL', akey(app, 'miss'), ch)
  end
  local head = 'e ' .. app .. ' ' .. ch .. ' ' .. exclude
  if token and token ~= '-' then head = head .. ' ' .. node .. ' ' .. token end
  return send(akey(app, 'cn:' .. ch), head .. '\n' .. frame, node)
end

-- ARGV: app, user, excluded socket or "-", frame, and a reply token or "-" (as for pub).
function ops.touser()
  local app, uid, exclude, frame, token = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local head = 'u ' .. app .. ' ' .. uid .. ' ' .. exclude
  if token and token ~= '-' then head = head .. ' ' .. node .. ' ' .. token end
  return send(akey(app, 'un:' .. uid), head .. '\n' .. frame, node)
end

-- With a token (ARGV[6]), each node reached answers how many sockets it closed.
function ops.term()
  local app, uid, token = ARGV[4], ARGV[5], ARGV[6]
  local head = 't ' .. app .. ' ' .. uid
  if token and token ~= '-' then head = head .. ' ' .. node .. ' ' .. token end
  return send(akey(app, 'un:' .. uid), head, node)
end

-- A message for one node's inbox (requests between nodes and their answers).
function ops.tell()
  publish(ARGV[4], ARGV[5])
  return 1
end

-- Returns the time, and 1 when this node was not listed: another node
-- reaped it while it was silent (paused), so it must start afresh.
function ops.beat()
  local now = now_ms()
  local added = redis.call('ZADD', P .. ':nodes', now, node)
  redis.call('HSET', P .. ':info', node, ARGV[4])
  return {now, added}
end

function ops.confirm()
  local app, field, token = ARGV[4], ARGV[5], ARGV[6]
  if redis.call('HGET', akey(app, 'delay'), field) == token then
    redis.call('HDEL', akey(app, 'delay'), field)
    return 1
  end
  return 0
end

-- The departures node n holds back in app (their webhooks waiting their
-- delay): their fields, with only_forgotten those its resync marked so
-- (see rs_begin) and nothing has cancelled since.
local function held_by(app, n, only_forgotten)
  local delays, fields = redis.call('HGETALL', akey(app, 'delay')), {}
  for j = 1, #delays, 2 do
    local token = delays[j + 1]
    if only_forgotten and token == n .. '|forgotten'
        or not only_forgotten and string.sub(token, 1, #n + 1) == n .. '|' then
      fields[#fields + 1] = delays[j]
    end
  end
  return fields
end

-- Those departures are due now (n is dead, or its resync found them forgotten).
local function due_departures(app, n, only_forgotten)
  for _, field in ipairs(held_by(app, n, only_forgotten)) do
    redis.call('HDEL', akey(app, 'delay'), field)
    transitions[#transitions + 1] = {'due', app, field}
  end
end

-- ARGV: dead bound (ms), apps with subscription counts, all apps, and the
-- resume grace of each app (ms), in the order of the apps.
function ops.reap()
  local bound_ms, counted, apps = tonumber(ARGV[4]), set_of(ARGV[5]), {}
  for app in string.gmatch(ARGV[6], '%S+') do apps[#apps + 1] = app end
  local graces = {}
  local i = 0
  for grace in string.gmatch(ARGV[7] or '', '%S+') do
    i = i + 1
    graces[apps[i]] = tonumber(grace)
  end
  local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now_ms() - bound_ms)
  for _, d in ipairs(dead) do
    if d ~= node then
      redis.call('ZREM', P .. ':nodes', d)
      redis.call('HDEL', P .. ':info', d)
      -- Its share, and what an interrupted resync left aside.
      for _, key in ipairs({nkey(d), nkey(d) .. ':old'}) do
        local share = redis.call('HGETALL', key)
        redis.call('DEL', key)
        for j = 1, #share, 2 do
          change(d, share[j], -tonumber(share[j + 1]), nil, nil, nil, counted)
        end
      end
      for _, app in ipairs(apps) do
        -- The dead node's delayed webhooks are due now, from this node.
        due_departures(app, d, false)
        -- Its pipes are gone: their sessions wait for their backends' resume.
        local all = pipe_members(app)
        for sid, m in pairs(all) do
          if m.n == d then detach(app, all, sid, graces[app] or 10000) end
        end
      end
      transitions[#transitions + 1] = {'reaped', d}
    end
  end
  return transitions_json()
end

-- ARGV[4]: all apps. The departures this node held back before the outage
-- are marked forgotten: it lost track of them when the link broke (and may
-- never have heard of some, whose answers were lost), and nobody else would
-- send them. rs_add cancels those whose channel or member came back on this
-- node meanwhile (a comeback elsewhere did already); rs_end makes the rest due.
function ops.rs_begin()
  local mine, old = nkey(node), nkey(node) .. ':old'
  if redis.call('EXISTS', old) == 1 then
    local share = redis.call('HGETALL', mine)
    for i = 1, #share, 2 do redis.call('HINCRBY', old, share[i], share[i + 1]) end
    redis.call('DEL', mine)
  elseif redis.call('EXISTS', mine) == 1 then
    redis.call('RENAME', mine, old)
  end
  redis.call('ZADD', P .. ':nodes', now_ms(), node)
  for app in string.gmatch(ARGV[4] or '', '%S+') do
    for _, field in ipairs(held_by(app, node, false)) do
      redis.call('HSET', akey(app, 'delay'), field, node .. '|forgotten')
    end
  end
  return 1
end

-- ARGV[4]: apps with subscription counts; then groups of five:
-- field, count, info, removed frame, added frame.
function ops.rs_add()
  local old, counted = nkey(node) .. ':old', set_of(ARGV[4])
  for i = 5, #ARGV, 5 do
    local field = ARGV[i]
    local before = tonumber(redis.call('HGET', old, field) or '0')
    redis.call('HDEL', old, field)
    -- The old share moves over as it was, then changes by the difference.
    if before > 0 then redis.call('HINCRBY', nkey(node), field, before) end
    local delta = tonumber(ARGV[i + 1]) - before
    if delta ~= 0 then
      change(node, field, delta, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], counted)
    end
  end
  return transitions_json()
end

-- ARGV[4]: apps with subscription counts; ARGV[5]: all apps.
function ops.rs_end()
  local old, counted = nkey(node) .. ':old', set_of(ARGV[4])
  -- Before what is left of the old share goes (its departures are new ones).
  for app in string.gmatch(ARGV[5] or '', '%S+') do due_departures(app, node, true) end
  local share = redis.call('HGETALL', old)
  redis.call('DEL', old)
  for i = 1, #share, 2 do
    local before = tonumber(share[i + 1])
    redis.call('HINCRBY', nkey(node), share[i], before)
    change(node, share[i], -before, nil, nil, nil, counted)
  end
  return transitions_json()
end

function ops.channels()
  local app, prefix, users = ARGV[4], ARGV[5], ARGV[6] == '1'
  local all = redis.call('HGETALL', akey(app, 'ch'))
  local found = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #prefix) == prefix then
      found[#found + 1] = all[i]
      found[#found + 1] = all[i + 1]
      found[#found + 1] = users and redis.call('HLEN', akey(app, 'pm:' .. all[i])) or 0
    end
  end
  return found
end

function ops.channel()
  local app, ch = ARGV[4], ARGV[5]
  local key = akey(app, 'cache:' .. ch)
  return {
    redis.call('HGET', akey(app, 'ch'), ch) or '0',
    redis.call('HLEN', akey(app, 'pm:' .. ch)),
    redis.call('GET', key) or '',
    redis.call('PTTL', key),
  }
end

function ops.users()
  return redis.call('HKEYS', akey(ARGV[4], 'pm:' .. ARGV[5]))
end

function ops.nodes()
  return {redis.call('ZRANGE', P .. ':nodes', 0, -1, 'WITHSCORES'), redis.call('HGETALL', P .. ':info')}
end

-- =================================================================== pipe ops

-- ARGV: app, pipe, version, group, new session id, wanted session or "",
-- last_seq or -1, max groups. Answers through the inbox (token ARGV[12]):
-- {"session", "resumed", "gap", "types"}, or {"error"}.
function ops.pattach()
  local app, pipe, version, group, new_sid, wanted, last_seq = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
    ARGV[9], tonumber(ARGV[10])
  local max_groups, token = tonumber(ARGV[11]), ARGV[12]
  local all = pipe_members(app)
  local m = wanted ~= '' and all[wanted] or nil
  if m and m.v ~= '0.2' and version ~= '0.2' and m.g == group then
    if m.n ~= '' and not (m.n == node and m.p == pipe) then
      -- The process came back before its old connection was seen to die.
      publish(m.n, 'px ' .. app .. ' ' .. wanted .. ' ' .. m.p)
    end
    m.n, m.p = node, pipe
    redis.call('HSET', akey(app, 'pg'), wanted, cjson.encode(m))
    redis.call('ZREM', akey(app, 'pgrace'), wanted)
    if last_seq >= 0 then acknowledge(app, wanted, last_seq) end
    -- Everything in flight goes out again, with its seq: re-read from the acked point.
    local s = fields_of(redis.call('HGETALL', skey(app, wanted)))
    redis.call('HSET', skey(app, wanted), 'sent_id', s.acked_id, 'sent_seq', s.acked_seq, 'credit', 0)
    local gs = gkey(app, group)
    local unreported = tonumber(s.unreported or '0') + tonumber(redis.call('HGET', gs, 'unreported') or '0')
    redis.call('HSET', gs, 'unreported', 0)
    redis.call('HSET', skey(app, wanted), 'unreported', unreported)
    announce(app, wanted, m)
    reply(token, cjson.encode({session = wanted, resumed = true, gap = unreported, types = m.t,
      seq = tonumber(s.acked_seq)}))
    return 1
  end
  if version == '0.2' then group = '0.2:' .. pipe end
  local known = {}
  for _, other in pairs(all) do known[other.g] = true end
  local count = 0
  for _ in pairs(known) do count = count + 1 end
  if not known[group] and count >= max_groups then
    reply(token, '{"error":"too many pipe groups"}')
    return 0
  end
  m = {g = group, v = version, t = '', n = node, p = pipe}
  redis.call('HSET', akey(app, 'pg'), new_sid, cjson.encode(m))
  local gs = gkey(app, group)
  local unreported = tonumber(redis.call('HGET', gs, 'unreported') or '0')
  redis.call('HSET', gs, 'unreported', 0)
  if version ~= '0.2' then
    redis.call('HSET', skey(app, new_sid), 'group', group, 'acked_id', '0-0', 'acked_seq', 0, 'sent_id', '0-0',
      'sent_seq', 0, 'high_id', '0-0', 'high_seq', 0, 'unreported', unreported, 'credit', 0)
  end
  redis.call('SADD', akey(app, 'pgroups'), group)
  announce(app, new_sid, m)
  reply(token, cjson.encode({session = new_sid, resumed = false, gap = unreported, types = '', seq = 0}))
  return 1
end

-- ARGV: app, session, pipe, grace (ms): the pipe went away.
function ops.pdetach()
  local app, sid, pipe = ARGV[4], ARGV[5], ARGV[6]
  local all = pipe_members(app)
  local m = all[sid]
  if m and m.p == pipe and m.n == node then detach(app, all, sid, tonumber(ARGV[7])) end
  return 1
end

-- ARGV: app, session, pipe, buffer events, buffer bytes: the member leaves for good.
function ops.pleave()
  local app, sid, pipe = ARGV[4], ARGV[5], ARGV[6]
  local all = pipe_members(app)
  local m = all[sid]
  if m and m.p == pipe then end_session(app, all, sid, '1', {tonumber(ARGV[7]), tonumber(ARGV[8])}) end
  return 1
end

-- ARGV: app, session, types to add (space separated). Error when auth is held by another group.
function ops.psub()
  local app, sid, types = ARGV[4], ARGV[5], ARGV[6]
  local all = pipe_members(app)
  local m = all[sid]
  if not m then return 0 end
  if has_type({t = types}, 'auth') then
    for other, o in pairs(all) do
      if o.g ~= m.g and has_type(o, 'auth') then
        return redis.error_reply('AUTH_HELD ' .. o.g)
      end
    end
  end
  local wanted = set_of(m.t)
  for t in string.gmatch(types, '%S+') do wanted[t] = true end
  local list = {}
  for t in pairs(wanted) do list[#list + 1] = t end
  table.sort(list)
  m.t = table.concat(list, ' ')
  redis.call('HSET', akey(app, 'pg'), sid, cjson.encode(m))
  redis.call('HSET', gkey(app, m.g), 'routed_at', now_ms())
  announce(app, sid, m)
  drain(app, all, m.g)
  return 1
end

function ops.punsub()
  local app, sid, types = ARGV[4], ARGV[5], ARGV[6]
  local all = pipe_members(app)
  local m = all[sid]
  if not m then return 0 end
  local gone = set_of(types)
  local list = {}
  for t in string.gmatch(m.t, '%S+') do
    if not gone[t] then list[#list + 1] = t end
  end
  m.t = table.concat(list, ' ')
  redis.call('HSET', akey(app, 'pg'), sid, cjson.encode(m))
  redis.call('HSET', gkey(app, m.g), 'routed_at', now_ms())
  announce(app, sid, m)
  return 1
end

-- Split s at each sep (a plain string).
local function split(s, sep)
  local out, i = {}, 1
  while true do
    local j = string.find(s, sep, i, true)
    if not j then
      out[#out + 1] = string.sub(s, i)
      return out
    end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- ARGV: app, buffer events, buffer bytes, events: one argument of records
-- joined by \30, each of fields joined by \31 (pipes.PP_RECORD, PP_FIELD):
-- type, key, notification name, 1.0 data (JSON), 0.2 frame, born (ms).
-- Several events may come in one call. Every group taking the type gets the
-- event, its member chosen by rendezvous on key; a member's node is told once
-- per call.
function ops.pp()
  local app, max_events, max_bytes = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local all = pipe_members(app)
  local told, push, routes, delivered = {}, {}, {}, {}
  -- The marks and counters pushes moved, written once per call (and before
  -- anything that reads them: a drop looks at sessions' marks).
  local function settle()
    for sid, s in pairs(push) do
      if s and s.last_id then
        redis.call('HSET', skey(app, sid), 'sent_id', s.last_id, 'sent_seq', s.high_seq, 'high_id', s.last_id,
          'high_seq', s.high_seq, 'credit', s.credit, 'credit_bytes', s.credit_bytes)
        s.last_id = nil
      end
    end
    for group, n in pairs(delivered) do
      redis.call('HINCRBY', gkey(app, group), 'delivered', n)
      delivered[group] = nil
    end
  end
  for _, record in ipairs(split(ARGV[7], '\30')) do
    local fields = split(record, '\31')
    local t, key, name, data, legacy, born = fields[1], fields[2], fields[3], fields[4], fields[5], fields[6]
    -- The members taking t, by group, found once per call.
    local route = routes[t]
    if not route then
      route = {}
      for sid, m in pairs(all) do
        if has_type(m, t) then
          local members = route[m.g]
          if not members then
            members = {}
            route[m.g] = members
          end
          members[#members + 1] = sid
        end
      end
      routes[t] = route
    end
    for group, members in pairs(route) do
      local sid = members[1]
      if #members > 1 then sid = owner(all, group, t, key) end
      local m = all[sid]
      if m.v == '0.2' then
        -- No acks, nothing kept: written now, or never.
        if m.n ~= '' then
          publish(m.n, 'pl ' .. app .. ' ' .. sid .. '\n' .. legacy)
          redis.call('HINCRBY', gkey(app, group), 'delivered', 1)
        end
      else
        local f = {t = t, k = key, n = name, d = data, b = born, r = '0'}
        local s = push[sid]
        if s == nil and m.n ~= '' then
          s = pushable(app, sid)
          push[sid] = s
        end
        local size = entry_size(f)
        if s and s.credit > 0 and s.credit_bytes >= size then
          -- Sent as it is queued: kept until acked, as if read at once.
          s.last_id = redis.call('XADD', qkey(app, sid), '*', 't', t, 'k', key, 'n', name, 'd', data, 'b', born,
            'r', '0')
          s.high_seq, s.credit, s.credit_bytes = s.high_seq + 1, s.credit - 1, s.credit_bytes - size
          delivered[group] = (delivered[group] or 0) + 1
          s.lines[#s.lines + 1] = s.high_seq .. ' ' .. born .. ' ' .. name .. ' ' .. data
        else
          -- Once one waits unsent, the ones after it wait behind it.
          if s then s.credit = 0 end
          settle()
          enqueue(app, all, group, sid, f, told)
          bound(app, all, group, max_events, max_bytes)
        end
      end
    end
  end
  settle()
  for sid, s in pairs(push) do
    if s and #s.lines > 0 then
      publish(all[sid].n, 'pe ' .. app .. ' ' .. sid .. '\n' .. table.concat(s.lines, '\n'))
    end
  end
  for sid in pairs(told) do notify(app, sid, all[sid]) end
  return 1
end

-- ARGV: app, session, pipe, most events, most bytes, the last seq the node
-- has. The next events for the pipe (replays first, with their seqs; then a
-- gap report; then new ones), as [seq, name, data, born, redelivered] lists,
-- and 1 when more wait; when none do, the room left is the session's credit.
function ops.pread()
  local app, sid, pipe, most, most_bytes = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
  local seen = tonumber(ARGV[9])
  local all = pipe_members(app)
  local m = all[sid]
  if not m or m.n ~= node or m.p ~= pipe then return {} end
  local sk, q = skey(app, sid), qkey(app, sid)
  local s = fields_of(redis.call('HGETALL', sk))
  local unreported = tonumber(s.unreported or '0')
  if unreported > 0 and s.sent_seq == s.high_seq then
    redis.call('XADD', q, '*', 't', '', 'k', '', 'n', 'gap', 'd', '{"dropped":' .. unreported .. '}', 'b', now_ms(),
      'r', '0', 'c', unreported)
    redis.call('HSET', sk, 'unreported', 0)
  end
  local entries = redis.call('XRANGE', q, '(' .. s.sent_id, '+', 'COUNT', most + 1)
  local out, bytes, new, new_bytes = {}, 0, 0, 0
  local seq, high_seq = tonumber(s.sent_seq), tonumber(s.high_seq)
  local last, high = s.sent_id, s.high_id
  for _, e in ipairs(entries) do
    if #out >= most then break end
    local f = fields_of(e[2])
    local size = entry_size(f)
    if #out > 0 and bytes + size > most_bytes then break end
    seq = seq + 1
    out[#out + 1] = {seq, f.n, f.d, f.b, f.r}
    bytes = bytes + size
    last = e[1]
    if seq > high_seq then
      high_seq, high = seq, e[1]
      if f.n ~= 'gap' then
        new = new + 1
        new_bytes = new_bytes + size
      end
    end
  end
  redis.call('HSET', sk, 'sent_id', last, 'sent_seq', seq, 'high_id', high, 'high_seq', high_seq)
  if #entries <= #out and seq == high_seq then
    -- (What this read returns is counted as the node's: it is on its way.)
    grant(sk, s, most - #out, most_bytes - bytes, seen)
  else
    redis.call('HSET', sk, 'credit', 0)
  end
  local gs = gkey(app, m.g)
  -- (0 - n, not -n: Lua writes minus zero as "-0", which Redis refuses.)
  redis.call('HINCRBY', gs, 'pending', 0 - new)
  redis.call('HINCRBY', gs, 'pending_bytes', 0 - new_bytes)
  redis.call('HINCRBY', gs, 'delivered', #out)
  return {out, #entries > #out and 1 or 0}
end

-- ARGV: app, session, seq: cumulative ack; then the room its pipe has now
-- (events, bytes) and the last seq its node has, the session's credit.
function ops.pack()
  local app, sid = ARGV[4], ARGV[5]
  local done, s = acknowledge(app, sid, tonumber(ARGV[6]))
  if s.sent_seq then grant(skey(app, sid), s, tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])) end
  return done
end

-- ARGV: app, buffer events, buffer bytes, buffer ttl (ms): sessions whose
-- grace is over end, buffered events too old are dropped.
function ops.pexpire()
  expire(ARGV[4], {tonumber(ARGV[5]), tonumber(ARGV[6])}, tonumber(ARGV[7]))
  return 1
end

-- What Redis counts as sent to session sid goes back to seq last, the last
-- one its node wrote: a read answered while the node's link went down never
-- reached the pipe, so those entries go out again (with the same seqs).
local function rewind(app, sid, last)
  local sk = skey(app, sid)
  local s = fields_of(redis.call('HGETALL', sk))
  if not s.sent_seq or tonumber(s.sent_seq) <= last then return 0 end
  local acked = tonumber(s.acked_seq)
  local id, seq = s.acked_id, acked
  if last > acked then
    local entries = redis.call('XRANGE', qkey(app, sid), '(' .. s.acked_id, '+', 'COUNT', last - acked)
    if #entries > 0 then id, seq = entries[#entries][1], acked + #entries end
  end
  redis.call('HSET', sk, 'sent_id', id, 'sent_seq', seq)
  return 1
end

-- ARGV: app, session, pipe, version, group, types, last seq written. A
-- session of this node that Redis lost (it restarted empty) is put back,
-- with nothing in flight, its seqs going on after the last one written; one
-- Redis still has is rewound to that seq (see rewind). 1 when put back.
function ops.prestore()
  local app, sid, pipe, version, group, types, last = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local known = redis.call('HGET', akey(app, 'pg'), sid)
  if known then
    local m = cjson.decode(known)
    if m.n == node and m.p == pipe and m.v ~= '0.2' then
      -- No pushes until the node reads again: it dropped what it held.
      redis.call('HSET', skey(app, sid), 'credit', 0)
      rewind(app, sid, tonumber(last))
    end
    return 0
  end
  local m = {g = group, v = version, t = types, n = node, p = pipe}
  redis.call('HSET', akey(app, 'pg'), sid, cjson.encode(m))
  if version ~= '0.2' then
    redis.call('HSET', skey(app, sid), 'group', group, 'acked_id', '0-0', 'acked_seq', last, 'sent_id', '0-0',
      'sent_seq', last, 'high_id', '0-0', 'high_seq', last, 'unreported', 0, 'credit', 0)
  end
  redis.call('SADD', akey(app, 'pgroups'), group)
  announce(app, sid, m)
  return 1
end

-- ARGV: app. Every member, for a node's copy: [session, JSON, ...].
function ops.pmembers()
  return redis.call('HGETALL', akey(ARGV[4], 'pg'))
end

-- ARGV: app. Every group's counters: [group, [name, value, ...], ...].
function ops.pstats()
  local app = ARGV[4]
  local found = {}
  for _, group in ipairs(redis.call('SMEMBERS', akey(app, 'pgroups'))) do
    found[#found + 1] = group
    found[#found + 1] = redis.call('HGETALL', gkey(app, group))
  end
  return found
end

-- ARGV: for each call, how many arguments it has (counting its operation),
-- then its operation and arguments (as ARGV[4] on). Several calls whose
-- results nobody reads, run in one go; returns how many ran.
function ops.multi()
  local calls, i, done = ARGV, 4, 0
  held = {}
  while i <= #calls do
    local n = tonumber(calls[i])
    local args = {calls[i + 1], P, node}
    for j = i + 2, i + n do args[#args + 1] = calls[j] end
    local run = ops[args[1]]
    if not run or args[1] == 'multi' then
      flush_held()
      held = nil
      return redis.error_reply('unknown operation ' .. tostring(args[1]))
    end
    ARGV, transitions = args, {}
    run()
    done = done + 1
    i = i + 1 + n
  end
  flush_held()
  held = nil
  return done
end

local run = ops[op]
if not run then return redis.error_reply('unknown operation ' .. tostring(op)) end
return run()
"""

#: What ``EVALSHA`` names it by (``SCRIPT LOAD`` returns the same).
SCRIPT_SHA1 = hashlib.sha1(SCRIPT.encode()).hexdigest()
