-- One message (send_one.lua): KEYS and ARGV as send_one's.
return send_one(KEYS, ARGV)
