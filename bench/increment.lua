-- wrk script: POST increment {"by":1} to one of 10,000 counter entities, chosen at random.
math.randomseed(os.time())
local headers = { ["Content-Type"] = "application/json" }
request = function()
  return wrk.format("POST", "/v1/counter/e" .. math.random(1, 10000) .. "/increment", headers, '{"by":1}')
end
