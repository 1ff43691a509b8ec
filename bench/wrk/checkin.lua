-- checkin.lua - wrk script: POST /device/v1/checkin as a random registered
-- device (its credential from the file $CREDS, line i for dev-%07d i-1),
-- hardware variant and region per request (bench/devapi_bench.c runs it).
local creds = {}
for line in io.lines(os.getenv("CREDS")) do creds[#creds + 1] = line end
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
   local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. creds[i + 1] }
   local body = string.format(
      '{"device":"dev-%07d","product":"sensor-node","hardware":"%s","bootloader":"1.2.0",' ..
      '"version":"1.4.0","security_counter":3,"slot":"confirmed","tags":{"region":"%s","tier":"%s"}}',
      i, hw[math.random(#hw)], regions[math.random(#regions)], tiers[math.random(#tiers)])
   return wrk.format("POST", "/device/v1/checkin", headers, body)
end
