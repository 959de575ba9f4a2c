-- Read a room's position and a range of its history in one atomic step.
-- KEYS: epoch, seq, hist
-- ARGV: after (the range starts after this seq; '' for the room's newest), upto (the range
--       ends at this seq; '' for the end), newest (how many when `after` is '')
-- Returns {epoch or false, seq, envelope, envelope, ...}, oldest first.
local result = {redis.call('GET', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
local upto = ARGV[2] == '' and '+' or (ARGV[2] .. '-0')
local entries
if ARGV[1] == '' then
  entries = redis.call('XREVRANGE', KEYS[3], upto, '-', 'COUNT', tonumber(ARGV[3]))
  for i = #entries, 1, -1 do result[#result + 1] = entries[i][2][2] end
else
  entries = redis.call('XRANGE', KEYS[3], (tonumber(ARGV[1]) + 1) .. '-0', upto)
  for i = 1, #entries do result[#result + 1] = entries[i][2][2] end
end
return result
