-- Read a room's position and a range of its history in one atomic step.
-- KEYS: epoch, seq, hist
-- ARGV: after (the range starts after this seq; '' for the room's newest), upto (the range
--       ends at this seq; '' for the end), newest (how many when `after` is ''),
--       history_length
-- Returns {epoch or false, seq, envelope, envelope, ...}, oldest first: only the room's last
-- history_length seqs, which is what the room keeps. send_batch.lua trims the stream
-- approximately (whole stream nodes): it may still hold a few older entries, never shown.
local result = {redis.call('GET', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
local oldest = result[2] - tonumber(ARGV[4]) + 1  -- the oldest seq within the window
local upto = ARGV[2] == '' and '+' or (ARGV[2] .. '-0')
local entries
if ARGV[1] == '' then
  local from = oldest > 1 and (oldest .. '-0') or '-'
  entries = redis.call('XREVRANGE', KEYS[3], upto, from, 'COUNT', tonumber(ARGV[3]))
  for i = #entries, 1, -1 do result[#result + 1] = entries[i][2][2] end
else
  entries = redis.call('XRANGE', KEYS[3], math.max(tonumber(ARGV[1]) + 1, oldest) .. '-0', upto)
  for i = 1, #entries do result[#result + 1] = entries[i][2][2] end
end
return result
