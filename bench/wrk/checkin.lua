-- checkin.lua - wrk script: POST /device/v1/checkin with a random device id,
-- hardware variant and region per request (bench/devapi_bench.c runs it).
-- The fleet key comes from the FLEET_KEY environment variable.
local key = os.getenv("FLEET_KEY") or "bench-key"
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

local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }

function request()
   local body = string.format(
      '{"device":"dev-%07d","product":"sensor-node","hardware":"%s","bootloader":"1.2.0",' ..
      '"version":"1.4.0","security_counter":3,"slot":"confirmed","tags":{"region":"%s","tier":"%s"}}',
      math.random(0, 999999), hw[math.random(#hw)], regions[math.random(#regions)], tiers[math.random(#tiers)])
   return wrk.format("POST", "/device/v1/checkin", headers, body)
end
