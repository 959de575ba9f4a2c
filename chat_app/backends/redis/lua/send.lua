-- One message (send_one.lua's send_batch): KEYS and ARGV as one message's there.
return send_batch(KEYS, ARGV, 1)[1]
