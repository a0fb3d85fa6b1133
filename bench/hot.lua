-- wrk script: POST increment {"by":1} to one entity, `hot`, of STATEFN_BENCH_FUNCTION (counter) from every
-- connection (bench/run's P2).
local headers = { ["Content-Type"] = "application/json" }
local path = "/v1/" .. (os.getenv("STATEFN_BENCH_FUNCTION") or "counter") .. "/hot/increment"
request = function()
  return wrk.format("POST", path, headers, '{"by":1}')
end
