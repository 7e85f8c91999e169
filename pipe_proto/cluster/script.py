"""The Lua script that changes the cluster's shared state in Redis.

One script, loaded once per Redis server and called with ``EVALSHA`` and an
operation name, so that every change a node makes is atomic: counts,
presence members, signed-in users, the nodes interested in a channel or a
user, the delayed departures of webhooks, and each node's own share of all
of it (taken out again when the node dies). It is data here: the core
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
-- "m|app|channel|user", "u|app|user", "w|app|user", "c|app"), so that a dead
-- node's share can be taken out again. Answers a node must see in order with
-- the events other nodes cause go to its inbox (P:n:{id}) as "r TOKEN\nJSON",
-- after those events.
if redis.replicate_commands then redis.replicate_commands() end

local op, P, node = ARGV[1], ARGV[2], ARGV[3]
local transitions = {}

local function akey(app, name) return P .. ':a:' .. app .. ':' .. name end
local function nkey(n) return P .. ':node:' .. n end
local function inbox(n) return P .. ':n:' .. n end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Publish msg to the inbox of every node in set, except skip.
local function send(set, msg, skip)
  local sent = 0
  for _, n in ipairs(redis.call('SMEMBERS', set)) do
    if n ~= skip then
      redis.call('PUBLISH', inbox(n), msg)
      sent = sent + 1
    end
  end
  return sent
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
  end
end

local function reply(token, json)
  redis.call('PUBLISH', inbox(node), 'r ' .. token .. '\n' .. json)
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

if op == 'join' then
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
elseif op == 'leave' then
  local app, ch, counted, user = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  if user then member(node, app, ch, user, -1) end
  local total = subscriptions(node, app, ch, -1, counted)
  return '{"count":' .. math.max(total, 0) .. ',"transitions":' .. transitions_json() .. '}'
elseif op == 'members' then
  return redis.call('HVALS', akey(ARGV[4], 'pi:' .. ARGV[5]))
elseif op == 'signin' then
  local app, uid, token = ARGV[4], ARGV[5], ARGV[6]
  user_in(node, app, uid, 1)
  local online = {}
  for i = 7, #ARGV do
    watch(node, app, ARGV[i], 1)
    if redis.call('HEXISTS', akey(app, 'users'), ARGV[i]) == 1 then online[#online + 1] = ARGV[i] end
  end
  reply(token, cjson.encode({online = online}))
  return 1
elseif op == 'signout' then
  local app, uid = ARGV[4], ARGV[5]
  for i = 6, #ARGV do watch(node, app, ARGV[i], -1) end
  user_in(node, app, uid, -1)
  return 1
elseif op == 'conn' then
  local app, delta, limit, token = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  if delta > 0 and limit > 0 and tonumber(redis.call('GET', akey(app, 'conns')) or '0') >= limit then
    reply(token, '{"refused":true}')
    return 0
  end
  connections(node, app, delta)
  if token then reply(token, '{"refused":false}') end
  return 1
elseif op == 'pub' then
  local app, ch, exclude, frame, ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  if ttl > 0 then
    redis.call('SET', akey(app, 'cache:' .. ch), ARGV[9], 'PX', ttl)
    redis.call('HDEL', akey(app, 'miss'), ch)
  end
  return send(akey(app, 'cn:' .. ch), 'e ' .. app .. ' ' .. ch .. ' ' .. exclude .. '\n' .. frame, node)
elseif op == 'touser' then
  local app, uid = ARGV[4], ARGV[5]
  return send(akey(app, 'un:' .. uid), 'u ' .. app .. ' ' .. uid .. '\n' .. ARGV[6], node)
elseif op == 'term' then
  local app, uid = ARGV[4], ARGV[5]
  return send(akey(app, 'un:' .. uid), 't ' .. app .. ' ' .. uid, node)
elseif op == 'beat' then
  local now = now_ms()
  redis.call('ZADD', P .. ':nodes', now, node)
  redis.call('HSET', P .. ':info', node, ARGV[4])
  return now
elseif op == 'confirm' then
  local app, field, token = ARGV[4], ARGV[5], ARGV[6]
  if redis.call('HGET', akey(app, 'delay'), field) == token then
    redis.call('HDEL', akey(app, 'delay'), field)
    return 1
  end
  return 0
elseif op == 'reap' then
  local bound, counted, apps = tonumber(ARGV[4]), set_of(ARGV[5]), set_of(ARGV[6])
  local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now_ms() - bound)
  for _, d in ipairs(dead) do
    if d ~= node then
      redis.call('ZREM', P .. ':nodes', d)
      redis.call('HDEL', P .. ':info', d)
      -- Its share, and what an interrupted resync left aside.
      for _, key in ipairs({nkey(d), nkey(d) .. ':old'}) do
        local share = redis.call('HGETALL', key)
        redis.call('DEL', key)
        for i = 1, #share, 2 do
          change(d, share[i], -tonumber(share[i + 1]), nil, nil, nil, counted)
        end
      end
      -- The dead node's delayed webhooks are due now, from this node.
      for app in pairs(apps) do
        local delays = redis.call('HGETALL', akey(app, 'delay'))
        for i = 1, #delays, 2 do
          if string.sub(delays[i + 1], 1, #d + 1) == d .. '|' then
            redis.call('HDEL', akey(app, 'delay'), delays[i])
            transitions[#transitions + 1] = {'due', app, delays[i]}
          end
        end
      end
      transitions[#transitions + 1] = {'reaped', d}
    end
  end
  return transitions_json()
elseif op == 'rs_begin' then
  local mine, old = nkey(node), nkey(node) .. ':old'
  if redis.call('EXISTS', old) == 1 then
    local share = redis.call('HGETALL', mine)
    for i = 1, #share, 2 do redis.call('HINCRBY', old, share[i], share[i + 1]) end
    redis.call('DEL', mine)
  elseif redis.call('EXISTS', mine) == 1 then
    redis.call('RENAME', mine, old)
  end
  redis.call('ZADD', P .. ':nodes', now_ms(), node)
  return 1
elseif op == 'rs_add' then
  -- ARGV[4]: apps with subscription counts; then groups of five:
  -- field, count, info, removed frame, added frame.
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
elseif op == 'rs_end' then
  local old, counted = nkey(node) .. ':old', set_of(ARGV[4])
  local share = redis.call('HGETALL', old)
  redis.call('DEL', old)
  for i = 1, #share, 2 do
    local before = tonumber(share[i + 1])
    redis.call('HINCRBY', nkey(node), share[i], before)
    change(node, share[i], -before, nil, nil, nil, counted)
  end
  return transitions_json()
elseif op == 'channels' then
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
elseif op == 'channel' then
  local app, ch = ARGV[4], ARGV[5]
  local key = akey(app, 'cache:' .. ch)
  return {
    redis.call('HGET', akey(app, 'ch'), ch) or '0',
    redis.call('HLEN', akey(app, 'pm:' .. ch)),
    redis.call('GET', key) or '',
    redis.call('PTTL', key),
  }
elseif op == 'users' then
  return redis.call('HKEYS', akey(ARGV[4], 'pm:' .. ARGV[5]))
elseif op == 'nodes' then
  return {redis.call('ZRANGE', P .. ':nodes', 0, -1, 'WITHSCORES'), redis.call('HGETALL', P .. ':info')}
end
return redis.error_reply('unknown operation ' .. tostring(op))
"""

#: What ``EVALSHA`` names it by (``SCRIPT LOAD`` returns the same).
SCRIPT_SHA1 = hashlib.sha1(SCRIPT.encode()).hexdigest()
