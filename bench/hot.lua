-- wrk script: POST increment {"by":1} to one counter entity, `hot`, from every connection (bench/run's P2).
local headers = { ["Content-Type"] = "application/json" }
request = function()
  return wrk.format("POST", "/v1/counter/hot/increment", headers, '{"by":1}')
end
