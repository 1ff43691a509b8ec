-- checkin.lua - wrk script: POST /device/v1/checkin as a random registered
-- device (its credential from the file $CREDS, line i for dev-%07d i-1).
-- CHECKIN=steady (default): the device's own hardware and tags, as
-- bench/devapi_bench.c checked it in (what a fleet's polls look like: the
-- device changes nothing); CHECKIN=change: hardware and region drawn per
-- request, so most check-ins change their device and wait for its commit.
-- CHECKIN=once (run it with one thread, -t1): every device checks in once,
-- in order, and wrk exits once as many answers as devices came back (a
-- fleet's first check-ins, before a steady run: bench/fleet_scale.sh).
local creds = {}
for line in io.lines(os.getenv("CREDS")) do creds[#creds + 1] = line end
local change = os.getenv("CHECKIN") == "change"
local once = os.getenv("CHECKIN") == "once"
local sent, answered = 0, 0
local hw = { "mps2-an385", "nrf52840dk", "stm32f746-disco" }
local regions = { "eu", "us", "apac" }
local tiers = { "standard", "premium" }
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

function init(args)
   math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
   local i = math.random(0, #creds - 1)
   if once then
      i = sent % #creds
      sent = sent + 1
   end
   local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. creds[i + 1] }
   local h, r, t
   if change then
      h, r, t = hw[math.random(#hw)], regions[math.random(#regions)], tiers[math.random(#tiers)]
   else -- as devapi_bench.c checked dev-i in
      h = i % 2 == 1 and "mps2-an385" or "nrf52840dk"
      r = i % 3 ~= 0 and "eu" or "us"
      t = "standard"
   end
   local body = string.format(
      '{"device":"dev-%07d","product":"sensor-node","hardware":"%s","bootloader":"1.2.0",' ..
      '"version":"1.4.0","security_counter":3,"slot":"confirmed","tags":{"region":"%s","tier":"%s"}}',
      i, h, r, t)
   return wrk.format("POST", "/device/v1/checkin", headers, body)
end

if once then -- defined only then: wrk parses every answer for a response()
   function response(status, headers, body)
      if status ~= 200 then
         io.stderr:write("checkin.lua: a first check-in answered " .. status .. "\n")
         os.exit(1)
      end
      answered = answered + 1
      if answered >= #creds then os.exit(0) end
   end
end
