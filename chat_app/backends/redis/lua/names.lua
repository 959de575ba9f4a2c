-- A page of a room's member names in name order, after pruning expired entries.
-- ARGV after the common ones: 10 cursor (the last name of the previous page, '' for the
-- first page), 11 page size.
-- Returns {members_count, epoch or false, seq, name, name, ...}: O(page), never O(members),
-- so the open room route may use it.
begin(KEYS, ARGV)
prune()
local from = ARGV[10] == '' and '-' or ('(' .. ARGV[10])
local result = {redis.call('HLEN', KEYS[7]), redis.call('GET', KEYS[3]), tonumber(redis.call('GET', KEYS[4]) or '0')}
for _, name in ipairs(redis.call('ZRANGEBYLEX', KEYS[10], from, '+', 'LIMIT', 0, tonumber(ARGV[11]))) do
  result[#result + 1] = name
end
return result
