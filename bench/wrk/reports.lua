-- reports.lua - wrk script: POST /device/v1/reports with batches of 100
-- reports about random devices among dev-0000000..dev-0099999 (which
-- bench/devapi_bench.c registers and checks in first), about the version
-- they run, each with its device's credential (file $CREDS).
local creds = {}
for line in io.lines(os.getenv("CREDS")) do creds[#creds + 1] = line end
local events = { "heartbeat", "heartbeat", "heartbeat", "download", "install", "boot_ok", "boot_fail", "revert" }
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

function init(args)
   math.randomseed(os.time() * 1000 + (tid or 0))
end

local headers = { ["Content-Type"] = "application/json" }

function request()
   local parts = {}
   for i = 1, 100 do
      local d = math.random(0, #creds - 1)
      parts[i] = string.format(
         '{"device":"dev-%07d","credential":"%s","version":"1.4.0","event":"%s","uptime_s":%d,"crashes":%d,"battery_mah":%.2f,"rssi":-70}',
         d, creds[d + 1], events[math.random(#events)], math.random(0, 3600),
         math.random(0, 50) == 0 and 1 or 0, math.random() * 5)
   end
   return wrk.format("POST", "/device/v1/reports", headers, '{"reports":[' .. table.concat(parts, ",") .. ']}')
end
